"""The Δ variants (docs/algorithm.md §13): ``delta_scale`` (λ float / "auto" / "auto-global") and
``extra_anchors``, on the reference backend, against the independent float64 oracle and their invariants.

The data-driven λ and the extra-anchor choice read the anchors' Δs; an anchor whose sparse row sees
every causal key has Δ = 0 up to rounding, and a ratio of rounding noise is noise. So the inputs here
use a window below γ: every anchor after the first has a real Δ (the §13 caveat).
"""

from __future__ import annotations

import math

import pytest
import torch

from delta_attn import DeltaConfig, DeltaState, delta_attention
from delta_attn.backend import extra_anchor_count, plan_call
from delta_attn.combine import delta_scales
from delta_attn.config import INTERPS
from delta_attn.cost import prefill_cost
from oracle import make_qkv, oracle_attention

BASE = dict(window=6, sink=2, gamma=16, tail=20)  # window < γ: every anchor but the first has a real Δ


def run_chunks(q, k, v, cfg, chunks):
    state, outs, s = DeltaState(), [], 0
    n = k.shape[2]
    for c in chunks:
        e = s + c
        outs.append(delta_attention(q[:, :, s:e], k[:, :, :e], v[:, :, :e], cfg, state=state, prompt_len=n))
        s = e
    assert s == n
    return torch.cat(outs, dim=2)


VARIANTS = [
    *[dict(interp=i, delta_scale=s) for i in INTERPS for s in (0.3, "auto", "auto-decay", "auto-global")],
    dict(interp="repeat", extra_anchors=0.25),
    dict(interp="linear", extra_anchors=0.25),
    dict(interp="repeat", extra_anchors=1.0, delta_scale="auto"),
    dict(interp="linear", extra_anchors=0.1, delta_scale=0.5),
]


