#!/usr/bin/env bash
# The Δ attention backend inside vLLM 0.25.1 on one GPU (issue 19), in one device call of ≤ 9 minutes.
#
# Before it, the 99 pinned wheels (356 MB; docs: shared/reference/vllm-on-the-gpu.md) reach the GPU machine in
# parts of 56,000,000 bytes (seven; a part and the working tree must fit the 64 MiB a call carries), one warm call
# each (the machine keeps /tmp between calls while warm):
#   here, once:   cat /work/dl/vllm-parts/wheels.tar.part-* | split -b 56000000 -d -a 2 - /tmp/wt.part-
#                 for f in /tmp/wt.part-*; do i=${f##*-}; mkdir -p .vw$i && mv $f .vw$i/wheels.tar.part-$i; done
#                 cp /work/dl/vllm-parts/wheels.tar.sha256 /work/dl/extra-whl/gguf-0.19.0-py3-none-any.whl .vw06/
#                 echo '/.vw[0-9][0-9]/' >> .git/info/exclude
#   calls 1–7:    carry [".vwNN"], command  mkdir -p /tmp/vw && cp .vwNN/* /tmp/vw/
#   call 8:       bash scripts/gpu_vllm.sh          (cats the parts, checks sha256, installs into /tmp/site, runs)
# (gguf is only needed by the needles part.) For the needles part, the Qwen2.5-Coder-1.5B GGUF must be at
# /tmp/m/model.gguf (scripts/gpu_model_parts.sh: 20 part calls); then  PARTS=needles bash scripts/gpu_vllm.sh
#
# Parts (PARTS, default "layer bench needles"; each has its own time limit, logs under $OUT):
#   layer    one Llama-3-8B layer on a real paged cache through the backend's build + forward (FlashAttention for
#            the stock rows): Δ rows = delta_attention on the gathered Q/K/V, chunked (3) = one-shot, γ=1 = stock
#            FA, decode/short rows = stock FA                                                      (~1–2 min)
#   bench    dummy-weight Llama-3-8B engines, one process each: TTFT of stock FA vs Δ at LENGTHS (32K,128K) with
#            vLLM's chunked prefill and in one chunk; decode tokens/s; 16 concurrent mixed requests  (the rest)
#   needles  only if /tmp/m/model.gguf exists and ≥ 240 s are left: greedy vLLM+Δ vs the project's HF path
#            on 24 NIAH prompts at 16K/32K, stock vLLM vs HF dense as control                      (~4–5 min)
#   DRY=1    CPU dry run of the Python parts that run without vLLM/CUDA
# Environment: OUT (default ./out), LIMIT (seconds for the whole script, default 530), LENGTHS, GPU_MEM (0.80),
#   RUNS (bench engines, default flash:default,delta:default,flash:one,delta:one; the :default ones also measure
#   decode and concurrency),
#   COMPILE=1 (vLLM's default torch.compile + piecewise graphs; default off: no compile, full decode graphs —
#   startup in seconds; prefill attention runs eagerly either way).
set -uo pipefail
T0=$(date +%s)
OUT=${OUT:-./out}
LIMIT=${LIMIT:-530}
PARTS=${PARTS:-layer bench needles}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_vllm.log") 2>&1
export HF_HUB_OFFLINE=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_NO_USAGE_STATS=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }

if [ "${DRY:-0}" = 1 ]; then
  PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" $PY -m delta_attn.vllm.check dry-run --out "$OUT"
  exit $?
fi

