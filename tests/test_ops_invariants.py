"""Properties of the operator that hold for any input: equivalences, exact rows, causality,
chunked prefill, left padding."""

from __future__ import annotations

import pytest
import torch

from delta_attn import DeltaConfig, DeltaState, delta_attention
from delta_attn.backend import plan_call
from delta_attn.config import INTERPS, MODES
from oracle import make_qkv

STATIC_BASES = ["streaming", "block", "dense"]
CAUSAL_INTERPS = [i for i in INTERPS if DeltaConfig(interp=i).is_causal]


def dense_out(q, k, v):
    return delta_attention(q, k, v, DeltaConfig(mode="dense"))


@pytest.mark.parametrize("interp", ["repeat", "linear"])
@pytest.mark.parametrize("base", ["streaming", "vertical_slash", "topk", "block"])
def test_gamma_one_is_dense(interp, base, seed):
    q, k, v = make_qkv(seed, 2, 2, 2, 301, 64)
    cfg = DeltaConfig(
        sparse=base,
        gamma=1,
        window=8,
        sink=2,
        interp=interp,
        block_size=32,
        vertical_size=5,
        slash_size=5,
        topk_block=16,
        topk_blocks=2,
    )
    torch.testing.assert_close(delta_attention(q, k, v, cfg), dense_out(q, k, v), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["delta", "recompute", "sparse"])
@pytest.mark.parametrize("interp", INTERPS)
def test_window_covering_everything_is_dense(mode, interp, seed):
    n = 257
    q, k, v = make_qkv(seed, 1, 1, 4, n, 32)
    cfg = DeltaConfig(window=n, sink=0, gamma=16, mode=mode, interp=interp)
    torch.testing.assert_close(delta_attention(q, k, v, cfg), dense_out(q, k, v), rtol=0, atol=1e-12)


@pytest.mark.parametrize("interp", ["repeat", "linear"])
@pytest.mark.parametrize("n,gamma,tail", [(1000, 64, None), (333, 16, 5), (77, 2, 0), (130, 64, None)])
def test_anchor_and_tail_rows_are_exact(interp, n, gamma, tail, seed):
    q, k, v = make_qkv(seed, 2, 2, 3, n, 64)
    cfg = DeltaConfig(window=20, sink=4, gamma=gamma, tail=tail, interp=interp)
    out, ref = delta_attention(q, k, v, cfg), dense_out(q, k, v)
    sparse = delta_attention(q, k, v, cfg.replace(mode="sparse"))
    rows = plan_call(cfg, 0, n, n).dense_pos
    assert rows.numel() > 0
    torch.testing.assert_close(out[:, :, rows], ref[:, :, rows], rtol=0, atol=1e-12)
    other = torch.ones(n, dtype=torch.bool)
    other[rows] = False
    if other.any():  # the correction does something on the other rows
        assert not torch.allclose(out[:, :, other], sparse[:, :, other])


def test_tail_rule():
    cfg = DeltaConfig(gamma=64)
    assert cfg.tail_rows(1000) == 1000 % 64 + 128
    assert cfg.tail_rows(100) == 100
    assert DeltaConfig(gamma=256).tail_rows(1000) == 1000 % 256 + 256
    assert DeltaConfig(gamma=16, tail=0).tail_rows(100) == 4
    sched = plan_call(DeltaConfig(gamma=64), 0, 1000, 1000)
    body = 1000 - (1000 % 64 + 128)
    expected = list(range(0, body, 64)) + list(range(body, 1000))
    assert sched.dense_pos.tolist() == expected


@pytest.mark.parametrize("base", ["streaming", "vertical_slash", "block"])
def test_recompute_is_sparse_except_selected_rows(base, seed):
    n = 700
    q, k, v = make_qkv(seed, 1, 2, 2, n, 64)
    cfg = DeltaConfig(
        sparse=base, mode="recompute", gamma=16, window=32, sink=4, block_size=100, vertical_size=10, slash_size=10
    )
    rec = delta_attention(q, k, v, cfg)
    sp = delta_attention(q, k, v, cfg.replace(mode="sparse"))
    rows = plan_call(cfg, 0, n, n).dense_pos
    other = torch.ones(n, dtype=torch.bool)
    other[rows] = False
    assert torch.equal(rec[:, :, other], sp[:, :, other])
    torch.testing.assert_close(rec[:, :, rows], dense_out(q, k, v)[:, :, rows], rtol=0, atol=1e-12)


def causal_configs():
    for base in STATIC_BASES:
        for mode in MODES:
            for interp in CAUSAL_INTERPS if mode == "delta" else ["repeat"]:
                yield DeltaConfig(sparse=base, mode=mode, interp=interp, gamma=16, window=24, sink=3, block_size=64)


@pytest.mark.parametrize("cfg", list(causal_configs()), ids=lambda c: f"{c.sparse}-{c.mode}-{c.interp}")
def test_causal_variants_never_read_the_future(cfg, seed):
    """Perturb positions > t in q, k and v: rows <= t stay bit-identical (tail placement fixed by N)."""
    n, t = 600, 371
    q, k, v = make_qkv(seed, 2, 1, 2, n, 32)
    out = delta_attention(q, k, v, cfg)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    gen = torch.Generator().manual_seed(seed + 1)
    for x in (q2, k2, v2):
        x[:, :, t + 1 :] += torch.randn(x[:, :, t + 1 :].shape, generator=gen, dtype=x.dtype)
    out2 = delta_attention(q2, k2, v2, cfg)
    assert torch.equal(out[:, :, : t + 1], out2[:, :, : t + 1])
    assert not torch.equal(out[:, :, t + 1 :], out2[:, :, t + 1 :])


