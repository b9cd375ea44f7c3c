#!/usr/bin/env bash
# Issue 16, eighth session (2026-12-07), third call (~3 min): one Llama-3-8B layer after the host-time changes
# (CallPlan.dense_pos built lazily, the sparse launcher's stand-ins cached), with the new back-to-back timing beside
# the synchronised one, and one experiment on the L2-bound sparse kernel.
#   (layer) cudnn, sparse, Δ, λ = auto, dense rows at 128K and 1M, shipped launch configs
#   (l2)    the plain sparse kernel (sparse-only) with 128-row tiles of 32 keys, 8 warps, registers capped at 128
#           (two programs per SM): ncu showed the shipped 64-row tiles at 83 % of L2 bandwidth with the tensor pipe
#           at 53 %; 128-row tiles halve the K/V traffic from L2. The Δ epilogue does not fit 128 registers yet
#           (it spills), so only sparse-only is timed with it; a win here says the epilogue is worth refitting
# Records: $OUT/floor_layer.tgz; a table prints last.
set -uo pipefail
T0=$(date +%s)
export PYTHONPATH=src
R=/tmp/floor_layer; mkdir -p $R "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/gpu.txt
timeout 110 python3 -m delta_attn.cli bench layer --lengths 128K,1M --methods cudnn,sparse,delta,delta_auto,rows \
  --dense-once-above 256K --budget 0.4 --reps 7 --out $R/layer > $R/layer.log 2>&1
echo "layer: exit $?"
cat > $R/l2.json <<'JSON'
{"sparse": {"BM": 128, "BN": 32, "num_warps": 8, "num_stages": 3, "USE_TMA": true, "maxnreg": 128}}
JSON
timeout 60 python3 -m delta_attn.cli bench layer --lengths 128K --methods cudnn,sparse --budget 0.4 --reps 7 \
  --kernel-config $R/l2.json --out $R/l2 > $R/l2.log 2>&1
echo "l2: exit $?"; grep -E "^ +128K " $R/l2.log
tar czf "$OUT/floor_layer.tgz" -C /tmp floor_layer
grep -E "^\| (128K|1M) \|" $R/layer.log | cut -c1-150

echo "== floor_layer done after $(( $(date +%s) - T0 )) s"
