#!/usr/bin/env bash
# Put a model file on the GPU machine: cut it into parts the `run` tool can carry, and print the calls.
#
#   scripts/gpu_model_parts.sh [MODEL]     MODEL: a name (delta-attn models list; default qwen2.5-coder-1.5b),
#                                          or a .gguf file
#
# The device tool carries at most 64 MiB per call *including the working tree* (tracked and untracked, not
# ignored: 5.5 MB on 2026-12-07), but files under /tmp survive between calls while the machine is warm. So the
# file is split into parts of at most PART_BYTES (default 56,000,000: room for a tree of up to ~10 MB; the
# script refuses a size that would not fit beside today's tree), each in its own git-ignored
# folder (.p00/, .p01/, ...; one `/.p[0-9][0-9]/` line in .git/info/exclude; the last also holds parts.count);
# one call per part copies it to /tmp/m, back to back, and one more call (carrying .whl and what the work needs,
# no part) assembles /tmp/m/model.gguf, checks its sha256, installs the `gguf` wheel the GPU image lacks (from
# .whl/, the version this venv uses) and runs the real work with `--model /tmp/m/model.gguf`. A warm call that
# only copies one part costs ~3.5 s of device time: the 1.1 GB Qwen2.5-Coder-1.5B file is 20 calls, about 75 s.
# If the work call says a part is missing, the machine went
# cold between calls: start again from call 1.
#
# Runs from the repository root, with the venv's python on PATH or in .venv/ (PYTHON=... to choose).
set -euo pipefail
MODEL=${1:-qwen2.5-coder-1.5b}
PART_BYTES=${PART_BYTES:-56000000}
TREE_BYTES=$(git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2> /dev/null | awk '{s += $1} END {print s + 0}')
if [ $((TREE_BYTES + PART_BYTES + 1048576)) -gt 67108864 ]; then
    echo "gpu_model_parts.sh: a part of $PART_BYTES bytes beside the working tree's $TREE_BYTES bytes exceeds the" \
        "64 MiB a call carries (1 MiB margin): set a smaller PART_BYTES" >&2
    exit 2
fi
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}

# the file and its sha256 (remembered by delta_attn.models: hashed once per file)
read -r FILE SHA < <("$PYTHON" - "$MODEL" <<'EOF'
import sys
from delta_attn import models
try:
    ref = models.resolve(sys.argv[1])
except models.ModelMissingError as exc:
    sys.exit(f"gpu_model_parts.sh: {exc}")
if not ref.is_gguf:
    sys.exit(f"gpu_model_parts.sh: {ref.path} is a folder; give a .gguf file or a named model")
print(ref.path, models.file_sha256(ref.path))
EOF
)
SIZE=$(stat -c %s "$FILE")

# the parts, each in its own git-ignored folder (old ones removed first: a smaller file has fewer parts)
EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")" && touch "$EXCLUDE"
for line in '/.p[0-9][0-9]/' '/.whl/'; do grep -qxF "$line" "$EXCLUDE" || echo "$line" >> "$EXCLUDE"; done
rm -rf .p[0-9][0-9]
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
split -b "$PART_BYTES" -d -a 2 "$FILE" "$TMP/part."
PARTS=()
for f in "$TMP"/part.*; do
    n=${f##*.}
    mkdir -p ".p$n" && mv "$f" ".p$n/"
    PARTS+=(".p$n")
done
N=${#PARTS[@]}
echo "$N" > "${PARTS[$((N - 1))]}/parts.count"  # rides with the last part: the GPU side checks the count with it

# the gguf wheel, the version this venv's transformers reads GGUF files with
GGUF_VERSION=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('gguf'))")
if ! ls .whl/gguf-"$GGUF_VERSION"-*.whl > /dev/null 2>&1; then
    "$PYTHON" -m pip download -q --no-deps -d .whl "gguf==$GGUF_VERSION"
fi
[ -n "$(git status --porcelain --ignored=no -- .p00 .whl 2>/dev/null)" ] && echo "warning: .p00/.whl are not ignored by git"

cat <<EOF
$FILE
  $SIZE bytes, sha256 $SHA
  -> $N parts of <= $PART_BYTES bytes in ${PARTS[0]}/ ... ${PARTS[$((N - 1))]}/ (git-ignored), gguf $GGUF_VERSION in .whl/

Device calls, back to back while the machine is warm (run tool: carry, then command):
EOF
for ((i = 0; i < N; i++)); do
    printf '  %2d. carry ["%s"]\n      mkdir -p /tmp/m && cp %s/* /tmp/m/\n' $((i + 1)) "${PARTS[$i]}" "${PARTS[$i]}"
done
cat <<EOF
  $((N + 1)). carry [".whl", ...what your command needs, e.g. ".data", ".results"]   (no part: a part and the
      packed texts together would not fit the 64 MiB a call carries)
      bash scripts/gpu_model_assemble.sh $N $SHA \\
        && export PYTHONPATH=src:/tmp/site && python3 -m delta_attn.cli eval ruler --model /tmp/m/model.gguf ...

Later calls on the same warm machine skip the copies: bash scripts/gpu_model_assemble.sh $N $SHA finds
/tmp/m/model.gguf already checked. The first load de-quantises the GGUF (~1 min for the 1.5B model, on the
machine's CPU) and caches the result under ~/.cache/delta-attn; later loads on that machine take seconds.
EOF
