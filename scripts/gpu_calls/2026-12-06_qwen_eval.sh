#!/usr/bin/env bash
# Issue 15: Qwen2.5-Coder-1.5B-Instruct at 32K on one GPU, through the project's own eval commands.
#
#   bash scripts/gpu_calls/2026-12-06_qwen_eval.sh E1   13 tasks × LENGTHS (default 32768) × the 8 methods, SAMPLES
#                                                        (default 20). The issue's whole run, resumable over sessions
#                                                        (carry the earlier calls' results under .results/):
#                                                        L=540 SAMPLES=30 LENGTHS=32768,16384 ... E1
#                                                        METHOD_GROUPS="dense;sparse,recompute;delta,delta_auto"
#                                                        picks the methods (one process a group); SmolLM2 at 8K
#                                                        (SMOL_WINDOWS, default 256:64) runs after them when its
#                                                        parts were carried
#                                                        Records written before the float32-rotary fix (all of
#                                                        2026-12-06) do not match it and are redone, not reused.
#   bash scripts/gpu_calls/2026-12-06_qwen_eval.sh E2   resumes E1 (carried in .results/E1) with more samples,
#                                                        then continuation perplexity and the needle analysis
#   bash scripts/gpu_calls/2026-12-06_qwen_eval.sh E3   (second session) the 8 tasks E1 left out at 32K, the tight
#                                                        window (sink 64 + window 512) on the 5 discriminating tasks,
#                                                        the needle analysis, and SmolLM2 at 8K with both windows
#                                                        (is the λ ranking a model effect or a window effect?)
#
# Before E1 the parts of the GGUF (20 of 56 MB since 2026-12-07, 19 of 62 MB before) are copied to /tmp/m by warm
# calls, one part each (scripts/gpu_model_parts.sh prints them); E1 carries .whl (the gguf wheel), .data (packed
# texts) and .results (earlier records to resume). One eval process per group of methods shares the GPU, so that a
# time limit cuts samples, never whole methods.
set -uo pipefail
PART=${1:?usage: $0 E1|E2}
T0=$(date +%s)
L=${L:-540}                       # seconds the whole call may take
export TOKENIZERS_PARALLELISM=false DELTA_ATTN_CACHE_DIR=/tmp/dcache
mkdir -p .results /tmp/m /tmp/s && cp .p[0-9][0-9]/part.* /tmp/m/ 2>/dev/null; cp .s[0-9][0-9]/spart.* /tmp/s/ 2>/dev/null
# SmolLM2 (2 parts, .s00 with the Qwen parts' calls, .s01 with this one): the no-regression check at 8K
[ -f /tmp/s/smollm2.gguf ] || { [ -f /tmp/s/spart.01 ] && cat /tmp/s/spart.00 /tmp/s/spart.01 > /tmp/s/smollm2.gguf; }
if [ ! -f /tmp/m/model.gguf ]; then
  want=$(cat /tmp/m/parts.count 2>/dev/null || echo 19)  # written by scripts/gpu_model_parts.sh into the last part
  n=$(ls /tmp/m/part.* | wc -l); [ "$n" = "$want" ] || { echo "only $n of $want parts in /tmp/m: the machine went cold"; exit 3; }
  cat /tmp/m/part.* > /tmp/m/model.gguf && rm /tmp/m/part.*
fi
sha256sum /tmp/m/model.gguf | tee "$OUT/sha256.txt"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=src:/tmp/site
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# model option: --model once the registry exists, else --gguf
if python3 -m delta_attn.cli eval ruler --help 2>/dev/null | grep -q -- '--model'; then MOPT=--model; else MOPT=--gguf; fi
# de-quantise once into the cache; the eval processes then load the cached copy in seconds
python3 -c "from delta_attn.models import load_cpu_model as f; f('/tmp/m/model.gguf')" 2>&1 | tail -1
echo "model cached after $(( $(date +%s) - T0 )) s"
COMMON=($MOPT /tmp/m/model.gguf --texts-dir .data/texts --base streaming --sink 128 --window 2048 --gamma 64
        --no-summary)
# one eval process per group (METHOD_GROUPS, groups separated by ";"), all sharing the GPU
IFS=';' read -r -a GROUPS_ <<< "${METHOD_GROUPS:-dense;sparse,recompute;delta,delta_auto;delta_autod,delta_l0.5,delta_g16}"
# SmolLM2 at 8K runs after the Qwen processes, in the last SMOL_S seconds (started beside them it found no GPU
# memory left at model load, 2026-12-06 20:29 UTC); SMOL_S=0 skips it
SMOL_S=${SMOL_S:-100}; [ -f /tmp/s/smollm2.gguf ] || SMOL_S=0
left() { echo $(( L - ($(date +%s) - T0) - ${1:-0} )); }

smol() {  # $1 windows "W:S ...": SmolLM2 at 8K (prompt format 2), one process per window, after the Qwen runs
  wait
  [ "$SMOL_S" -gt 0 ] || return 0
  for w in $1; do
    mkdir -p "$OUT/S8/w${w%%:*}"
    python3 -m delta_attn.cli eval ruler $MOPT /tmp/s/smollm2.gguf --texts-dir .data/texts --base streaming \
      --window "${w%%:*}" --sink "${w##*:}" --gamma 64 --no-summary --tasks all --lengths 8192 \
      --samples "${SSAMPLES:-25}" --workers 2 --no-progress --batch-size 8192:32 \
      --methods "$( [ "$w" = 256:64 ] && echo dense, )delta,delta_auto,delta_autod,recompute,sparse" \
      --out "$OUT/S8/w${w%%:*}" --resume-from .results --time-limit "$(left 30)" \
      > "$OUT/S8/w${w%%:*}/run.log" 2>&1 &
  done
  wait
}

