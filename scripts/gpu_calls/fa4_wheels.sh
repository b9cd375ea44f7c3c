# Sourced by the FA4 call scripts: FlashAttention 4 and its CuTe-DSL wheels from the git-ignored .fa00/.fa01 into
# /tmp/site, and the PYTHONPATH that finds them. The wheels travel in two calls (each carry ≤ 64 MiB): a first call
# `mkdir -p /tmp/w && cp .fa00/* /tmp/w/` (carry .fa00), then the script that sources this (carry .fa01), which
# joins the split CUTLASS-DSL wheel. A warm machine that already has /tmp/site/flash_attn installs nothing.
mkdir -p /tmp/w "$OUT" && cp .fa01/* /tmp/w/ 2>/dev/null
(cd /tmp/w && [ -f cu13.part.aa ] && [ -f cu13.part.ab ] \
  && cat cu13.part.aa cu13.part.ab > nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl \
  && rm -f cu13.part.*)
[ -d /tmp/site/flash_attn ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site /tmp/w/*.whl 2>&1 | tail -3
export PYTHONPATH=src:/tmp/site/nvidia_cutlass_dsl/dsl_packages:/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
