#!/usr/bin/env bash
# Issue 16, eighth session (2026-12-07), the call after 2026-12-07_floor.sh on the same warm machine: end to end with
# the launch configs that call's sweep picked (/tmp/floor/sweep/best_128K.json; the shipped ones when it is absent).
#   (e8b)  Llama-3-8B shape (random weights) at 128K: dense (fastest SDPA backend) and Δ one-shot with the swept
#          configs, then Δ alone with the shipped configs (same machine, minutes apart) — target ≥ 2.9×
#   (e1b)  llama-3.2-1b shape: dense and Δ at 32K and 128K, then Δ chunked (16,384, in-place cache) at 1M with the
#          swept configs; dense at 1M extrapolated from the N² fit (labelled so) — target ≥ 15×
# Environment: OUT, PARTS (default "e8b e1b"). Records: $OUT/floor_e2e.tgz; a table prints last.
set -uo pipefail
T0=$(date +%s)
export TOKENIZERS_PARALLELISM=false PYTHONPATH=src
R=/tmp/floor_e2e; mkdir -p $R "$OUT"
PARTS=" ${PARTS:-e8b e1b} "
want() { [[ "$PARTS" == *" $1 "* ]]; }
KC=(); [ -f /tmp/floor/sweep/best_128K.json ] && KC=(--kernel-config /tmp/floor/sweep/best_128K.json)
echo "launch configs: ${KC[*]:-shipped}"; [ -n "${KC[*]}" ] && cat /tmp/floor/sweep/best_128K.json | tr -d '\n '; echo
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/gpu.txt
E=(python3 -m delta_attn.cli bench e2e --device cuda --warmup-length 4096)
if want e8b; then
  echo "== (e8b) 8B shape, 128K ($(( $(date +%s) - T0 )) s)"
  timeout 150 "${E[@]}" --model-shape llama-3-8b --lengths 128K --methods dense,delta --reps 2 "${KC[@]}" \
    --out $R/e8b > $R/e8b.log 2>&1
  echo "exit $?"; grep -E "TTFT|backend" $R/e8b.log | cut -c1-200 | tail -6
  if [ -n "${KC[*]}" ]; then
    timeout 70 "${E[@]}" --model-shape llama-3-8b --lengths 128K --methods delta --reps 2 --out $R/e8b_shipped \
      > $R/e8b_shipped.log 2>&1
    echo "shipped: exit $?"; grep -E "TTFT" $R/e8b_shipped.log | cut -c1-200 | tail -3
  fi
fi
if want e1b; then
  echo "== (e1b) llama-3.2-1b shape, 32K/128K and 1M chunked ($(( $(date +%s) - T0 )) s)"
  timeout 120 "${E[@]}" --model-shape llama-3.2-1b --lengths 32K,128K --methods dense,delta --reps 2 "${KC[@]}" \
    --out $R/e1b > $R/e1b.log 2>&1
  echo "exit $?"; grep -E "TTFT|backend" $R/e1b.log | cut -c1-200 | tail -8
  timeout 110 "${E[@]}" --model-shape llama-3.2-1b --lengths 1M --methods delta --chunk-size 16384 \
    --chunk-methods delta --chunk-cache preallocated --reps 2 "${KC[@]}" --out $R/e1b_1m > $R/e1b_1m.log 2>&1
  echo "exit $?"; grep -E "TTFT|OOM|skipped" $R/e1b_1m.log | cut -c1-200 | tail -4
fi
tar czf "$OUT/floor_e2e.tgz" -C /tmp floor_e2e
echo "== floor_e2e done after $(( $(date +%s) - T0 )) s"
