#!/usr/bin/env bash
# Issue 16, twelfth session (2026-12-08): the H200 (the kind lent this session), and the recompile of compiled layers.
# First call `mkdir -p /tmp/w && cp .fa00/* /tmp/w/` (carry .fa00), then this script (carry .fa01); the FA4 wheels
# are needed only by the +fa4 layer methods and the tests.
#   (layer)  one Llama-3-8B layer at 128K and 1M: cuDNN, Δ on Triton and on FA4, λ = auto on both, 7 reps, ratios
#            from the same run (the issue's ≥ 18.5× at 128K and ≥ 0.95 of the floor at 1M, on the H200)
#   (probe)  the compiled 8B shape with 2 layers, warmed up at 4K, then PROBE_LENGTHS (default 128K,256K):
#            inductor-stock (its int32 guards) and --compile (delta_attn.compiled.SymbolicInt64Inductor),
#            TORCH_LOGS=recompiles (PROBE_BACKENDS picks): what guard fails, and whether the int64 backend removes it. The first run of this
#            part (H100, 2026-12-08 00:22) found dynamo's duck sizing (4,096 tokens = the hidden size) behind the 128K
#            recompile; compile_layers now turns it off, and 256K passes 2^31 elements in the MLP (int32 guards)
#   (e8c)    `bench e2e --model-shape llama-3-8b` at 128K, dense and Δ, --compile (all 32 layers) then eager; first
#            call ÷ steady for the issue's ≤ 1.05× rule
#   (e3b)    `bench e2e --model-shape llama-3.2-3b`: 32K and 128K one-shot, dense and Δ; then Δ chunked (16,384, in-place
#            cache) at 1M (112 GiB of K/V: the H200 only)
#   (again)  the 128K layer cells twice more
#   (tests)  tests/test_fa4_tiles.py and the kernel tests on this GPU
# PARTS (default "layer probe"). Records: $OUT/h200.tgz; the table prints last.
set -uo pipefail
T0=$(date +%s)
source scripts/gpu_calls/fa4_wheels.sh  # the FA4 wheels into /tmp/site, PYTHONPATH
R=/tmp/h200; mkdir -p $R
PARTS=" ${PARTS:-layer probe} "
want() { [[ "$PARTS" == *" $1 "* ]]; }
save() { tar czf $OUT/h200.tgz -C /tmp h200; }  # after every part: a call cut short keeps what ran
el() { echo "$1: exit $2 ($(( $(date +%s) - T0 )) s)"; save; }
METHODS=${LAYER_METHODS:-cudnn,delta,delta_auto,delta+fa4,delta_auto+fa4}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.total --format=csv,noheader | tee $R/gpu.txt
E=(python3 -m delta_attn.cli bench e2e --device cuda --warmup-length 4096)
if want layer; then
  timeout 260 python3 -m delta_attn.cli bench layer --lengths 128K,1M --methods $METHODS \
    --dense-once-above 256K --budget 0.4 --reps 7 --out $R/layer > $R/layer.log 2>&1; el layer $?
fi
if want probe; then
  for c in ${PROBE_BACKENDS:-inductor-stock inductor}; do
    TORCH_LOGS=recompiles timeout 150 "${E[@]}" --model-shape llama-3-8b --layers 2 --lengths ${PROBE_LENGTHS:-128K,256K} \
      --methods dense,delta --reps 2 --compile $c --out $R/probe_$c > $R/probe_$c.log 2>&1; el "probe $c" $?
  done
fi
if want e8c; then
  for mode in ${E8_MODES:-compile eager}; do
    TORCH_LOGS=recompiles timeout 280 "${E[@]}" --model-shape llama-3-8b --lengths 128K --methods dense,delta --reps 2 \
      $([ $mode = compile ] && echo --compile) --out $R/e8_$mode > $R/e8_$mode.log 2>&1; el "e8 $mode" $?
  done
fi
if want e3b; then
  timeout 150 "${E[@]}" --model-shape llama-3.2-3b --lengths 32K,128K --methods dense,delta --reps 2 \
    --out $R/e3b > $R/e3b.log 2>&1; el e3b $?
  timeout 240 "${E[@]}" --model-shape llama-3.2-3b --lengths 1M --methods delta --chunk-size 16384 \
    --chunk-methods delta --chunk-cache preallocated --reps 2 --out $R/e3b_1m > $R/e3b_1m.log 2>&1; el "e3b 1M" $?
fi
if want again; then
  for i in 2 3; do
    timeout 90 python3 -m delta_attn.cli bench layer --lengths 128K --methods $METHODS --budget 0.4 --reps 7 \
      --out $R/layer_again$i > $R/layer_again$i.log 2>&1; el "again $i" $?
  done
fi
if want tests; then
  timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_fa4_tiles.py tests/test_kernels_gpu.py \
    > $R/tests.log 2>&1; el tests $?
  grep -E "passed|failed" $R/tests.log | tail -2; grep -E "FAILED|Error" $R/tests.log | head -8
fi
for f in $R/probe_*.log $R/e8_*.log; do
  [ -f $f ] && echo "== $f" && grep -E "Recompiling|triggered by|guard|TTFT|compiled" $f | cut -c1-230 | head -8
done
for f in $R/e3b.log $R/e3b_1m.log; do [ -f $f ] && echo "== $f" && grep -E "TTFT|OOM" $f | cut -c1-200; done
for f in $R/layer.log $R/layer_again*.log; do [ -f $f ] && echo "== $f" && grep -E "^\| (N|128K|1M) " $f | cut -c1-170; done
grep -h "Triton kernel" $R/*.log | cut -c1-200 | head -6  # a cell that compiled a kernel after the warm-up
echo "== done after $(( $(date +%s) - T0 )) s"
exit 0
