#!/usr/bin/env bash
# The RESULTS.md evaluation on one GPU, in parts that each fit one device call (< 9 min).
#
#   scripts/gpu_eval.sh A   core RULER: dense, sparse, recompute, delta (γ=64) on the streaming base
#                           (sink 64 + window 256), 13 tasks × 8K,4K,2K,1K × 50 samples     (~4-5 min)
#   scripts/gpu_eval.sh B   finishes A's leftovers, then perplexity (all methods incl. γ ablation and
#                           interpolation variants), the analyses, then the secondary RULER methods
#                           delta_g16, block (block 512), block+delta                       (~5-6 min)
#   scripts/gpu_eval.sh C   optional extras with whatever budget is left: RULER γ ablation and
#                           interpolation variants at 8K, vertical_slash ± Δ                 (~4 min)
#   scripts/gpu_eval.sh F   why the prompt format matters (issue 8): RULER niah_single_1 at 8K in 4 formats
#                           (default, @noheader, @hyphen, @noheader+hyphen) × dense, sparse, recompute,
#                           delta (+ delta_auto where that method spec exists) × 30 samples, then
#                           `eval needle` on 8 prompts of @noheader and of the default format  (~3-4 min)
#   scripts/gpu_eval.sh V   issue 8, the Δ variants on RULER at 8K: niah_single_1, niah_single_2,
#                           niah_multikey_1, vt × SAMPLES (default 30) × dense, sparse, recompute, delta,
#                           delta_auto, delta_autog, delta_l0.5, delta_x25 (sink 64 + window 256, γ 64)
#   scripts/gpu_eval.sh P   issue 8, continuation perplexity (the KV cache the prefill writes): the same
#                           methods at 8K, 4K, 2K, scoring the last M = 256 and 1024 tokens of PPL_DOCS windows
#   scripts/gpu_eval.sh M   issue 8, where Δ wins: `eval sweep` over window × γ (WINDOWS × GAMMAS, delta vs
#                           recompute, sparse per window, dense once) at 8K on the 4 tasks of V and
#                           continuation ppl (M = CONT); SAMPLES sized to LIMIT; the window-256 row first
#   Running a part again resumes it (records already in $OUT or $PREV are skipped).
#
# Runs from the repository root with the package NOT installed (PYTHONPATH=src). Environment:
#   OUT     where results go (default: $OUT, else ./out); at most 7 files per part
#   PREV    earlier results to resume from / not redo (default .results, a folder the caller carries)
#   GGUF    the model file (default /tmp/m/model.gguf; assembled from /tmp/m/part.00 + .mB/part.01 if missing)
#   TEXTS   the packed public-domain texts (default .data/texts, made by `delta-attn eval pack-texts`)
#   LIMIT   seconds this part may take in total (default 500; a batch in flight may overrun it by ~30 s)
#   BACKEND delta_attention backend: auto (Triton on CUDA) | reference | triton (default auto)
#   SAMPLES samples per task and length (default 50); LENGTHS (default 8192,4096,2048,1024);
#   TASKS (default all); PPL_LEN / AN_LEN perplexity / analysis length (default 8192); PPL_DOCS (default
#   29): smaller values make a dry run on a CPU possible
#   Part F: SAMPLES (default 30 there), F_LEN (default 8192), NEEDLE_SAMPLES (default 8); NO_GPU=1 skips the
#   GPU and model-file checks (the CPU dry run: scripts/gpu_eval_dry_run.sh F)
#   Parts V/P/M: LENGTHS defaults to 8192 (V, M: the first length is used) and 8192,4096,2048 (P);
#   CONTS (P, default 256,1024); WINDOWS (default 128,256,512,1024), GAMMAS (default 8,16,32,64), CONT
#   (default 1024), SWEEP_DOCS (default 8) for M; their CPU dry run: scripts/gpu_eval_dry_run.sh V|P|M
set -euo pipefail
PART=${1:?usage: scripts/gpu_eval.sh A|B|C|F|V|P|M}
SAMPLES_GIVEN=${SAMPLES:-}
T0=$(date +%s)
OUT=${OUT:-./out}
PREV=${PREV:-.results}
GGUF=${GGUF:-/tmp/m/model.gguf}
TEXTS=${TEXTS:-.data/texts}
LIMIT=${LIMIT:-500}
BACKEND=${BACKEND:-auto}
case "$PART" in
  V) SAMPLES=${SAMPLES:-30}; LENGTHS=${LENGTHS:-8192} ;;
  P) LENGTHS=${LENGTHS:-8192,4096,2048} ;;
  M) SAMPLES=${SAMPLES:-$(( (LIMIT - 120) / 25 > 4 ? (LIMIT - 120) / 25 : 4 ))}; LENGTHS=${LENGTHS:-8192} ;;
