#!/usr/bin/env bash
# Issue 15, 2026-12-07: the two calls that followed E1 of 2026-12-06_qwen_eval.sh (one H100, warm, the Qwen and
# SmolLM2 GGUFs already in /tmp/m and /tmp/s, the de-quantised Qwen cached in /tmp/dcache). They carry .whl, .data
# and .results (the earlier calls' records, unpacked: resumed, never redone).
#
#   bash scripts/gpu_calls/2026-12-07_postfix_fill.sh F1   the Qwen recompute cells E1's time limit cut (32K),
#                                                           SmolLM2 at 8K: λ = auto, recompute, sparse
#   bash scripts/gpu_calls/2026-12-07_postfix_fill.sh F2   Qwen continuation perplexity at 32K (8 documents),
#                                                           λ = auto-decay on Qwen's 5 discriminating tasks and on
#                                                           SmolLM2's 13
# Each writes one tar under $OUT; RESULTS.md is regenerated from them (see its Reproduce section).
set -uo pipefail
PART=${1:?usage: $0 F1|F2}
T0=$(date +%s)
export TOKENIZERS_PARALLELISM=false DELTA_ATTN_CACHE_DIR=/tmp/dcache PYTHONPATH=src:/tmp/site
C=(--texts-dir .data/texts --base streaming --gamma 64 --no-summary --no-progress)
QWEN=(--model /tmp/m/model.gguf "${C[@]}" --sink 128 --window 2048)
SMOL=(--model /tmp/s/smollm2.gguf "${C[@]}" --sink 64 --window 256 --tasks all --lengths 8192 --samples 25
      --workers 2 --batch-size 8192:32 --resume-from .results)
QRULER=(--lengths 32768 --samples 15 --batch-size 32768:12 --prefill-tokens 65536 --workers 4 --resume-from .results)
run() {  # $1 out-subfolder, then the eval command's arguments: one background process, its log under $OUT
  local d=$OUT/$1; shift; mkdir -p "$d"
  python3 -m delta_attn.cli eval "$@" --out "$d" > "$d/run.log" 2>&1 &
}
case "$PART" in
  F1)
    run R32/g1 ruler "${QWEN[@]}" "${QRULER[@]}" --tasks all --methods recompute --time-limit 290
    run S8/a ruler "${SMOL[@]}" --methods delta_auto,recompute --time-limit 290
    run S8/b ruler "${SMOL[@]}" --methods sparse --time-limit 290
    ;;
  F2)
    run P32 ppl "${QWEN[@]}" --lengths 32768 --continuation 1024 --docs 8 --batch-size 1 \
      --methods dense,sparse,recompute,delta,delta_auto,delta_autod --time-limit 140
    run R32/g5 ruler "${QWEN[@]}" "${QRULER[@]}" --tasks niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery,vt \
      --methods delta_autod --time-limit 140
    run S8/c ruler "${SMOL[@]}" --methods delta_autod --time-limit 140
    ;;
  *) echo "unknown part $PART (F1 or F2)"; exit 2 ;;
esac
wait
tail -n 2 "$OUT"/*/run.log "$OUT"/*/*/run.log 2>/dev/null
cd "$OUT" && tar czf "$PART.tgz" -- */ && rm -rf -- */ && echo "== $PART done after $(( $(date +%s) - T0 )) s"