def test_linear_is_documented_non_causal(seed):
    """`linear` blends towards the next anchor, so row i reads row (j+1)γ > i — and says so."""
    cfg = DeltaConfig(interp="linear", gamma=16, window=8, sink=2, tail=0)
    assert not cfg.is_causal and "non-causal" in (DeltaConfig.__doc__ or "")
    n = 200
    q, k, v = make_qkv(seed, 1, 1, 1, n, 16)
    out = delta_attention(q, k, v, cfg)
    q2 = q.clone()
    q2[:, :, 32] += 1.0  # the anchor of block 2 only
    out2 = delta_attention(q2, k, v, cfg)
    assert not torch.equal(out[:, :, 17:32], out2[:, :, 17:32])  # rows of block 1 changed
    assert torch.equal(out[:, :, :17], out2[:, :, :17])
    with pytest.raises(ValueError, match="non-causal"):
        delta_attention(q[:, :, -10:], k, v, cfg)


def run_chunked(q, k, v, cfg, bounds, left_pad=None):
    state = DeltaState()
    n = k.shape[2]
    outs = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        outs.append(
            delta_attention(
                q[:, :, lo:hi], k[:, :, :hi], v[:, :, :hi], cfg, prompt_len=n, state=state, left_pad=left_pad
            )
        )
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize("interp", CAUSAL_INTERPS)
@pytest.mark.parametrize("base", STATIC_BASES)
@pytest.mark.parametrize("mode", ["delta", "recompute", "sparse"])
def test_chunked_prefill_equals_one_shot(interp, base, mode, seed):
    n = 900
    q, k, v = make_qkv(seed, 2, 2, 2, n, 32)
    cfg = DeltaConfig(sparse=base, mode=mode, interp=interp, gamma=16, window=40, sink=4, block_size=128)
    one = delta_attention(q, k, v, cfg)
    # boundaries inside γ-blocks, one chunk entirely inside the tail, one of a single row
    chunked = run_chunked(q, k, v, cfg, [0, 37, 38, 300, 517, 800, 850, n])
    torch.testing.assert_close(chunked, one, rtol=0, atol=1e-12)


def test_chunk_without_state_is_a_clear_error(seed):
    q, k, v = make_qkv(seed, 1, 1, 1, 300, 16)
    cfg = DeltaConfig(gamma=16, window=8)
    delta_attention(q[:, :, 32:64], k[:, :, :64], v[:, :, :64], cfg, prompt_len=300)  # block-aligned: fine
    with pytest.raises(ValueError, match="DeltaState"):
        delta_attention(q[:, :, 40:64], k[:, :, :64], v[:, :, :64], cfg, prompt_len=300)
    with pytest.raises(ValueError, match="DeltaState"):
        delta_attention(q[:, :, 32:64], k[:, :, :64], v[:, :, :64], cfg.replace(interp="ema"), prompt_len=300)


@pytest.mark.parametrize("base", ["streaming", "vertical_slash", "topk", "block"])
def test_left_padding_equals_each_sequence_alone(base, seed):
    n, d = 300, 32
    pads = [0, 37, 120]
    cfg = DeltaConfig(
        sparse=base,
        gamma=16,
        window=30,
        sink=4,
        block_size=64,
        vertical_size=8,
        slash_size=8,
        topk_block=16,
        topk_blocks=2,
    )
    q, k, v = make_qkv(seed, len(pads), 2, 2, n, d)
    out = delta_attention(q, k, v, cfg, left_pad=torch.tensor(pads))
    for b, p in enumerate(pads):
        alone = delta_attention(q[b : b + 1, :, p:], k[b : b + 1, :, p:], v[b : b + 1, :, p:], cfg)
        torch.testing.assert_close(out[b : b + 1, :, p:], alone, rtol=0, atol=1e-12)
        assert torch.equal(out[b, :, :p], torch.zeros_like(out[b, :, :p]))


def test_left_padding_with_chunks(seed):
    n = 400
    pads = [0, 150]
    cfg = DeltaConfig(gamma=16, window=30, sink=4, interp="ema")
    q, k, v = make_qkv(seed, 2, 1, 2, n, 16)
    one = delta_attention(q, k, v, cfg, left_pad=pads)
    chunked = run_chunked(q, k, v, cfg, [0, 100, 170, 255, n], left_pad=pads)
    torch.testing.assert_close(chunked, one, rtol=0, atol=1e-12)


def test_gqa_does_not_copy_kv(monkeypatch, seed):
    """K/V reach the attention matmuls as (B, Hkv, ...) views — never repeated per query head."""
    import delta_attn.reference as ref

    seen = []
    orig = ref.masked_attention

    def spy(q, k, v, allowed, scale, **kwargs):
        seen.append((q.shape[1], k.shape[1]))
        return orig(q, k, v, allowed, scale, **kwargs)

    monkeypatch.setattr(ref, "masked_attention", spy)
    q, k, v = make_qkv(seed, 1, 2, 4, 100, 16)
    delta_attention(q, k, v, DeltaConfig(gamma=16, window=10))
    assert seen and all(hk == 2 and hq == 2 for hq, hk in seen)


def test_empty_query_and_single_token(seed):
    q, k, v = make_qkv(seed, 1, 1, 2, 1, 16)
    out = delta_attention(q, k, v, DeltaConfig())
    torch.testing.assert_close(out, v.repeat_interleave(2, dim=1), rtol=0, atol=1e-12)  # one key: output = v
    empty = delta_attention(q[:, :, :0], k, v, DeltaConfig())
    assert empty.shape == (1, 2, 0, 16)