esac
SAMPLES=${SAMPLES:-50}
LENGTHS=${LENGTHS:-8192,4096,2048,1024}
TASKS=${TASKS:-all}
ISSUE8_TASKS=niah_single_1,niah_single_2,niah_multikey_1,vt
VARIANTS=dense,sparse,recompute,delta,delta_auto,delta_autog,delta_l0.5,delta_x25
PPL_LEN=${PPL_LEN:-8192}
AN_LEN=${AN_LEN:-8192}
mkdir -p "$OUT"
LOG="$OUT/gpu_eval_$PART.log"
exec > >(tee -a "$LOG") 2>&1

export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
if ! python3 -c "import gguf" 2>/dev/null; then
  if ls .whl/gguf-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    echo "the 'gguf' package is missing: carry its wheel in .whl/ (pip download --no-deps -d .whl gguf==0.19.0)"; exit 2
  fi
fi
if [ -n "${NO_GPU:-}" ]; then
  :  # CPU dry run: the bundled model (GGUF empty) or the given file, no checksum
elif [ ! -f "$GGUF" ]; then
  if [ -f /tmp/m/part.00 ] && [ -f .mB/part.01 ]; then
    cat /tmp/m/part.00 .mB/part.01 > "$GGUF"
  else
    echo "model file $GGUF missing (and no /tmp/m/part.00 + .mB/part.01 to build it): redo the model transfer"; exit 2
  fi
fi
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  # SmolLM2-135M-Instruct.Q4_1.gguf
if [ -z "${NO_GPU:-}" ] && [ "$(sha256sum "$GGUF" | cut -d' ' -f1)" != "$SHA" ]; then
  echo "model file $GGUF has the wrong sha256 (a part is missing or stale): redo the model transfer"; rm -f "$GGUF"; exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
[ -d "$TEXTS" ] || { echo "texts folder $TEXTS missing: carry .data/texts (delta-attn eval pack-texts)"; exit 2; }

left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
FAILED=""
fail() { echo "!!! step $1 failed; continuing with the next step"; FAILED="$FAILED $1"; }
RESUME=(--resume-from)
[ -e "$PREV" ] && RESUME+=("$PREV")
GGUF_OPT=(--gguf "$GGUF")
if [ -n "${NO_GPU:-}" ] && [ ! -f "$GGUF" ]; then GGUF_OPT=(); fi  # dry run: the bundled model
COMMON=("${GGUF_OPT[@]}" --texts-dir "$TEXTS" --backend "$BACKEND" --base streaming --sink 64 --window 256
        --gamma 64 --block-size 512 --vertical-size 512 --slash-size 512)
RULER=(python3 -m delta_attn.cli eval ruler --tasks "$TASKS" --samples "$SAMPLES" --no-summary "${COMMON[@]}")
CORE=dense,sparse,recompute,delta
SECONDARY=delta_g16,block,block+delta

