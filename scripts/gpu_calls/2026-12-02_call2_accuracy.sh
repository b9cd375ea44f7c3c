#!/usr/bin/env bash
# GPU call 2 of 2 (accuracy, issue 8): the model from /tmp/m/part.00 (call 1) + .mB/part.01, then the
# evaluation parts side by side on the one GPU (SmolLM2-135M leaves it mostly idle), each time-limited.
set -uo pipefail
T0=$(date +%s)
L=${L:-280}
export PYTHONPATH=src TOKENIZERS_PARALLELISM=false
[ -f /tmp/m/part.00 ] || { echo "NO /tmp/m/part.00: the machine went cold, redo call 1"; exit 3; }
cat /tmp/m/part.00 .mB/part.01 > /tmp/m/model.gguf && sha256sum /tmp/m/model.gguf
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=src:/tmp/site
mkdir -p "$OUT"/{R,P,F,M,CP}
COMMON=(--gguf /tmp/m/model.gguf --texts-dir .data/texts --base streaming --sink 64 --window 256 --gamma 64
        --block-size 512 --vertical-size 512 --slash-size 512)
# 1. the 13 RULER-style tasks at 8K: the paper's ablations and the two variants, same prompts for all
python3 -m delta_attn.cli eval ruler --tasks all --lengths 8192 --samples "${SR:-25}" --no-summary "${COMMON[@]}" \
  --methods dense,sparse,recompute,delta,delta_auto,delta_x25 --out "$OUT/R" --time-limit "$L" > "$OUT/R/run.log" 2>&1 &
# 2. continuation perplexity (the KV cache the prefill wrote), 8 methods
OUT="$OUT/P" LIMIT=$L PREV=none PPL_DOCS=${PD:-16} bash scripts/gpu_eval.sh P > /dev/null 2>&1 &
# 3. prompt formats × methods on niah_single_1, then the needle analysis
OUT="$OUT/F" LIMIT=$L PREV=none SAMPLES=${SF:-30} NEEDLE_SAMPLES=6 bash scripts/gpu_eval.sh F > /dev/null 2>&1 &
# 4. the window × γ map (whatever fits)
OUT="$OUT/M" LIMIT=$((L - 10)) PREV=none SAMPLES=${SM:-8} SWEEP_DOCS=6 bash scripts/gpu_eval.sh M > /dev/null 2>&1 &
# 5. context-parallel equivalences through NCCL (world size 1 here: one GPU is lent)
timeout $L python3 -m torch.distributed.run --standalone --nproc-per-node 1 -m delta_attn.distributed.check \
  --out "$OUT/CP" --skip-timing > "$OUT/CP/run.log" 2>&1 &
wait
echo "all parts done after $(( $(date +%s) - T0 )) s"
for p in R P F M CP; do echo "== $p: $(ls "$OUT/$p" | tr '\n' ' ')"; done
tail -4 "$OUT/R/run.log" "$OUT/CP/run.log"; tail -3 "$OUT"/P/gpu_eval_P.log "$OUT"/F/gpu_eval_F.log "$OUT"/M/gpu_eval_M.log
cd "$OUT" && for p in R P F M CP; do tar czf "$p.tgz" "$p" && rm -rf "$p"; done; ls -la "$OUT"
