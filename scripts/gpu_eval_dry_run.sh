#!/usr/bin/env bash
# CPU dry run of a scripts/gpu_eval.sh part: the same commands at tiny sizes on the bundled SmolLM2
# (no GPU, no model file, no checksum). Usage: scripts/gpu_eval_dry_run.sh F [OUT]   (~5-8 min on 2 cores)
# Uses the python3 on PATH (put the project's venv first); the texts from ~/.cache/delta-attn/texts.
set -euo pipefail
PART=${1:?usage: scripts/gpu_eval_dry_run.sh PART [OUT]}
export NO_GPU=1 OUT=${2:-/tmp/gpu_eval_dry_$PART} PREV=${PREV:-/nonexistent} BACKEND=${BACKEND:-reference}
export TEXTS=${TEXTS:-$HOME/.cache/delta-attn/texts} LIMIT=${LIMIT:-1200}
export SAMPLES=${SAMPLES:-1} NEEDLE_SAMPLES=${NEEDLE_SAMPLES:-1} F_LEN=${F_LEN:-1024} LENGTHS=${LENGTHS:-1024}
export TASKS=${TASKS:-niah_single_1} PPL_LEN=${PPL_LEN:-1024} AN_LEN=${AN_LEN:-1024} PPL_DOCS=${PPL_DOCS:-1}
exec "$(dirname "$0")/gpu_eval.sh" "$PART"