@pytest.mark.parametrize("fields", VARIANTS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_variants_match_oracle_fp64(fields, seed):
    """Awkward shapes: batch 2, GQA 2:6, head dim 80, a length that is no multiple of γ."""
    q, k, v = make_qkv(seed, 2, 2, 3, 203, 80)
    cfg = DeltaConfig(**BASE, **fields)
    out = delta_attention(q, k, v, cfg)
    torch.testing.assert_close(out, oracle_attention(q, k, v, cfg), rtol=0, atol=1e-9)


@pytest.mark.parametrize("gamma", [2, 5, 64])
def test_variants_match_oracle_other_gammas(gamma, seed):
    q, k, v = make_qkv(seed, 1, 1, 2, 300, 64)
    cfg = DeltaConfig(window=max(1, gamma - 1), sink=1, gamma=gamma, tail=3, delta_scale="auto", extra_anchors=0.3)
    torch.testing.assert_close(delta_attention(q, k, v, cfg), oracle_attention(q, k, v, cfg), rtol=0, atol=1e-9)


@pytest.mark.parametrize("interp", INTERPS)
def test_scale_zero_is_recompute_exactly(interp, seed):
    q, k, v = make_qkv(seed, 2, 1, 2, 150, 16, torch.float32)
    zero = DeltaConfig(**BASE, interp=interp, delta_scale=0.0)
    recompute = DeltaConfig(**BASE, mode="recompute")
    assert torch.equal(delta_attention(q, k, v, zero), delta_attention(q, k, v, recompute))
    if zero.is_causal:  # also chunked, with chunks that split γ-blocks
        assert torch.equal(run_chunks(q, k, v, zero, (40, 1, 109)), run_chunks(q, k, v, recompute, (40, 1, 109)))


@pytest.mark.parametrize("interp", INTERPS)
def test_scale_one_is_the_default_bit_for_bit(interp, seed):
    q, k, v = make_qkv(seed, 1, 2, 2, 170, 32, torch.float32)
    a = delta_attention(q, k, v, DeltaConfig(**BASE, interp=interp))
    b = delta_attention(q, k, v, DeltaConfig(**BASE, interp=interp, delta_scale=1.0, extra_anchors=0.0))
    assert torch.equal(a, b)
    half = delta_attention(q, k, v, DeltaConfig(**BASE, interp=interp, delta_scale=0.5))
    assert not torch.equal(a, half)  # the option reaches the output


def test_auto_scale_lies_in_unit_interval_and_follows_the_formula(seed):
    """λ from hand-made Δs: anti-correlated → 0, growing → clipped to 1, zeros → 1 (0/0), block 0 → 1.

    Window 1, γ 4: the anchor at 0 sees its whole prefix (left out of the sums, §13) and the anchor at 4 misses
    4 = γ keys (it counts), so the first pair that counts is (Δ_2, Δ_1) and block 1 reads 0/0 → 1."""
    gen = torch.Generator().manual_seed(seed)
    cfg = DeltaConfig(gamma=4, tail=0, window=1, sink=0, delta_scale="auto")
    plan = plan_call(cfg, 0, 40, 40)
    base = torch.randn(3, 2, 1, 8, generator=gen, dtype=torch.float64)
    flips = base * torch.tensor([1.0, -1.0] * 5, dtype=torch.float64).view(1, 1, -1, 1)
    grows = base * (2.0 ** torch.arange(10, dtype=torch.float64)).view(1, 1, -1, 1)
    noise = torch.randn(3, 2, 10, 8, generator=gen, dtype=torch.float64)
    for deltas, want_after_1 in ((flips, 0.0), (grows, 1.0), (torch.zeros(3, 2, 10, 8, dtype=torch.float64), 1.0)):
        lam, sums = delta_scales(plan, deltas)
        assert lam.shape == (3, 2, 10) and sums.shape == (3, 2, 2)
        assert torch.all(lam[:, :, :2] == 1) and torch.all(lam[:, :, 2:] == want_after_1)
    lam, _ = delta_scales(plan, noise)
    assert torch.all((lam >= 0) & (lam <= 1))
    j = 6  # the running least-squares ratio, written out (pairs from (Δ_2, Δ_1) on)
    num = sum((noise[:, :, i] * noise[:, :, i - 1]).sum(-1) for i in range(2, j + 1))
    den = sum((noise[:, :, i - 1] ** 2).sum(-1) for i in range(2, j + 1))
    torch.testing.assert_close(lam[:, :, j], (num / den).clamp(0, 1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", ["auto", "auto-decay", "auto-global"])
def test_auto_ignores_anchors_whose_sparse_row_is_exact(scale, seed):
    """Rounding noise in the Δ of anchors the window covers (positions < window) changes no λ (§13)."""
    gen = torch.Generator().manual_seed(seed)
    cfg = DeltaConfig(gamma=4, tail=0, window=10, sink=1, delta_scale=scale)  # anchors 0, 4, 8 are exact
    plan = plan_call(cfg, 0, 40, 40)
    deltas = torch.randn(2, 3, 10, 8, generator=gen, dtype=torch.float64)
    deltas[:, :, :3] = 0.0
    noisy = deltas.clone()
    noisy[:, :, :3] = 1e-7 * torch.randn(2, 3, 3, 8, generator=gen, dtype=torch.float64)
    assert torch.equal(delta_scales(plan, deltas)[0], delta_scales(plan, noisy)[0])


@pytest.mark.parametrize("interp", ["repeat", "ema", "abg"])
def test_auto_is_causal(interp, seed):
    """Perturbing position p leaves every earlier row bit-identical; auto-global (non-causal) does not."""
    q, k, v = make_qkv(seed, 1, 2, 2, 200, 16)
    p = 150
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[:, :, p:] += 1.0
    k2[:, :, p:] -= 1.0
    v2[:, :, p:] *= 3.0
    causal = DeltaConfig(**BASE, interp=interp, delta_scale="auto")
    a, b = delta_attention(q, k, v, causal), delta_attention(q2, k2, v2, causal)
    assert torch.equal(a[:, :, :p], b[:, :, :p]) and not torch.equal(a[:, :, p:], b[:, :, p:])
    glob = DeltaConfig(**BASE, interp=interp, delta_scale="auto-global")
    assert not torch.equal(delta_attention(q, k, v, glob)[:, :, :p], delta_attention(q2, k2, v2, glob)[:, :, :p])


@pytest.mark.parametrize("scale", ["auto", "auto-decay"])
@pytest.mark.parametrize("interp", ["repeat", "ema", "abg"])
@pytest.mark.parametrize("chunks", [(37, 16, 100, 3, 107), (48, 215), (1, 262)])
def test_auto_chunked_equals_one_shot(interp, chunks, scale, seed):
    """Chunks that split γ-blocks and chunks that end on a block boundary carry the running sums."""
    q, k, v = make_qkv(seed, 2, 1, 2, 263, 16)
    cfg = DeltaConfig(**BASE, interp=interp, delta_scale=scale)
    torch.testing.assert_close(run_chunks(q, k, v, cfg, chunks), delta_attention(q, k, v, cfg), rtol=0, atol=1e-12)


def test_block_mean_decay_values():
    """(ρ − 1)/ln ρ: the ends, a value by hand, and ρ ≤ λ ≤ 1 in between."""
    from delta_attn.combine import block_mean_decay

    rho = torch.tensor([0.0, 1e-15, 0.5, 0.9, 1.0 - 1e-12, 1.0], dtype=torch.float64)
    lam = block_mean_decay(rho)
    assert lam[0] == 0 and lam[-1] == 1 and abs(float(lam[2]) - 0.5 / math.log(2)) < 1e-12
    assert torch.all(lam >= rho) and torch.all(lam <= 1) and torch.all(lam[1:] >= lam[:-1])


@pytest.mark.parametrize("scale", ["auto", "auto-decay"])
def test_auto_chunk_ending_inside_the_window_equals_one_shot_fp32(scale, seed):
    """float32, window wider than γ, the first chunk ending before the first anchor the window does not cover:
    those anchors' Δs are rounding noise that differs between a chunked and a one-shot run; left out of λ's sums
    (§13), the two runs agree to rounding (before: 0.42 apart)."""
    q, k, v = make_qkv(seed, 1, 1, 2, 189, 16, torch.float32)
    cfg = DeltaConfig(window=32, sink=4, gamma=16, tail=16, delta_scale=scale)
    torch.testing.assert_close(run_chunks(q, k, v, cfg, (40, 149)), delta_attention(q, k, v, cfg), rtol=0, atol=2e-5)


def test_auto_chunk_without_state_is_refused(seed):
    q, k, v = make_qkv(seed, 1, 1, 1, 100, 8)
    cfg = DeltaConfig(**BASE, delta_scale="auto")
    with pytest.raises(ValueError, match="running sums"):
        delta_attention(q[:, :, 48:], k, v, cfg, state=DeltaState())


def test_extra_anchors_zero_is_the_default(seed):
    q, k, v = make_qkv(seed, 2, 1, 2, 190, 16, torch.float32)
    for interp in ("repeat", "linear"):
        a = delta_attention(q, k, v, DeltaConfig(**BASE, interp=interp))
        assert torch.equal(a, delta_attention(q, k, v, DeltaConfig(**BASE, interp=interp, extra_anchors=0.0)))


@pytest.mark.parametrize("interp", ["repeat", "linear"])
def test_extra_rows_are_exact_and_counted(interp, seed):
    """Per sequence, exactly ceil(f · n_blocks) block midpoints equal the dense row; anchors stay exact."""
    n, f = 210, 0.3
    q, k, v = make_qkv(seed, 2, 1, 2, n, 16)
    cfg = DeltaConfig(**BASE, interp=interp, extra_anchors=f)
    out = delta_attention(q, k, v, cfg)
    dense = delta_attention(q, k, v, cfg.replace(mode="dense"))
    n_blocks = -(-(n - cfg.tail_rows(n)) // cfg.gamma)
    mids = torch.arange(n_blocks) * cfg.gamma + cfg.gamma // 2
    exact = (out[:, :, mids] - dense[:, :, mids]).abs().amax(dim=(1, 3)) < 1e-12  # (B, n_blocks)
    assert exact.sum(dim=1).tolist() == [math.ceil(f * n_blocks)] * 2 == [extra_anchor_count(cfg, n_blocks)] * 2
    assert not exact[:, -1].any()  # the last block has no next anchor: never chosen
    anchors = torch.arange(n_blocks) * cfg.gamma
    torch.testing.assert_close(out[:, :, anchors], dense[:, :, anchors], rtol=0, atol=1e-12)


def test_extra_anchors_gamma_one_is_a_no_op(seed):
    q, k, v = make_qkv(seed, 1, 1, 1, 60, 8)
    cfg = DeltaConfig(window=3, sink=1, gamma=1, tail=5)
    assert torch.equal(delta_attention(q, k, v, cfg), delta_attention(q, k, v, cfg.replace(extra_anchors=0.5)))


def test_non_causal_variants_refuse_chunks_and_filters(seed):
    q, k, v = make_qkv(seed, 1, 1, 1, 100, 8)
    for fields in (dict(delta_scale="auto-global"), dict(extra_anchors=0.25)):
        cfg = DeltaConfig(**BASE, **fields)
        assert not cfg.is_causal
        with pytest.raises(ValueError, match="non-causal"):
            delta_attention(q[:, :, 50:], k, v, cfg, state=DeltaState())
    for interp in ("ema", "abg"):
        with pytest.raises(ValueError, match="extra_anchors works with interp"):
            DeltaConfig(interp=interp, extra_anchors=0.25)


def test_cost_counts_the_extra_rows():
    n = 4096
    plain = prefill_cost(DeltaConfig(), n)
    extra = prefill_cost(DeltaConfig(extra_anchors=0.25), n)
    n_blocks = -(-(n - DeltaConfig().tail_rows(n)) // 64)
    assert extra.n_extra_rows == math.ceil(0.25 * n_blocks) == extra.n_dense_rows - plain.n_dense_rows
    # the latest blocks with a next anchor, each at its midpoint: an upper bound on the data's choice
    blocks = range(n_blocks - 1 - extra.n_extra_rows, n_blocks - 1)
    assert extra.extra_rows == sum(j * 64 + 32 + 1 for j in blocks) == extra.dense_rows - plain.dense_rows
    assert plain.exact and not extra.exact and extra.total == plain.total + extra.extra_rows
    assert prefill_cost(DeltaConfig(delta_scale="auto"), n) == plain  # λ costs no attention pairs
