#!/usr/bin/env bash
# Issue 15, 2026-12-07 (fifth session): the whole Qwen run — 13 tasks × 16K and 32K × 7 methods × 30 samples, the
# 5 discriminating tasks at 32K and 16K to 50 — in warm calls on one GPU, each resuming what the earlier ones (and the
# carried .results/ of earlier sessions) already hold. Before the first call the 20 Qwen parts are copied to
# /tmp/m (scripts/gpu_model_parts.sh prints those calls). Every call carries .whl, .data and .results.
#
#   L=575 bash scripts/gpu_calls/2026-12-07_issue15_full.sh W1    the whole run, in four phases one after the
#                                                                  other: 32K × 30, 16K × 30, the discriminating
#                                                                  tasks × 50 at 32K, then at 16K (G32, G16,
#                                                                  GDISC: one process a group); cut by the time
#                                                                  limit, so repeat W1 (as W2, W3, ...) until it
#                                                                  reports nothing left
#                                                                  (then goes on to X's work, as time allows)
#   L=400 bash scripts/gpu_calls/2026-12-07_issue15_full.sh X     the rest of the issue: the needle analysis at
#                                                                  32K, the tight window (sink 64 + window 512) on
#                                                                  the discriminating tasks, continuation
#                                                                  perplexity of λ 0.5 and γ 16, one exploratory
#                                                                  row at 64K with YaRN (factor 4 over 32K) on
#                                                                  6 tasks × 6, and with AUTOD=1 λ = auto-decay
#                                                                  at 32K × 30 on the discriminating tasks
#   L=575 bash scripts/gpu_calls/2026-12-07_issue15_full.sh Q1    for a short budget: 16K × 15 for the seven
#                                                                  methods, then X's work, each process cut by
#                                                                  the time limit
#
# Records go to /tmp/res/<call>/ on the machine (it keeps /tmp between warm calls, so the next call resumes from
# them without a round trip) and come back as $OUT/<call>.tgz. The whole run's processes are the only GPU work of
# a W call, so its phases' wall times ($OUT/steps.log) are the run's device time (the issue's throughput target).
set -uo pipefail
CALL=${1:?usage: $0 W1|W2|...|X}
T0=$(date +%s)
L=${L:-575}  # seconds the whole call may take
export TOKENIZERS_PARALLELISM=false DELTA_ATTN_CACHE_DIR=/tmp/dcache
mkdir -p /tmp/res "$OUT"
if [ ! -f /tmp/m/model.gguf ]; then
  want=$(cat /tmp/m/parts.count 2>/dev/null || echo 20)
  n=$(ls /tmp/m/part.* 2>/dev/null | wc -l)
  [ "$n" = "$want" ] || { echo "only $n of $want parts in /tmp/m: the machine went cold, copy them again"; exit 3; }
  cat /tmp/m/part.* > /tmp/m/model.gguf && rm /tmp/m/part.*
  sha256sum /tmp/m/model.gguf | tee "$OUT/sha256.txt"
fi
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=src:/tmp/site
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
# de-quantise once into the cache (≈ 70 s the first time); the eval processes then load the cached copy
python3 -c "from delta_attn.models import load_cpu_model as f; f('/tmp/m/model.gguf')" 2>&1 | tail -1
echo "model ready after $(( $(date +%s) - T0 )) s"

COMMON=(--model /tmp/m/model.gguf --texts-dir .data/texts --base streaming --sink 128 --window 2048 --gamma 64
        --no-summary)
RULER=(--batch-size 16384:24,32768:12 --prefill-tokens 65536 --workers 4 --no-progress --resume-from .results /tmp/res)
DISC=niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery,vt
MARGIN=35  # seconds kept for the tar at the end
left() { echo $(( L - ($(date +%s) - T0) - MARGIN )); }

step() {  # $1 out folder, then eval ruler's arguments: runs while time is left, logs its start and end
  local d=/tmp/res/$CALL/$1; shift; mkdir -p "$d"
  local t; t=$(left)
  [ "$t" -gt 30 ] || { echo "$(date +%T) skip $d (no time left)" >> "$OUT/steps.log"; return 0; }
  echo "$(date +%T) start $d" >> "$OUT/steps.log"
  python3 -m delta_attn.cli eval ruler "${COMMON[@]}" "${RULER[@]}" "$@" --out "$d" --time-limit "$t" \
    > "$d/run.log" 2>&1
  local rc=$?
  echo "$(date +%T) end   $d rc $rc ($(grep -c '"record":"sample"' "$d/ruler.jsonl" 2>/dev/null || echo 0) new samples)" \
    >> "$OUT/steps.log"
}

