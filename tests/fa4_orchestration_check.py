"""Run by tests/test_fa4_tiles.py under Triton's interpreter: :func:`delta_attn.kernels.fa4_prefill.fa4_prefill` with
float64 stand-ins for FA4's two passes, against :func:`delta_attn.reference.reference_prefill` in float64, one-shot
and chunked. Prints ``FA4CHECK {json}``: per case the max abs errors against the float64 reference of fa4_prefill
and of the PyTorch reference computing in float32 (the project's rule: kernel error ≤ 2 × PyTorch's + 1e-6)."""

from __future__ import annotations

import json
import math
import sys

import torch

from delta_attn.kernels.interpret import enable

enable()

from delta_attn.bench.check import run_chunked  # noqa: E402
from delta_attn.config import DeltaConfig  # noqa: E402
from delta_attn.kernels.fa4_prefill import Passes, fa4_prefill  # noqa: E402
from delta_attn.reference import reference_prefill  # noqa: E402


def _attend(q, k, v, pos, keep, scale, cast=True):
    """FA4 layout: q (B, R, Hq, D) rows at absolute positions pos; keep(p, j) → bool. Float64 math, q's dtype out
    (float64 with ``cast=False``)."""
    g = q.shape[2] // k.shape[2]
    kk, vv = (t.double().repeat_interleave(g, dim=2) for t in (k, v))
    s = torch.einsum("brhd,bnhd->bhrn", q.double(), kk) * scale
    j = torch.arange(k.shape[1])
    s = s.masked_fill(~keep(pos[:, None], j[None]), float("-inf"))
    out = torch.einsum("bhrn,bnhd->brhd", torch.softmax(s, -1), vv)
    return out.to(q.dtype) if cast else out


def sparse(q, k, v, *, sink, window, scale, add=None):
    """Õ; with ``add`` (a BlockAdd) the epilogue's Õ + x of FA4's wrapped kernel: row p < row_end gets
    given[:, :, (p − block0) // γ] before the one rounding to q's dtype."""
    pos = k.shape[1] - q.shape[1] + torch.arange(q.shape[1])
    out = _attend(q, k, v, pos, lambda p, j: (j <= p) & ((j < sink) | (p - j < window)), scale, cast=add is None)
    if add is not None:
        body = pos < add.row_end
        out[:, body] += add.given.double()[:, :, (pos[body] - add.block0) // add.gamma].transpose(1, 2)
        out = out.to(q.dtype)
    return out


def rows(q, k, v, *, start, step, scale):
    return _attend(q, k, v, start + step * torch.arange(q.shape[1]), lambda p, j: j <= p, scale)


def main(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    # the tail on the dense-rows kernel, interpreted; the Δ add after the sparse pass, or in its "epilogue"
    unfused = Passes(sparse=sparse, rows=rows, fused_add=False)
    fused = Passes(sparse=sparse, rows=rows, fused_add=True)
    cases = [  # (name, b, hq, hkv, d, n, config fields, chunks)
        ("delta", 2, 4, 1, 64, 203, {}, []),
        ("delta-chunked", 1, 4, 2, 80, 230, {}, [70, 45, 115]),
        ("lambda0.5", 1, 2, 2, 64, 190, dict(delta_scale=0.5), [100, 90]),
        ("auto-chunked", 2, 4, 1, 64, 250, dict(delta_scale="auto"), [64, 96, 90]),
        ("ema-chunked", 1, 4, 1, 64, 210, dict(interp="ema"), [77, 133]),
        ("sparse", 1, 4, 1, 64, 150, dict(mode="sparse"), []),
        ("recompute", 1, 4, 2, 64, 170, dict(mode="recompute"), [90, 80]),
        ("dense", 1, 4, 1, 64, 120, dict(mode="dense"), [50, 70]),
    ]
    fused_cases = {"delta", "delta-chunked", "lambda0.5", "auto-chunked"}  # the others never take the fused add
    cases += [(name + "/fused", *rest) for name, *rest in cases if name in fused_cases]
    auto_decay = ("auto-decay-chunked", 1, 8, 2, 128, 260, dict(delta_scale="auto-decay"), [100, 17, 143])
    cases += [auto_decay, (auto_decay[0] + "/fused", *auto_decay[1:])]
    out = {}
    for name, b, hq, hkv, d, n, fields, chunks in cases:
        config = DeltaConfig(sparse="streaming", sink=8, window=40, gamma=16, tail=16, **fields)
        q = torch.randn(b, n, hq, d, generator=gen).transpose(1, 2)  # a model's (B, N, H, D) memory
        k = torch.randn(b, n, hkv, d, generator=gen).transpose(1, 2)
        v = torch.randn(b, n, hkv, d, generator=gen).transpose(1, 2)
        kw = dict(scale=1 / math.sqrt(d), prompt_len=n)
        want = run_chunked(reference_prefill, q.double(), k.double(), v.double(), config, chunks, **kw)
        passes = fused if name.endswith("/fused") else unfused
        got = run_chunked(fa4_prefill, q, k, v, config, chunks, passes=passes, **kw)
        ref32 = run_chunked(reference_prefill, q, k, v, config, chunks, compute_dtype=torch.float32, **kw)
        out[name] = [float((got.double() - want).abs().max()), float((ref32.double() - want).abs().max())]
    print("FA4CHECK " + json.dumps(out))


if __name__ == "__main__":
    main(int(sys.argv[1]))
