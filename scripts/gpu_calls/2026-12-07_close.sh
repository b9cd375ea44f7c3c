#!/usr/bin/env bash
# Issues 15 and 16, 2026-12-07 (seventh session): the last call of the session, on one GPU (~4 min); parts in the
# order k, e, s (the checks of the new λ kernels first; the SmolLM2 run takes the time that is left).
#   (s) SmolLM2-135M at 8K, its tight window (sink 64 + window 256, γ 64): γ 16 (METHODS_S) beside the six methods
#       that earlier calls ran (13 tasks × 25, one process a method) — is γ 16, the best causal variant on
#       Qwen at 16K and 32K, also ≥ recompute on SmolLM2? Needs the two SmolLM2 parts in /tmp/s first
#       (`cp .s00/* /tmp/s/` and `.s01`, one warm call each) and carries .whl, .data and .results.
#   (k) λ = auto's fused arithmetic: the float64-oracle checks of every λ = auto case, then the 128K profile of
#       Δ / λ = auto / sparse-only (scripts/gpu_calls/2026-12-06_issue16b.sh, part k), alone on the GPU.
#   (e) `bench e2e --model-shape llama-3.2-1b` at 32K and 128K, dense and Δ: dense on the fastest SDPA backend at
#       each length (the per-length pick, first run on a GPU).
# PARTS_S=0, PARTS_K=0 or PARTS_E=0 leaves a part out (two calls when the λ kernel is not ready before the SmolLM2 run).
# Records come back as $OUT/close.tgz (the run tool returns a limited number of files); a table prints last.
set -uo pipefail
T0=$(date +%s)
L=${L:-400}
export TOKENIZERS_PARALLELISM=false DELTA_ATTN_CACHE_DIR=/tmp/dcache
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=src:/tmp/site
R=/tmp/close; mkdir -p $R "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $R/gpu.txt
if [ "${PARTS_K:-1}" = 1 ]; then
  OUT=$R K_PARTS=k bash scripts/gpu_calls/2026-12-06_issue16b.sh > $R/k.log 2>&1
  grep -E "checks:|PASS|FAIL|==|ms  x|− delta" $R/k.log | grep -v "^$" | tail -45
fi
if [ "${PARTS_E:-1}" = 1 ]; then  # (e) dense on the fastest SDPA backend at each length, on the GPU
  timeout 90 python3 -m delta_attn.cli bench e2e --model-shape llama-3.2-1b --lengths 32K,128K --methods dense,delta \
    --out $R/e2e1b > $R/e2e1b.log 2>&1
  grep -E "TTFT|backend" $R/e2e1b.log | cut -c1-240 | tail -8
fi
if [ "${PARTS_S:-1}" = 1 ]; then
  [ -f /tmp/s/smollm2.gguf ] || cat /tmp/s/spart.00 /tmp/s/spart.01 > /tmp/s/smollm2.gguf
  sha256sum /tmp/s/smollm2.gguf | tee $R/smollm2.sha256
  for m in ${METHODS_S:-delta_g16}; do
    mkdir -p $R/S8/$m
    python3 -m delta_attn.cli eval ruler --model /tmp/s/smollm2.gguf --texts-dir .data/texts --base streaming \
      --window 256 --sink 64 --gamma 64 --no-summary --tasks all --lengths 8192 --samples 25 --workers 2 \
      --no-progress --batch-size 8192:32 --methods $m --out $R/S8/$m --resume-from .results \
      --time-limit $(( L - 20 - ($(date +%s) - T0) )) > $R/S8/$m/run.log 2>&1 &
  done
  wait
  tail -n 1 $R/S8/*/run.log
fi
echo "(s) done after $(( $(date +%s) - T0 )) s"
tar czf "$OUT/close.tgz" -C /tmp close
python3 scripts/gpu_calls/score_table.py $R .results 2>/dev/null | grep -i smol
echo "== close done after $(( $(date +%s) - T0 )) s"
