#!/usr/bin/env bash
# Issue 16, ninth session (2026-12-07): FlashAttention 4 (CuTe DSL, sm_90 warp-specialised kernels) for Δ's two
# passes vs this package's Triton kernels, one Llama-3-8B layer at 128K and 1M (scripts/gpu_calls/fa4_probe.py).
# The wheels travel in two git-ignored parts: a first call `mkdir -p /tmp/w && cp .fa00/* /tmp/w/` (carry .fa00),
# then this script (carry .fa01) joins the split CUTLASS-DSL wheel and installs everything into /tmp/site.
set -uo pipefail
source scripts/gpu_calls/fa4_wheels.sh  # the FA4 wheels into /tmp/site, PYTHONPATH
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.total --format=csv,noheader
timeout ${PROBE_TIMEOUT:-420} python3 scripts/gpu_calls/fa4_probe.py "$OUT" ${LENGTHS:-131072,1048576} 2>&1 | tee "$OUT/fa4_probe.log" | grep -v "Warning\|exe_args"
