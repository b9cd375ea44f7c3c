#!/usr/bin/env bash
# Issue 16, second session of 2026-12-06: one device call of about 5–6 minutes on the machine that already holds
# the Qwen GGUF at /tmp/m/model.gguf (and its de-quantised copy in /tmp/dcache from the eval call).
#   (k)    the λ = auto float64-oracle checks again (delta-auto-topk failed on the H100 before its CPU fix; 170 s:
#          the fused λ kernels compile several variants, and 110 s cut the checks on 2026-12-07) and a
#          kernel-by-kernel profile of Δ, λ = auto, auto-decay and sparse-only at 128K (where λ = auto's time goes)
#   (e8b)  end to end, Llama-3-8B shape (random weights), 128K: dense vs Δ one-shot and Δ chunked (target ≥ 2.9×),
#          then one profiled prefill per method at 128K (E8B_PROFILE; empty: none): where the 2.71× (2026-12-06)
#          loses to the attention-free ceiling, by kernel category
#   (eq)   end to end, the real Qwen2.5-Coder-1.5B weights: dense vs Δ at 32K/128K, Δ chunked at 128K, Δ chunked
#          at 1M (positions past the model's 32K context: timing only)
#   (e512) llama-3.2-1b shape, 512K: Δ one-shot vs chunked into the in-place cache (target ≤ 1.1×)
set -uo pipefail
export PY=${PY:-python3} DELTA_ATTN_CACHE_DIR=${DELTA_ATTN_CACHE_DIR:-/tmp/dcache}
O=${OUT:-./out}
K=${K_PARTS:-k e8b eq e512}
has() { [[ " $K " == *" $1 "* ]]; }
has k && OUT=$O/k PARTS="checks profile" LIMIT=170 \
  CHECKS="delta-auto-topk,delta-auto,delta-auto-block,chunk-auto,chunk-auto-decay-gqa,delta-auto-global,delta-auto-b2-gqa,delta-auto-d80-g8,delta-stream-g4,chunk-gqa-strided,unit" \
  bash scripts/gpu_kernels.sh
has e8b && OUT=$O/e8b PARTS=e2e SHAPE=llama-3-8b L1=128K L2= PROFILE_AT=${E8B_PROFILE-128K} LIMIT=170 \
  bash scripts/gpu_kernels.sh
if has eq && [ -f /tmp/m/model.gguf ]; then
  OUT=$O/eq PARTS=e2e MODEL=/tmp/m/model.gguf L1=32K,128K CH_AT=128K L2=1M LIMIT=170 bash scripts/gpu_kernels.sh
fi
has e512 && OUT=$O/e512 PARTS=e2e SHAPE=llama-3.2-1b L1= L2=512K L2_CHUNKS=0,16384 LIMIT=70 bash scripts/gpu_kernels.sh
echo "== issue16b done"
