#!/usr/bin/env bash
# The last call of scripts/gpu_model_parts.sh's sequence, on the GPU machine: assemble /tmp/m/model.gguf from
# the N parts the earlier calls copied to /tmp/m, check its sha256, install the carried gguf wheel into
# /tmp/site. Then `export PYTHONPATH=src:/tmp/site` and run with `--model /tmp/m/model.gguf`.
#
#   bash scripts/gpu_model_assemble.sh N SHA256
#
# Exit status 3 with "went cold" when a part is missing (the machine was given back between calls: start over).
# Unless WARM=0, it then de-quantises the model once into ~/.cache/delta-attn (~1 min for the 1.5B model), so
# that several jobs started side by side afterwards all load the cached copy in seconds instead of each
# de-quantising it at the same time.
set -euo pipefail
N=${1:?usage: scripts/gpu_model_assemble.sh N_PARTS SHA256}
SHA=${2:?usage: scripts/gpu_model_assemble.sh N_PARTS SHA256}
M=${M:-/tmp/m}  # the folder the part calls copy into (M=... for a dry run elsewhere)
if [ -f "$M/model.gguf.ok" ] && [ "$(cat "$M/model.gguf.ok")" = "$SHA" ] && [ -f "$M/model.gguf" ]; then
    echo "model: $M/model.gguf (assembled and checked earlier on this machine)"
else
    have=$(ls "$M"/part.[0-9][0-9] 2> /dev/null | wc -l)
    if [ "$have" -ne "$N" ]; then
        echo "model: $have of $N parts in $M: the machine went cold between calls (or a call was skipped); start over from call 1" >&2
        exit 3
    fi
    cat "$M"/part.[0-9][0-9] > "$M/model.gguf.tmp"
    got=$(sha256sum "$M/model.gguf.tmp" | cut -d' ' -f1)
    if [ "$got" != "$SHA" ]; then
        echo "model: sha256 $got of the assembled file, expected $SHA: a part is damaged; start over" >&2
        rm -f "$M/model.gguf.tmp"
        exit 4
    fi
    mv "$M/model.gguf.tmp" "$M/model.gguf" && echo "$SHA" > "$M/model.gguf.ok"
    rm -f "$M"/part.[0-9][0-9]
    echo "model: $M/model.gguf, $(stat -c %s "$M/model.gguf") bytes, sha256 $SHA (checked)"
fi
if ! python3 -c "import gguf" 2> /dev/null && ! PYTHONPATH=/tmp/site python3 -c "import gguf" 2> /dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
fi
echo "gguf: $(PYTHONPATH=/tmp/site python3 -c 'import gguf, importlib.metadata as m; print(m.version("gguf"))')"
if [ "${WARM:-1}" = 1 ] && [ "$(cat "$M/model.gguf.warm" 2> /dev/null)" != "$SHA" ]; then
    t0=$(date +%s)
    PYTHONPATH=src:/tmp/site${PYTHONPATH:+:$PYTHONPATH} python3 -c "from delta_attn.models import load_cpu_model, model_info
info = model_info('$M/model.gguf'); load_cpu_model('$M/model.gguf')
print(f'de-quantised copy cached: {info.model_id}, context {info.context_length}, {info.num_layers} layers')"
    echo "$SHA" > "$M/model.gguf.warm"
    echo "warm-up took $(( $(date +%s) - t0 )) s"
fi