case "$PART" in
  A)
    "${RULER[@]}" --lengths "$LENGTHS" --methods "$CORE" --out "$OUT" "${RESUME[@]}" --time-limit "$(left)" || fail A
    ;;
  B)
    # 1. whatever part A left undone (its cells are cheap: the low lengths)
    "${RULER[@]}" --lengths "$LENGTHS" --methods "$CORE" --out "$OUT" "${RESUME[@]}" \
      --time-limit "$(( $(left) - 200 ))" || fail B1
    # 2. perplexity, 29 public-domain works at 8K (bucketed 0-1K, 1-2K, 2-4K, 4-8K)
    python3 -m delta_attn.cli eval ppl --lengths "$PPL_LEN" --docs "${PPL_DOCS:-29}" --batch-size 4 "${COMMON[@]}" --out "$OUT" \
      "${RESUME[@]}" --time-limit "$(( $(left) - 150 ))" --no-summary \
      --methods dense,sparse,recompute,delta,delta_g16,delta_g8,delta_g32,delta_g128,delta_g256,delta_linear,delta_ema0.5,delta_ema0.75,delta_ema0.95,delta_abg,block,block+delta,vs,vs+delta \
      || fail B2
    # 3. analyses on 4 prompts of 8K (niah_single_2, essay haystack)
    python3 -m delta_attn.cli eval analyze --task niah_single_2 --length "$AN_LEN" --samples 4 "${COMMON[@]}" \
      --methods sparse,recompute,delta,delta_g16,block,block+delta --out "$OUT" --no-summary "${RESUME[@]}" \
      --time-limit "$(( $(left) - 90 ))" || fail B3
    # 4. secondary RULER methods with the time that is left
    "${RULER[@]}" --lengths "$LENGTHS" --methods "$SECONDARY" --out "$OUT" "${RESUME[@]}" \
      --time-limit "$(left)" || fail B4
    ;;
  C)
    "${RULER[@]}" --lengths "$LENGTHS" --methods "$CORE,$SECONDARY" --out "$OUT" "${RESUME[@]}" \
      --time-limit "$(( $(left) - 240 ))" || fail C1
    "${RULER[@]}" --lengths "${LENGTHS%%,*}" --methods delta_g32,delta_g128,delta_ema0.75,delta_linear,vs,vs+delta \
      --out "$OUT" "${RESUME[@]}" --time-limit "$(left)" || fail C2
    ;;
  F)
    # RULER's instruction header vs none, RULER's adjective-noun keys vs noun-noun keys (docs/reproduce.md)
    F_LEN=${F_LEN:-8192}
    F_TASKS=niah_single_1,niah_single_1@noheader,niah_single_1@hyphen,niah_single_1@noheader+hyphen
    F_METHODS=$CORE
    # delta_auto (Δ scaled by a λ fitted from the anchors) only where this checkout has that method spec and
    # the operator runs it (a tiny call on random tensors)
    if python3 -c "import torch; from delta_attn.ops import delta_attention; from delta_attn.methods import \
parse_method; c = parse_method('delta_auto').config.replace(window=32, sink=4, gamma=8, backend='reference'); \
q = torch.randn(1, 2, 200, 16); delta_attention(q, q, q, c)" 2>/dev/null; then
      F_METHODS=$F_METHODS,delta_auto
    fi
    python3 -m delta_attn.cli eval ruler --tasks "$F_TASKS" --samples "${SAMPLES_GIVEN:-30}" --lengths "$F_LEN" \
      --methods "$F_METHODS" --no-summary "${COMMON[@]}" --out "$OUT" "${RESUME[@]}" \
      --time-limit "$(( $(left) - 150 ))" || fail F1
    # needle analyses (one needle.json per folder); the first leaves ~60 s for the second
    NEEDLE=(python3 -m delta_attn.cli eval needle --length "$F_LEN" --samples "${NEEDLE_SAMPLES:-8}"
            --methods "$F_METHODS" --no-summary "${COMMON[@]}")
    "${NEEDLE[@]}" --task niah_single_1@noheader --out "$OUT/needle_noheader" --time-limit "$(( $(left) - 60 ))" \
      || fail F-needle-noheader
    "${NEEDLE[@]}" --task niah_single_1 --out "$OUT/needle_default" --time-limit "$(left)" || fail F-needle-default
    ;;
  V)
    # the variants raise NotImplementedError until the operator implements them (logged; a rerun resumes)
    python3 -m delta_attn.cli eval ruler --tasks "$ISSUE8_TASKS" --samples "$SAMPLES" --no-summary "${COMMON[@]}" \
      --lengths "$LENGTHS" --methods "$VARIANTS" --out "$OUT" "${RESUME[@]}" --time-limit "$(left)" || fail V
    ;;
  P)
    python3 -m delta_attn.cli eval ppl --lengths "$LENGTHS" --continuation "${CONTS:-256,1024}" \
      --docs "${PPL_DOCS:-29}" --batch-size 4 "${COMMON[@]}" --methods "$VARIANTS" --out "$OUT" "${RESUME[@]}" \
      --time-limit "$(left)" --no-summary || fail P
    ;;
  M)
    # cells in order: dense, the window-256 row (sparse, then every γ), then the nearest other windows;
    # sweep.md + heat maps when matplotlib is there (else `eval report --plots-dir` draws them later)
    SUMMARY=(); python3 -c "import matplotlib" 2>/dev/null || SUMMARY=(--no-summary)
    python3 -m delta_attn.cli eval sweep --windows "${WINDOWS:-128,256,512,1024}" --gammas "${GAMMAS:-8,16,32,64}" \
      --first-window 256 --length "${LENGTHS%%,*}" --tasks "$ISSUE8_TASKS" --samples "$SAMPLES" \
      --continuation "${CONT:-1024}" --ppl-docs "${SWEEP_DOCS:-8}" --methods delta,recompute --no-progress \
      "${SUMMARY[@]}" "${COMMON[@]}" --out "$OUT" "${RESUME[@]}" --time-limit "$(left)" || fail M
    ;;
  *) echo "unknown part $PART (A, B, C, F, V, P or M)"; exit 2 ;;
esac
echo "part $PART done in $(( $(date +%s) - T0 ))s; failed steps:${FAILED:- none}; files in $OUT:"; ls -la "$OUT"
