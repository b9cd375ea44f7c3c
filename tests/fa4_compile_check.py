"""Trace and compile backend="fa4"'s FA4 kernels for sm_90 without a GPU (FakeTensorMode; nothing launches).

Run by tests/test_fa4_compile.py in a subprocess, because FA4 reads the target architecture from the environment
at import time. Prints one "FA4COMPILE <name> ok" line per kernel."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from delta_attn.kernels import fa4

N, W = 4096, 32  # tokens; width of the (fake) tile lists
with FakeTensorMode(allow_non_fake_inputs=True):

    def empty(*shape, dtype=torch.bfloat16):
        return torch.empty(*shape, dtype=dtype, device="cuda")

    def lists(n_rows):
        tiles = n_rows // fa4.TILE[0]
        count, index = empty(1, 1, tiles, dtype=torch.int32), empty(1, 1, tiles, W, dtype=torch.int32)
        return count, index, count, index

    q, k, v = empty(1, N, 32, 128), empty(1, N, 8, 128), empty(1, N, 8, 128)
    given = empty(1, 32, N // 64 + 1, 128, dtype=torch.float32)  # λΔ per γ-block of 64, one carried block first
    add = fa4.BlockAdd(given, block0=0, gamma=64, row_end=N - 128)
    narrow = empty(1, N, 32, 72), empty(1, N, 8, 72), empty(1, N, 8, 72)
    narrow_add = fa4.BlockAdd(empty(1, 32, N // 64, 72, dtype=torch.float32), block0=0, gamma=64, row_end=N)
    packed = empty(1, N // 64 * 4, 8, 128)  # anchors of γ = 64, the 4 query heads of each KV head as rows
    kernels = {  # name: (call, the output's (B, rows, heads))
        "native-window": (lambda: fa4._run(q, k, v, lists(N), 0.088, False, window_left=2047), (1, N, 32)),
        "native-window-block-add": (
            lambda: fa4._run(q, k, v, lists(N), 0.088, False, window_left=2047, add=add),
            (1, N, 32),
        ),
        "native-window-block-add-padded-head-dim": (  # head dim 72: FA4 computes 80 columns, the add reads 72
            lambda: fa4._run(*narrow, lists(N), 0.088, False, window_left=2047, add=narrow_add),
            (1, N, 32),
        ),
        "sink-window-mask_mod-block-add": (
            lambda: fa4._run(
                q,
                k,
                v,
                lists(N),
                0.088,
                False,
                mask_mod=fa4._sink_window_mask(64, 2048),
                scalars=fa4._int32s(0),
                add=add,
            ),
            (1, N, 32),
        ),
        "sink-window-mask_mod": (
            lambda: fa4._run(
                q, k, v, lists(N), 0.088, False, mask_mod=fa4._sink_window_mask(64, 2048), scalars=fa4._int32s(0)
            ),
            (1, N, 32),
        ),
        "packed-anchors": (
            lambda: fa4._run(
                packed,
                k,
                v,
                lists(packed.shape[1]),
                0.088,
                False,
                mask_mod=fa4._strided_causal_mask(4),
                scalars=fa4._int32s(0, 64),
            ),
            (1, packed.shape[1], 8),
        ),
    }
    for name, (run, shape) in kernels.items():
        out = run()
        assert tuple(out.shape[:3]) == shape, (name, out.shape)
        print(f"FA4COMPILE {name} ok", flush=True)
    private = fa4._hooks().cache
    assert len(private.cache) == 4, "the kernels traced under the wrappers must land in their own compile cache"
    print("FA4COMPILE private-cache ok", flush=True)
