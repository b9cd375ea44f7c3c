#!/usr/bin/env bash
# Context-parallel Δ prefill on the GPUs of one host: NCCL equivalences + one-layer timing (one device call).
#
#   scripts/gpu_cp.sh            all visible GPUs (1 on a single H200: world size 1, see below)
#   NPROC=2 scripts/gpu_cp.sh    two GPUs (the nvidia-h200-x2 machine)
#   DRY=1 NPROC=2 scripts/gpu_cp.sh   CPU + gloo, tiny sizes: the same code path without a GPU (~10 s)
#
# Equivalences: cp_delta_attention on each rank's shard vs delta_attention on the whole sequence
# (streaming/block/dense × repeat/ema/abg × γ 1/16/64, bf16 and fp32, 12,345 tokens). Timing: one
# Llama-3-8B attention layer (32/8 heads, d 128, bf16, W 2048, sink 128, γ 64) at LENGTHS (default
# 131072..1048576), CP (slowest rank, K/V all-gather included) vs single-GPU delta_attention on rank 0.
# With world size 1 the CP column is the single call plus the CP bookkeeping: no speed-up is possible.
# Writes $OUT/cp_check.json (OUT default ./out); exit status 1 when an equivalence fails.
# Runs from the repository root with the package not installed (PYTHONPATH=src).
set -euo pipefail
OUT=${OUT:-./out}
if [[ -n "${DRY:-}" ]]; then
  NPROC=${NPROC:-2}
  EXTRA=(--dry-run)
else
  NPROC=${NPROC:-$(nvidia-smi -L | wc -l)}
  EXTRA=()
fi
[[ -n "${LENGTHS:-}" ]] && EXTRA+=(--lengths "$LENGTHS")
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec python -m torch.distributed.run --standalone --nproc-per-node "$NPROC" \
  -m delta_attn.distributed.check --out "$OUT" "${EXTRA[@]}"