# one process per group of methods ("a,b;c;..."), sharing the GPU, each group about the same work; every process
# ends a phase before any starts the next, so that a call cut by its time limit leaves the earlier phases whole.
# At 32K dense costs about two sparse-based methods and γ 16 and λ 0.5 have no records yet (the others have 15
# samples a task from the earlier session); at 16K nothing has been run.
G32=${G32:-dense,sparse,recompute;delta,delta_l0.5;delta_auto,delta_g16}
G16=${G16:-dense;sparse,recompute;delta,delta_auto;delta_l0.5,delta_g16}
GDISC=${GDISC:-dense,delta_g16;sparse,recompute,delta_l0.5;delta,delta_auto}
phase() {  # $1 phase name, $2 groups, then eval ruler's arguments: all its processes end before it returns
  local name=$1 groups i=0; IFS=';' read -r -a groups <<< "$2"; shift 2
  for g in "${groups[@]}"; do
    i=$((i + 1)); step "$name/g$i" "$@" --methods "$g" &
  done
  wait
}

rest() {  # the rest of the issue, four processes sharing the GPU, each cut by the call's time limit
  local TW=streaming_w512_s64
  ( step tight --tasks "$DISC" --lengths 32768 --samples 15 \
      --methods "$TW+sparse,$TW+recompute,$TW+delta,$TW+delta_auto" ) &
  # λ = auto-decay has 15 samples a task already and trails Δ there; more only when asked (AUTOD=1)
  [ "${AUTOD:-0}" = 1 ] && ( step autod --tasks "$DISC" --lengths 32768 --samples 30 --methods delta_autod ) &
  # the needle analysis does not resume: NEEDLE_PPL=0 skips it (and the perplexity) once a call has made them
  [ "${NEEDLE_PPL:-1}" = 1 ] && ( [ "$(left)" -gt 30 ] || exit 0
    d=/tmp/res/$CALL/N32; mkdir -p "$d"
    python3 -m delta_attn.cli eval needle "${COMMON[@]}" --task niah_multikey_2 --length 32768 --samples 6 \
      --methods dense,sparse,recompute,delta,delta_auto,delta_autod --out "$d" --time-limit "$(left)" \
      > "$d/run.log" 2>&1
    [ "$(left)" -gt 30 ] || exit 0
    d=/tmp/res/$CALL/P32; mkdir -p "$d"
    python3 -m delta_attn.cli eval ppl "${COMMON[@]}" --lengths 32768 --continuation 1024 --docs 8 --batch-size 1 \
      --methods dense,sparse,recompute,delta,delta_auto,delta_autod,delta_l0.5,delta_g16 --resume-from .results \
      --out "$d" --time-limit "$(left)" --no-progress > "$d/run.log" 2>&1 ) &
  # one exploratory row past the trained context: YaRN factor 4 (the model card's advice) at 64K
  ( step yarn64 --rope-scaling yarn:4:32768 --tasks niah_single_1,$DISC --lengths 65536 --samples 6 \
      --batch-size 65536:6 --methods dense,sparse,delta,recompute ) &
  wait
}

case "$CALL" in
  W*)
    # the whole run in priority order: 32K × 30, 16K × 30, then the discriminating tasks to 50 (32K, then 16K)
    phase L32 "$G32" --tasks all --lengths 32768 --samples 30
    phase L16 "$G16" --tasks all --lengths 16384 --samples 30
    phase D32 "$GDISC" --tasks "$DISC" --lengths 32768 --samples 50
    phase D16 "$GDISC" --tasks "$DISC" --lengths 16384 --samples 50
    # then, as time allows, what X does (resumed: each step runs only what is still missing)
    rest
    ;;
  X) rest ;;
  Q*)
    # one call for what a short device budget allows: 16K at 15 samples a cell for all seven methods, then the
    # rest of the issue as far as the time limit goes (a later W call takes 16K on to 30 from these records)
    phase L16 "$G16" --tasks all --lengths 16384 --samples 15
    rest
    ;;
  *) echo "unknown call $CALL (W1, W2, ..., X or Q1, Q2, ...)"; exit 2 ;;
esac
echo "== $CALL done after $(( $(date +%s) - T0 )) s" | tee -a "$OUT/steps.log"
tail -n 1 /tmp/res/"$CALL"/*/run.log /tmp/res/"$CALL"/*/*/run.log 2>/dev/null | grep -v '^$' | tail -30
python3 scripts/gpu_calls/score_table.py /tmp/res .results
tar czf "$OUT/$CALL.tgz" -C /tmp/res "$CALL" && ls -la "$OUT"
