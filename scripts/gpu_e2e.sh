#!/usr/bin/env bash
# End-to-end prefill on one GPU (issue 9): `delta-attn bench e2e` on a random-weight Llama-3-8B-shape
# model (bf16, nothing downloaded), in one device call.
#
#   scripts/gpu_e2e.sh          warm-up at 4K (every method; compile times recorded), then dense / sparse /
#                               delta / recompute one-shot at 32K, 64K, 128K and 256K (256K cells are skipped
#                               when the forecast overruns LIMIT), and delta chunked (16384) vs one-shot at
#                               128K, chunked both into the in-place PreallocatedCache (the default) and into
#                               transformers' DynamicCache (concatenation per chunk; contiguous K/V) for
#                               comparison. Compilation is paid in the warm-up, whose per-cell times are printed
#   DRY=1 scripts/gpu_e2e.sh    CPU dry run: the same code path on the tiny shape (256 / 512 tokens, chunk 64)
#   PARALLEL=cp NPROC=2 scripts/gpu_e2e.sh   context parallel over NPROC GPUs of one host (torchrun, NCCL):
#                               every method one-shot through cp_prefill at CP_LENGTHS (default 128K,256K,512K;
#                               each rank holds the whole gathered KV cache, 128 KB a token for Llama-3-8B, so
#                               1M needs > 141 GB per GPU). An OOM on one rank stalls the others until the NCCL
#                               timeout: keep CP_LENGTHS to what fits. With DRY=1: gloo on CPU, tiny shape
#   PARALLEL=tp NPROC=2 scripts/gpu_e2e.sh   tensor parallel (tp_plan="auto", heads over NPROC GPUs): every
#                               method one-shot at TP_LENGTHS (default 128K,256K,512K) + delta chunked at CHUNK_AT;
#                               rank 0 saves the random model to TP_DIR (default /tmp/delta-attn-e2e-tp, 16 GB)
#
# Runs from the repository root with the package NOT installed (PYTHONPATH=src). Environment:
#   OUT      where results go (default ./out): $OUT/e2e/{results.json,results.md,plot.png}, $OUT/gpu_e2e.log
#   LIMIT    seconds for the whole script (default 300); cells that would overrun it are skipped and marked
#   SHAPE    model shape (default llama-3-8b; llama-3.2-1b, llama-3.2-3b, qwen2.5-7b)
#   LAYERS   keep only the first L layers (default all; stated in the output)
#   LENGTHS  prompt lengths (default 32K,64K,128K,256K); CHUNK (default 16384) and CHUNK_AT (default 128K)
#   CHUNK_CACHE  caches of the chunked cells (default preallocated,dynamic)
#   REPS     timed runs per cell (default 1; with REPS=2 give LIMIT=540: the fastest is reported, all are in
#            results.json)
set -euo pipefail
T0=$(date +%s)
OUT=${OUT:-./out}
LIMIT=${LIMIT:-300}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_e2e.log") 2>&1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}

if [ "${DRY:-0}" = 1 ]; then
  ARGS=(--device cpu --model-shape tiny --window 32 --sink 4 --gamma 16 --warmup-length 64)
  LENGTHS=${LENGTHS:-256,512}; CHUNK=${CHUNK:-64}; CHUNK_AT=${CHUNK_AT:-512}
else
  if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device here: run DRY=1 $0 for the CPU dry run"; exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  ARGS=(--device cuda --model-shape "${SHAPE:-llama-3-8b}" --warmup-length 4096)
  LENGTHS=${LENGTHS:-32K,64K,128K,256K}; CHUNK=${CHUNK:-16384}; CHUNK_AT=${CHUNK_AT:-128K}
fi
[ -n "${LAYERS:-}" ] && ARGS+=(--layers "$LAYERS")
if [ "${PARALLEL:-none}" != none ]; then
  NPROC=${NPROC:-2}
  BUDGET=$(( LIMIT - ($(date +%s) - T0) - 40 ))
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
  RUN=($PY -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m delta_attn.bench.e2e "${ARGS[@]}"
       --reps "${REPS:-1}" --time-limit "$BUDGET")
  if [ "$PARALLEL" = cp ]; then
    [ "${DRY:-0}" = 1 ] || LENGTHS=${CP_LENGTHS:-128K,256K,512K}
    "${RUN[@]}" --parallel cp --lengths "$LENGTHS" --chunk-size 0 --out "$OUT/e2e_cp"
  else
    [ "${DRY:-0}" = 1 ] || LENGTHS=${TP_LENGTHS:-128K,256K,512K}
    "${RUN[@]}" --parallel tp --lengths "$LENGTHS" --chunk-size "0,$CHUNK" --chunk-methods delta \
      --chunk-lengths "$CHUNK_AT" --tp-dir "${TP_DIR:-/tmp/delta-attn-e2e-tp}" --out "$OUT/e2e_tp"
  fi
  exit 0
fi
# the bench's own clock starts after python and torch import: leave them (and the report writing) 25 s
BUDGET=$(( LIMIT - ($(date +%s) - T0) - 25 ))
if [ "$BUDGET" -lt 30 ]; then echo "LIMIT=$LIMIT leaves no time for the benchmark"; exit 2; fi

$PY -m delta_attn.cli bench e2e "${ARGS[@]}" \
  --lengths "$LENGTHS" --methods dense,sparse,delta,recompute \
  --chunk-size "0,$CHUNK" --chunk-methods delta --chunk-lengths "$CHUNK_AT" \
  --chunk-cache "${CHUNK_CACHE:-preallocated,dynamic}" \
  --reps "${REPS:-1}" --time-limit "$BUDGET" --out "$OUT/e2e"

echo
echo "== summary ($(( $(date +%s) - T0 )) s in all; details in $OUT/e2e/results.md)"
$PY - "$OUT/e2e/results.json" <<'PY'
import json, sys
from delta_attn.bench.e2e import summary
res = json.load(open(sys.argv[1]))
w = res["meta"]["warmup"]
print(f"warm-up at {w['length']} tokens (first calls, compilation included): "
      + ", ".join(f"{k} {v:.1f} s" for k, v in w.get("cells_s", {}).items()))
print(summary(res))
PY
