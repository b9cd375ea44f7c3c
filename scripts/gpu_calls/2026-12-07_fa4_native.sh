#!/usr/bin/env bash
# Issue 16, tenth session (2026-12-07): FA4's sparse base on the native local window (full tiles unmasked, the sink
# riding on them) and the anchors with the GQA group packed as rows (kernels/fa4.py), against the ninth session's
# FA4 calls and the Triton backend. Same wheels and first call as 2026-12-07_fa4_backend.sh
# (`mkdir -p /tmp/w && cp .fa00/* /tmp/w/`, carry .fa00), then this script (carry .fa01).
#   (tests)   tests/test_fa4_tiles.py on the GPU: both Õ paths, packed anchors, fa4_prefill against float64
#   (probe)   scripts/gpu_calls/fa4_native_probe.py: each FA4 pass before/after at 128K
#   (layer)   one Llama-3-8B layer at 128K and 1M (LAYER_LENGTHS): cuDNN, Δ Triton, Δ and λ = auto on FA4
#   (check)   python -m delta_attn.bench.check: every Triton kernel against float64 (the fused λ kernel's edit)
#   The 128K repeats, the profile and the 8B end to end are the parts "again profile e8b" of
#   2026-12-07_fa4_backend.sh; the llama-3.2-3b shape to 1M on an H200 is PARTS=e3b of 2026-12-07_floor_layer.sh.
# PARTS (default "tests probe layer check"; they run in the order above). Records: $OUT/fa4_native.tgz.
set -uo pipefail
T0=$(date +%s)
source scripts/gpu_calls/fa4_wheels.sh  # the FA4 wheels into /tmp/site, PYTHONPATH
R=/tmp/fa4_native; mkdir -p $R
PARTS=" ${PARTS:-tests probe layer check} "
want() { [[ "$PARTS" == *" $1 "* ]]; }
save() { tar czf $OUT/fa4_native.tgz -C /tmp fa4_native; }  # after every part: a call cut short keeps what ran
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.total --format=csv,noheader | tee $R/gpu.txt
if want tests; then
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_fa4_tiles.py > $R/tests.log 2>&1
  echo "tests: exit $? ($(( $(date +%s) - T0 )) s)"; grep -E "passed|failed|Error" $R/tests.log | tail -6; save
fi
if want probe; then
  timeout 150 python3 scripts/gpu_calls/fa4_native_probe.py $R > $R/probe.log 2>&1
  echo "probe: exit $? ($(( $(date +%s) - T0 )) s)"; grep -v "Warning\|exe_args\|warn" $R/probe.log | tail -9; save
fi
if want layer; then
  timeout 200 python3 -m delta_attn.cli bench layer --lengths ${LAYER_LENGTHS:-128K,1M} \
    --methods cudnn,delta,delta+fa4,delta_auto+fa4 --dense-once-above 256K --budget 0.4 --reps 7 \
    --out $R/layer > $R/layer.log 2>&1
  echo "layer: exit $? ($(( $(date +%s) - T0 )) s)"; grep -E "^\| (128K|1M) " $R/layer.log; save
fi
if want check; then
  timeout 240 python3 -m delta_attn.bench.check > $R/check.log 2>&1
  echo "check: exit $? ($(( $(date +%s) - T0 )) s)"; tail -4 $R/check.log; save
fi
save
want tests && grep -E "FAILED|Error" $R/tests.log | head -8
exit 0
