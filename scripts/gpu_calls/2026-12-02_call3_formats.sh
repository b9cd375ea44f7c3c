#!/usr/bin/env bash
# GPU call 3: finish the prompt-format comparison (call 2 ran out of time after dense); .gpu/prevF holds
# call 2's F/ruler.jsonl (carried: `carry: [".mB", ".whl", ".data", ".gpu"]`), so the dense records are reused.
set -uo pipefail
export PYTHONPATH=src TOKENIZERS_PARALLELISM=false
[ -f /tmp/m/part.00 ] || { echo "NO /tmp/m/part.00"; exit 3; }
cat /tmp/m/part.00 .mB/part.01 > /tmp/m/model.gguf && sha256sum /tmp/m/model.gguf
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=src:/tmp/site
mkdir -p "$OUT/F2"
python3 -m delta_attn.cli eval ruler --lengths 8192 --samples 30 --no-summary \
  --tasks niah_single_1,niah_single_1@noheader,niah_single_1@hyphen,niah_single_1@noheader+hyphen \
  --methods dense,sparse,recompute,delta,delta_auto --gguf /tmp/m/model.gguf --texts-dir .data/texts \
  --base streaming --sink 64 --window 256 --gamma 64 --block-size 512 --vertical-size 512 --slash-size 512 \
  --out "$OUT/F2" --resume-from .gpu/prevF --time-limit "${L:-140}" > "$OUT/F2/run.log" 2>&1
tail -c 600 "$OUT/F2/run.log"; cd "$OUT" && tar czf F2.tgz F2 && rm -rf F2
