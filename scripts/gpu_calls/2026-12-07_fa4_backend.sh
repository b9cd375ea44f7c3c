#!/usr/bin/env bash
# Issue 16, ninth session (2026-12-07), second call: backend="fa4" (kernels/fa4_prefill.py) after the probe.
# Needs the wheels: a first call `mkdir -p /tmp/w && cp .fa00/* /tmp/w/` (carry .fa00), then this (carry .fa01).
#   (tests) the GPU tests of the FA4 path: tile lists, both passes and fa4_prefill against float64 (pytest)
#   (layer) one Llama-3-8B layer at 128K and 1M: cuDNN, Δ on Triton, Δ and λ = auto on FA4, the rows alone
#   (e8b)   `bench e2e --model-shape llama-3-8b` at 128K, dense and Δ on FA4 (target 2.9×)
#   (profile) device time per kernel and host time per call of both backends at 128K (scripts/gpu_calls/fa4_profile.py)
#   (again) the 128K layer twice more (cuDNN, Δ on Triton, Δ on FA4): how much two runs differ
# PARTS (default "tests layer e8b"). Records: $OUT/fa4_backend.tgz; a table prints last.
set -uo pipefail
T0=$(date +%s)
source scripts/gpu_calls/fa4_wheels.sh  # the FA4 wheels into /tmp/site, PYTHONPATH
R=/tmp/fa4_backend; mkdir -p $R
PARTS=" ${PARTS:-tests layer e8b} "
want() { [[ "$PARTS" == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.total --format=csv,noheader | tee $R/gpu.txt
if want tests; then
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_fa4_tiles.py > $R/tests.log 2>&1
  echo "tests: exit $? ($(( $(date +%s) - T0 )) s)"; tail -4 $R/tests.log
fi
if want layer; then
  timeout 200 python3 -m delta_attn.cli bench layer --lengths 128K,1M \
    --methods cudnn,sparse,delta,delta+fa4,delta_auto+fa4,rows,rows+fa4 --dense-once-above 256K --budget 0.4 --reps 7 \
    --out $R/layer > $R/layer.log 2>&1
  echo "layer: exit $? ($(( $(date +%s) - T0 )) s)"
fi
if want e8b; then
  timeout 150 python3 -m delta_attn.cli bench e2e --device cuda --warmup-length 4096 --model-shape llama-3-8b \
    --lengths 128K --methods dense,delta --reps 2 --backend fa4 --out $R/e8b > $R/e8b.log 2>&1
  echo "e8b: exit $? ($(( $(date +%s) - T0 )) s)"; grep -E "TTFT|backend" $R/e8b.log | cut -c1-200 | tail -4
fi
if want profile; then
  timeout 120 python3 scripts/gpu_calls/fa4_profile.py $R > $R/profile.log 2>&1
  echo "profile: exit $? ($(( $(date +%s) - T0 )) s)"; grep -v "Warning\|exe_args\|warn" $R/profile.log | tail -34
fi
if want again; then
  for i in 1 2; do
    timeout 100 python3 -m delta_attn.cli bench layer --lengths 128K --methods cudnn,delta,delta+fa4 --budget 0.4 \
      --reps 9 --out $R/again$i > $R/again$i.log 2>&1
    echo "again $i: exit $? ($(( $(date +%s) - T0 )) s)"; grep -E "^\| 128K " $R/again$i.log
  done
fi
tar czf $OUT/fa4_backend.tgz -C /tmp fa4_backend
want layer && grep -E "^\| (128K|1M) " $R/layer.log
want layer && grep -A6 "dense-rows TFLOP" $R/layer.log | head -5
