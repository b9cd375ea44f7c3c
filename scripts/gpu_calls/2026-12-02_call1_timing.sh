#!/usr/bin/env bash
# GPU call 1 of 2 (timing; the machine is otherwise idle): model part 1 goes to /tmp/m for call 2,
# then the kernel checks + bench layer (variants), then bench e2e (1 GPU). Prints a short table last.
set -uo pipefail
T0=$(date +%s)
mkdir -p /tmp/m && cp .mA/part.00 /tmp/m/ &
export PYTHONPATH=src TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
CASES=delta-scale0.5,delta-scale0.5-abg,delta-auto,delta-auto-ema,delta-auto-global,delta-extra0.25
CASES=$CASES,delta-extra0.25-linear-auto,chunk-auto,chunk-scale0.5-abg,chunk-gqa-strided,chunk-repeat,delta-stream-big,unit
timeout 170 python3 -m delta_attn.bench.check --workers 12 --out "$OUT/check" --cases "$CASES" \
  --bench --lengths 128K,1M --methods cudnn,sparse,delta,recompute,delta_l0.5,delta_auto,delta_x25 \
  --dense-once-above 256K --budget 0.6 --reps 5 > "$OUT/check.log" 2>&1
echo "check+layer rc=$? after $(( $(date +%s) - T0 )) s"; tail -25 "$OUT/check.log"
LEFT=$(( 320 - ($(date +%s) - T0) ))
OUT="$OUT" LIMIT=$(( LEFT < 150 ? LEFT : 150 )) LENGTHS=32K,128K scripts/gpu_e2e.sh > "$OUT/e2e.log" 2>&1
echo "e2e rc=$? after $(( $(date +%s) - T0 )) s"; tail -30 "$OUT/e2e.log"
wait; ls -la /tmp/m
