"""No per-length compilation: the kernels' compile keys do not grow with the prompt length.

Triton compiles one kernel per distinct specialisation of its arguments (types, 16-byte alignment of
pointers, divisibility by 16 and ``== 1`` of integers, constexprs, launch options). Any of those that
depends on the prompt length makes the first call at a new length compile again (about a second on
an H100 per kernel). :func:`delta_attn.kernels.interpret.record_specialisations` computes those keys
on CPU with Triton's own binder; here a warm-up at one length must have produced every key that
calls at several other lengths (fresh random lengths, one-shot and chunked into a strided buffer
like ``PreallocatedCache``) use.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from interpreted import run_interpreted

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: the interpreter is CPU-only")

PROBE = r"""
import json, sys, torch
from delta_attn.kernels import triton_prefill
from delta_attn.kernels import anchor_sparse as asp, delta_scale as ds, dense_rows as dr, sparse as sp, scan as sc
from delta_attn.kernels.interpret import record_specialisations
from delta_attn.bench.check import TINY_TILES
from delta_attn.backend import SequenceState
from delta_attn.config import DeltaConfig

seen = record_specialisations({
    "dense_rows": dr._dense_rows_kernel, "merge": dr._merge_kernel, "sparse": sp._sparse_kernel,
    "anchor_sparse": asp._anchor_sparse_kernel,
    "lambda_terms": ds._lambda_terms_kernel, "lambda_scale": ds._lambda_scale_kernel,
    "scan_states": sc._segment_states, "scan_apply": sc._segment_apply,
})
lengths = json.loads(sys.argv[1])
configs = json.loads(sys.argv[2])
chunk = int(sys.argv[3])
tiles = dict(TINY_TILES, **json.loads(sys.argv[4]))
counts = []
for n in lengths:
    for extra in configs:
        cfg = DeltaConfig(sink=4, window=40, gamma=8, tail=8, **extra)
        q = torch.randn(1, 4, n, 32)
        kb, vb = torch.randn(1, 2, n + 50, 32), torch.randn(1, 2, n + 50, 32)  # buffers with room, as the cache
        k, v = kb[:, :, :n], vb[:, :, :n]
        triton_prefill(q, k, v, cfg, scale=32**-0.5, prompt_len=n, kernel_configs=tiles)
        state = SequenceState()  # chunked: every chunk sees strided K/V views of the buffer
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            triton_prefill(q[:, :, s:e], k[:, :, :e], v[:, :, :e], cfg, scale=32**-0.5, prompt_len=n, state=state,
                           kernel_configs=tiles)
    counts.append({name: sorted(map(str, keys)) for name, keys in seen.items()})
print("COUNTS " + json.dumps(counts))
"""


def _keys_per_length(lengths, configs, chunk, tiles=None):
    args = [json.dumps(lengths), json.dumps(configs), str(chunk), json.dumps(tiles or {})]
    return run_interpreted(["-c", PROBE, *args], "COUNTS ")


TMA = {"dense": {"USE_TMA": True}, "sparse": {"USE_TMA": True}}  # host descriptors: 2-D contiguous, 4-D strided


@pytest.mark.parametrize(
    "configs, tma, warm_range",
    [
        ([{}], False, (300, 420)),  # Δ (fused repeat)
        ([{"delta_scale": 0.5}, {"delta_scale": "auto"}], False, (300, 420)),  # λ variants
        ([{}, {"delta_scale": "auto"}], True, (300, 420)),  # through TMA descriptors, as on the GPU
        ([{}], False, (40, 90)),  # a warm-up too short to split the dense rows: the merge kernel compiles anyway
    ],
    ids=["delta", "lambda", "tma", "short-warmup"],
)
def test_no_new_compile_key_at_a_new_length(configs, tma, warm_range):
    from delta_attn.bench.check import TINY_TILES

    tiles = {name: dict(cfg, **TMA[name]) for name, cfg in TINY_TILES.items()} if tma else None
    rng = random.Random()
    warm = rng.randrange(*warm_range)
    later = sorted(rng.sample(range(421, 700), 3))
    per_length = _keys_per_length([warm, *later], configs, chunk=rng.randrange(97, 160), tiles=tiles)
    first = per_length[0]
    assert first["dense_rows"] and first["sparse"] and first["merge"], first  # the warm-up launched them
    if any(c.get("delta_scale") == "auto" for c in configs):  # and λ = auto's anchor and λ kernels
        assert first["anchor_sparse"] and first["lambda_terms"] and first["lambda_scale"], first
        # one variant of each λ kernel serves one-shot calls and every chunk (a carried block, carried sums,
        # covered anchors, a chunk without an anchor): what a call has is a runtime argument, not a constexpr
        assert len(first["lambda_terms"]) == 1 and len(first["lambda_scale"]) == 1, first
    for n, keys in zip(later, per_length[1:]):
        grown = {name: len(keys[name]) - len(first[name]) for name in keys if keys[name] != first[name]}
        assert not grown, f"length {n} (warm-up at {warm}) compiles new kernel variants: {grown}"