ruler() {  # $1 out-subfolder, $2 samples, $3 tasks, $4 seconds
  local i=0
  for g in "${GROUPS_[@]}"; do
    i=$((i + 1)); mkdir -p "$OUT/$1/g$i"
    python3 -m delta_attn.cli eval ruler "${COMMON[@]}" --tasks "$3" --lengths "${LENGTHS:-32768}" --samples "$2" \
      --batch-size 16384:24,32768:12 --prefill-tokens 65536 --workers 4 --methods "$g" --out "$OUT/$1/g$i" \
      --resume-from .results --time-limit "$4" --no-progress > "$OUT/$1/g$i/run.log" 2>&1 &
  done
  wait
}

case "$PART" in
  E1)
    ruler R32 "${SAMPLES:-20}" "${TASKS:-all}" "$(left $((40 + SMOL_S)))"
    smol "${SMOL_WINDOWS:-256:64}"
    ;;
  E2)
    # discriminating tasks to 50 samples, the rest to 30 (records from E1 are reused, not redone)
    ruler R32b 50 niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery,vt,cwe,fwe "$(left 200)" &
    mkdir -p "$OUT/P32" "$OUT/N32"
    python3 -m delta_attn.cli eval ppl "${COMMON[@]}" --lengths 32768 --continuation 1024 --docs "${PPL_DOCS:-8}" \
      --batch-size 1 --methods dense,sparse,recompute,delta,delta_auto,delta_autod,delta_l0.5,delta_g16 --out "$OUT/P32" \
      --time-limit "$(left 200)" --no-progress > "$OUT/P32/run.log" 2>&1
    python3 -m delta_attn.cli eval needle "${COMMON[@]}" --task niah_multikey_2 --length 32768 --samples 6 \
      --methods dense,sparse,recompute,delta,delta_auto,delta_autod --out "$OUT/N32" --time-limit "$(left 30)" \
      > "$OUT/N32/run.log" 2>&1
    wait
    ;;
  E3)
    NEW=niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,cwe,fwe,qa_1,qa_2
    DISC=niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery,vt
    TW=streaming_w512_s64
    S=${SAMPLES:-15}
    q() {  # $1 name, $2 tasks, $3 methods: one eval process at 32K
      mkdir -p "$OUT/R32c/$1"
      python3 -m delta_attn.cli eval ruler "${COMMON[@]}" --tasks "$2" --lengths 32768 --samples "$S" \
        --batch-size 32768:12 --prefill-tokens 65536 --workers 4 --methods "$3" --out "$OUT/R32c/$1" \
        --resume-from .results --time-limit "$(left $((45 + SMOL_S)))" --no-progress > "$OUT/R32c/$1/run.log" 2>&1 &
    }
    q q1 "$NEW" dense,delta_autod
    q q2 "$NEW" sparse,recompute
    q q3 "$NEW" delta,delta_auto
    q q4 "$DISC" "$TW+delta,$TW+delta_auto,$TW+recompute,$TW+delta_autod,$TW+sparse"
    mkdir -p "$OUT/N32"
    python3 -m delta_attn.cli eval needle "${COMMON[@]}" --task niah_multikey_2 --length 32768 --samples 6 \
      --methods dense,sparse,recompute,delta,delta_auto,delta_autod --out "$OUT/N32" \
      --time-limit "$(left $((45 + SMOL_S)))" > "$OUT/N32/run.log" 2>&1 &
    wait
    smol "${SMOL_WINDOWS:-256:64 2048:128}"
    ;;
esac
echo "== $PART done after $(( $(date +%s) - T0 )) s"
tail -n 2 "$OUT"/*/*/run.log "$OUT"/*/run.log 2>/dev/null | grep -v '^$' | tail -40
python3 - "$OUT" <<'EOF'
import json, sys, glob, collections
acc = collections.defaultdict(list)
for f in glob.glob(sys.argv[1] + "/**/ruler.jsonl", recursive=True) + glob.glob(".results/**/ruler.jsonl", recursive=True):
    for line in open(f):
        r = json.loads(line)
        if r.get("record") == "sample":
            acc[(r["config"]["model"][:5] + ":" + r["task"], r["method"])].append(r["score"])
tasks = sorted({t for t, _ in acc}); methods = sorted({m for _, m in acc})
print("task".ljust(18) + "".join(m[:10].rjust(11) for m in methods))
for t in tasks:
    print(t[:18].ljust(18) + "".join((f"{100*sum(acc[t,m])/len(acc[t,m]):5.1f}/{len(acc[t,m]):<3d}" if acc[t, m] else "-").rjust(11) for m in methods))
EOF
cd "$OUT" && for d in R32 R32b R32c S8 P32 N32; do [ -d "$d" ] && tar czf "$d.tgz" "$d" && rm -rf "$d"; done; ls -la "$OUT"
