"""FlashAttention 4 path (kernels/fa4.py): the block-sparse tile lists against an enumerated mask, the in-place Δ
combination against its definition (CPU), and the FA4 passes themselves against a float64 oracle where the package
and an sm_90+ GPU are present."""

from __future__ import annotations

import math
import random

import pytest
import torch

from delta_attn.kernels import fa4


def _enumerated(n_q, n_k, tm, tn, sink, window, start, step, group=1):
    p = start + torch.arange(n_q) // group * step
    k = torch.arange(n_k)
    keep = (k[None] <= p[:, None]) & ((k[None] < sink) | (p[:, None] - k[None] < window))
    n_qt, n_kt = -(-n_q // tm), -(-n_k // tn)
    full = torch.zeros(n_qt, n_kt, dtype=torch.bool)
    partial = torch.zeros_like(full)
    for i in range(n_qt):
        for j in range(n_kt):
            tile = keep[i * tm : (i + 1) * tm, j * tn : (j + 1) * tn]
            full[i, j] = bool(tile.all())
            partial[i, j] = bool(tile.any()) and not full[i, j]
    return full, partial


def _check(n_q, n_k, tm, tn, sink, window, start, step, group=1):
    pc, pi, fc, fi = fa4.tile_lists(
        n_q, n_k, start=start, step=step, sink=sink, window=window, group=group, tile=(tm, tn)
    )
    full, partial = _enumerated(n_q, n_k, tm, tn, min(sink, n_k + 1), min(window, n_k + 1), start, step, group)
    assert pc.shape == fc.shape == (1, 1, full.shape[0])
    for i in range(full.shape[0]):
        assert fi[0, 0, i, : fc[0, 0, i]].tolist() == torch.nonzero(full[i]).flatten().tolist(), (i, "full")
        assert pi[0, 0, i, : pc[0, 0, i]].tolist() == torch.nonzero(partial[i]).flatten().tolist(), (i, "partial")


@pytest.mark.parametrize("tile", [(16, 16), (32, 16), (16, 32), (8, 8)])
def test_sink_window_lists_match_the_mask(seed, tile):
    rng = random.Random(seed)
    for _ in range(4):
        n_k = rng.randint(1, 400)
        n_q = rng.randint(1, n_k)  # the last n_q positions (a chunk continuing a cache)
        sink, window = rng.randint(0, 70), rng.randint(1, 120)
        _check(n_q, n_k, *tile, sink, window, n_k - n_q, 1)


@pytest.mark.parametrize("gamma", [1, 7, 16, 64])
def test_strided_causal_lists_match_the_mask(seed, gamma):
    rng = random.Random(seed)
    for _ in range(4):
        n_k = rng.randint(gamma, 700)
        start = rng.randint(0, gamma - 1)
        n_a = (n_k - start + gamma - 1) // gamma
        _check(n_a, n_k, 8, 16, 0, fa4._INF, start, gamma)


@pytest.mark.parametrize("group", [2, 3, 4, 8])
def test_packed_gqa_lists_match_the_mask(seed, group):
    """Anchor rows with a GQA group's heads interleaved (row j at start + (j // group)·γ), as anchor_rows packs
    them; a tile of 8 rows then holds 8/group anchors, or straddles anchors when group does not divide it."""
    rng = random.Random(seed)
    for _ in range(4):
        gamma = rng.choice([1, 7, 16, 64])
        n_k = rng.randint(gamma, 700)
        start = rng.randint(0, gamma - 1)
        n_a = (n_k - start + gamma - 1) // gamma
        _check(n_a * group, n_k, 8, 16, 0, fa4._INF, start, gamma, group)


def test_lists_reject_an_empty_window():
    with pytest.raises(ValueError, match="window"):
        fa4.tile_lists(10, 10, sink=0, window=0, tile=(4, 4))
    with pytest.raises(ValueError, match="group"):
        fa4.tile_lists(10, 10, group=0, tile=(4, 4))


@pytest.mark.parametrize(
    "sink,window,native",
    [(0, 2048, True), (128, 2048, True), (256, 384, True), (64, 2048, False), (256, 383, False), (130, 999, False)],
)
def test_native_window_needs_tile_aligned_sinks_inside_the_window(monkeypatch, sink, window, native):
    """The native-window path is taken exactly when the sink is whole key tiles and sink + a query tile fits in the
    window (the condition the next test checks on enumerated masks), on sm_90 only."""
    monkeypatch.setattr(fa4, "_hooks", lambda: "the wrappers")
    assert fa4.native_window(sink, window) is native
    assert fa4.native_window(sink, window, "cpu") is False
    for major, expected in [(9, native), (10, False), (12, False)]:  # the wrapper patches FA4's sm_90 kernel only
        monkeypatch.setattr(fa4, "_major", lambda device, m=major: m)
        assert fa4.native_window(sink, window, "cuda") is expected, major
    monkeypatch.setattr(fa4, "_hooks", lambda: None)  # another FA4 release: always the mask_mod path
    assert fa4.native_window(sink, window) is False


def test_native_window_lists_never_leave_a_sink_key_to_the_window_mask(seed):
    """Where native_window's condition holds (sink a multiple of the key tile, sink + query tile ≤ window), every
    boundary (partial) tile keeps exactly the keys FA4's causal + local mask keeps — so running those on that mask
    and the full tiles unmasked gives the sink + window set. (With sink + query tile > window it does not: a query
    tile starting inside a sink tile leaves that tile partial while its later rows see sink keys past the window.)"""
    rng = random.Random(seed)
    for _ in range(8):
        tn, tm = rng.choice([8, 16]), rng.choice([8, 16, 32])
        sink = tn * rng.randint(0, 3)
        window = rng.randint(max(sink + tm, 1), 150)
        n_k = rng.randint(1, 400)
        n_q = rng.randint(1, n_k)
        start = n_k - n_q
        pc, pi, fc, fi = fa4.tile_lists(n_q, n_k, start=start, sink=sink, window=window, tile=(tm, tn))
        p = start + torch.arange(n_q)
        k = torch.arange(n_k)
        causal = k[None] <= p[:, None]
        keep = causal & ((k[None] < sink) | (p[:, None] - k[None] < window))
        native = causal & (p[:, None] - k[None] < window)  # FA4's local mask, window_size_left = window - 1
        got = torch.zeros_like(keep)
        for i in range(pc.shape[-1]):
            rows = slice(i * tm, (i + 1) * tm)
            for j in fi[0, 0, i, : fc[0, 0, i]].tolist():
                got[rows, j * tn : (j + 1) * tn] = True
            for j in pi[0, 0, i, : pc[0, 0, i]].tolist():
                got[rows, j * tn : (j + 1) * tn] = native[rows, j * tn : (j + 1) * tn]
        assert torch.equal(got, keep), (sink, window, n_q, n_k, tm, tn)


needs_fa4 = pytest.mark.skipif(fa4.available() is not None, reason=str(fa4.available()))


def _oracle(q, k, v, pos, keep, scale):
    g = q.shape[2] // k.shape[2]
    kk, vv = (t.double().repeat_interleave(g, dim=2) for t in (k, v))
    s = torch.einsum("brhd,bnhd->bhrn", q.double(), kk) * scale
    kidx = torch.arange(k.shape[1], device=q.device)
    s = s.masked_fill(~keep(pos[:, None], kidx[None]), float("-inf"))
    return torch.einsum("bhrn,bnhd->brhd", torch.softmax(s, -1), vv)


@needs_fa4
@pytest.mark.parametrize("hq,hkv,d", [(8, 8, 64), (8, 2, 128), (16, 2, 128), (4, 1, 80)])
def test_fa4_passes_match_float64(seed, hq, hkv, d):
    g = torch.Generator(device="cuda").manual_seed(seed)
    n, window, gamma = 3000, 700, 64
    q, k, v = (torch.randn(2, n, h, d, device="cuda", dtype=torch.bfloat16, generator=g) for h in (hq, hkv, hkv))
    scale = 1 / math.sqrt(d)
    pos = torch.arange(n, device="cuda")
    assert fa4.native_window(128, window, "cuda") and not fa4.native_window(64, window, "cuda")  # both run below
    for sink, native, n_q in [(64, None, n), (128, None, n), (128, False, n), (128, None, 1234), (0, None, 777)]:
        keep = lambda p, j: (j <= p) & ((j < sink) | (p - j < window))  # noqa: E731
        o = fa4.sparse_base(q[:, n - n_q :], k, v, sink=sink, window=window, scale=scale, native=native)
        ref = _oracle(q[:, n - n_q :], k, v, pos[n - n_q :], keep, scale)
        err = (o.double() - ref).abs().max()
        assert err <= 2 * (ref.bfloat16().double() - ref).abs().max() + 1e-3, (sink, native, n_q, err)
    start = 5
    qa = q[:, start::gamma]
    aref = _oracle(qa, k, v, start + gamma * torch.arange(qa.shape[1], device="cuda"), lambda p, j: j <= p, scale)
    for pack_rows in (False, True):  # FA4's pack_gqa (the default) and the group packed as rows here
        dense = fa4.anchor_rows(qa, k, v, start=start, step=gamma, scale=scale, pack_rows=pack_rows)
        err = (dense.double() - aref).abs().max()
        assert err <= 2 * (aref.bfloat16().double() - aref).abs().max() + 1e-3, (pack_rows, err)


needs_wrapped = pytest.mark.skipif(
    fa4.available() is not None or not fa4.wrapped_kernel("cuda"),
    reason=str(fa4.available() or f"not an sm_90 GPU with flash-attn-4=={fa4.WRAPPED_FA4}"),
)


@needs_wrapped
@pytest.mark.parametrize("hq,hkv,d", [(8, 2, 128), (4, 4, 64), (4, 1, 72)])
def test_fa4_epilogue_adds_each_rows_block_term(seed, hq, hkv, d):
    """sparse_base(add=BlockAdd) stores Õ + given[(p − block0) // γ] for rows p < row_end and Õ from there on, on
    both Õ paths (native window, mask_mod), one-shot and as a chunk starting inside a γ-block, a head dim FA4 pads
    (72 → 80) included: against the float64 oracle plus the same terms, within the bf16 rounding rule."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    n, window, gamma = 2900, 700, 64
    q, k, v = (torch.randn(2, n, h, d, device="cuda", dtype=torch.bfloat16, generator=g) for h in (hq, hkv, hkv))
    scale = 1 / math.sqrt(d)
    pos = torch.arange(n, device="cuda")
    for sink, native, n_q, row_end in [(128, None, n, n - 100), (64, None, n, n), (128, False, 1234, n - 37)]:
        q0 = n - n_q
        block0 = q0 // gamma * gamma
        n_blocks = -(-(row_end - block0) // gamma)
        given = torch.randn(2, hq, n_blocks, d, device="cuda", generator=g)
        add = fa4.BlockAdd(given, block0=block0, gamma=gamma, row_end=row_end)
        o = fa4.sparse_base(q[:, q0:], k, v, sink=sink, window=window, scale=scale, native=native, add=add)
        keep = lambda p, j: (j <= p) & ((j < sink) | (p - j < window))  # noqa: E731
        ref = _oracle(q[:, q0:], k, v, pos[q0:], keep, scale)
        body = pos[q0:] < row_end
        ref[:, body] += given.double()[:, :, (pos[q0:][body] - block0) // gamma].transpose(1, 2)
        err = (o.double() - ref).abs().max()
        assert err <= 2 * (ref.bfloat16().double() - ref).abs().max() + 1e-3, (sink, native, n_q, row_end, err)
    with pytest.raises(ValueError, match="unpacked rows"):
        fa4.sparse_base(q, k, v, sink=128, window=window, pack_gqa=True, add=add)
    with pytest.raises(ValueError, match="BlockAdd covers"):
        short = fa4.BlockAdd(given[:, :, :3], block0=0, gamma=gamma, row_end=n)
        fa4.sparse_base(q, k, v, sink=128, window=window, add=short)


def test_fa4_orchestration_matches_the_reference(seed):
    """fa4_prefill's Δ, λ, filters, exact rows and chunk carry, with float64 stand-ins for FA4's passes (so only the
    orchestration and the Triton kernels it calls, interpreted, are under test) against the float64 reference; the
    "/fused" cases take the Δ add in the sparse pass (FA4's wrapped epilogue), with the anchors' raw Δ from the
    Triton anchor kernel and λ from the λ kernels."""
    from interpreted import run_interpreted

    errs = run_interpreted(["tests/fa4_orchestration_check.py", str(seed)], "FA4CHECK ")
    unfused = {"delta", "delta-chunked", "lambda0.5", "auto-chunked", "auto-decay-chunked", "ema-chunked", "sparse"}
    unfused |= {"recompute", "dense"}
    fused = {"delta/fused", "delta-chunked/fused", "lambda0.5/fused", "auto-chunked/fused", "auto-decay-chunked/fused"}
    assert set(errs) == unfused | fused
    bad = {k: (e, ref) for k, (e, ref) in errs.items() if not e <= 2 * ref + 1e-6}
    assert not bad, bad


@needs_fa4
@pytest.mark.parametrize(
    "fields,chunks,cache",
    [
        ({}, [], False),
        ({}, [1000, 1201, 800], False),
        ({}, [1000, 1201, 800], True),
        (dict(delta_scale="auto"), [1500, 1501], False),
        (dict(interp="ema"), [], False),
        (dict(sink=128), [1000, 1201, 800], True),
    ],
    ids=["delta", "delta-chunked", "delta-chunked-cache-views", "auto-chunked", "ema", "native-window-chunked"],
)
def test_fa4_prefill_on_the_gpu_matches_float64(seed, fields, chunks, cache):
    """backend='fa4' end to end on bf16 (B, N, H, D) memory, one-shot and chunked, against the float64 reference,
    by the rule of ``delta_attn.bench.check``: relative error ≤ 2 × that of the PyTorch reference computing in bf16,
    + 1e-6. FA4 returns Õ and D in bf16 (its output dtype is q's), where the Triton kernels keep them in float32
    registers; this test is what says whether that costs accuracy beyond the rule."""
    from delta_attn.bench.check import rel_err, run_chunked
    from delta_attn.config import DeltaConfig
    from delta_attn.kernels.fa4_prefill import Passes, fa4_prefill
    from delta_attn.reference import reference_prefill

    g = torch.Generator(device="cuda").manual_seed(seed)
    b, n, hq, hkv, d = 2, 3501, 8, 2, 128
    q, k, v = (
        torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
        for h in (hq, hkv, hkv)
    )
    if cache:  # K/V as views of a longer (B, Hkv, room, D) buffer, as the in-place cache hands them over
        room = n + 1000
        kb, vb = (torch.randn(b, hkv, room, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in "kv")
        kb[:, :, :n], vb[:, :, :n] = k, v
        k, v = kb[:, :, :n], vb[:, :, :n]
    config = DeltaConfig(**{"sparse": "streaming", "sink": 64, "window": 512, "gamma": 64, **fields})
    kw = dict(scale=1 / math.sqrt(d), prompt_len=n)
    oracle = run_chunked(reference_prefill, q.double(), k.double(), v.double(), config, chunks, **kw)
    ref = run_chunked(reference_prefill, q, k, v, config, chunks, compute_dtype=torch.bfloat16, **kw)
    bound = 2 * rel_err(ref, oracle) + 1e-6
    for fused_add in (True, False) if fa4.wrapped_kernel("cuda") else (False,):  # the Δ add in FA4's epilogue, after
        passes = Passes(fused_add=fused_add)
        got = run_chunked(fa4_prefill, q, k, v, config.replace(backend="fa4"), chunks, passes=passes, **kw)
        assert torch.isfinite(got).all()
        assert rel_err(got, oracle) <= bound, (fused_add, rel_err(got, oracle), rel_err(ref, oracle))


def test_fa4_backend_refuses_what_it_cannot_run():
    from delta_attn.config import DeltaConfig
    from delta_attn.kernels.fa4_prefill import fa4_prefill

    q = torch.randn(1, 2, 16, 64)
    k = v = torch.randn(1, 2, 16, 64)
    with pytest.raises(ValueError, match="fp16/bf16"):
        fa4_prefill(q, k, v, DeltaConfig(sparse="streaming", window=8, sink=2, gamma=4), scale=0.125, prompt_len=16)
    with pytest.raises(ValueError, match="sink \\+ window"):
        fa4_prefill(q, k, v, DeltaConfig(sparse="block", gamma=4), scale=0.125, prompt_len=16)
    with pytest.raises(ValueError, match="interp"):
        fa4_prefill(q, k, v, DeltaConfig(sparse="streaming", interp="linear", gamma=4), scale=0.125, prompt_len=16)
    from delta_attn.ops import select_backend  # says why before any kernel runs

    with pytest.raises(ValueError, match="backend='fa4' cannot run here: it needs CUDA tensors"):
        select_backend(DeltaConfig(backend="fa4"), torch.device("cpu"))