# ---- install the wheels once per warm machine ------------------------------------------------------------------
VW=${VW:-/tmp/vw}
SITE=${SITE:-/tmp/site}
if [ ! -f "$SITE/.delta-vllm-0.25.1" ]; then
  if [ ! -f "$VW/wheels.tar" ]; then
    n=$(ls "$VW"/wheels.tar.part-* 2>/dev/null | wc -l)
    if [ "$n" = 0 ] || [ ! -f "$VW/wheels.tar.sha256" ]; then
      echo "$n wheel parts and no sha256 in $VW: carry .vw00, .vw01, … first, back to back (the machine went cold?)"
      exit 3
    fi
    cat "$VW"/wheels.tar.part-* > "$VW/wheels.tar"  # a missing part fails the sha256 check below
  fi
  (cd "$VW" && sha256sum -c wheels.tar.sha256) || {
    echo "wheels.tar: sha256 mismatch from ${n:-?} parts (one missing or damaged: the machine went cold?)"
    rm -f "$VW/wheels.tar"; exit 3; }
  mkdir -p "$VW/whl" && tar -xf "$VW/wheels.tar" -C "$VW/whl"
  extra=$(ls "$VW"/gguf-*.whl 2>/dev/null || true)
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$VW"/whl/*.whl $extra || exit 3
  # vLLM loads general plugins from installed distributions' entry points; the package itself runs from src/
  mkdir -p "$SITE/delta_attn-0.1.0.dist-info"
  printf 'Metadata-Version: 2.1\nName: delta-attn\nVersion: 0.1.0\n' > "$SITE/delta_attn-0.1.0.dist-info/METADATA"
  printf '[vllm.general_plugins]\ndelta_attn = delta_attn.vllm:register\n' \
    > "$SITE/delta_attn-0.1.0.dist-info/entry_points.txt"
  touch "$SITE/.delta-vllm-0.25.1"
  echo "installed the wheels into $SITE in $(( $(date +%s) - T0 )) s"
fi
export PYTHONPATH="src:$SITE"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
command -v cc >/dev/null || echo "warning: no C compiler here (Triton needs one for its launchers)"
if ! $PY -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"; then
  echo "BLOCKED: vLLM 0.25.1 does not import here (error above)"; exit 4
fi
$PY -c "from importlib.metadata import entry_points as e; print('vllm.general_plugins:', [x.value for x in e(group='vllm.general_plugins')])"

# ---- the parts ---------------------------------------------------------------------------------------------------
run_part() {  # name, seconds, command...
  local name=$1 secs=$2; shift 2
  echo "== $name ($secs s) =="
  timeout --kill-after=10 "$secs" "$@" 2>&1 | tee "$OUT/vllm_$name.log" | grep -v "^INFO\|^(EngineCore" | tail -60
  echo "== $name: exit ${PIPESTATUS[0]} after $(( $(date +%s) - T0 )) s =="
}
NEEDLES_TIME=0
if [[ " $PARTS " == *" needles "* ]] && [ -f /tmp/m/model.gguf ]; then NEEDLES_TIME=280; fi
if [[ " $PARTS " == *" layer "* ]]; then
  run_part layer 150 $PY -m delta_attn.vllm.check layer --out "$OUT"
fi
if [[ " $PARTS " == *" bench "* ]]; then
  budget=$(( $(left) - NEEDLES_TIME - 15 ))
  if [ "$budget" -ge 120 ]; then
    run_part bench "$budget" $PY -m delta_attn.vllm.check bench --out "$OUT" --limit $(( budget - 15 )) \
      --lengths "${LENGTHS:-32K,128K}" --runs "${RUNS:-flash:default,delta:default,flash:one,delta:one}" \
      ${COMPILE:+--compile}
  else
    echo "bench: skipped ($budget s left; run PARTS=bench)"
  fi
fi
if [[ " $PARTS " == *" needles "* ]]; then
  budget=$(( $(left) - 15 ))
  if [ ! -f /tmp/m/model.gguf ]; then
    echo "needles: skipped (no /tmp/m/model.gguf)"
  elif [ "$budget" -lt 240 ]; then
    echo "needles: skipped ($budget s left; run PARTS=needles)"
  else
    run_part needles "$budget" $PY -m delta_attn.vllm.check needles --out "$OUT" --limit $(( budget - 15 ))
  fi
fi
echo
PYTHONPATH="src:$SITE" $PY -m delta_attn.vllm.check table --out "$OUT"
echo "total $(( $(date +%s) - T0 )) s"
