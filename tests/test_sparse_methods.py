"""The base methods' own logic: masks from the formulas, estimators against brute force (``seed`` fixture)."""

from __future__ import annotations

import math

import pytest
import torch

from delta_attn import DeltaConfig
from delta_attn.sparse import (
    AnchorBlockPattern,
    SinkWindowPattern,
    dense_mask,
    estimate_block_topk,
    estimate_vertical_slash,
    render_ascii,
)


def test_sink_window_mask_matches_definition():
    n, sink, window = 40, 3, 7
    m = dense_mask(SinkWindowPattern(sink, window), n)[0, 0]
    for i in range(n):
        for j in range(n):
            assert bool(m[i, j]) == (j <= i and (i - j < window or j < sink))


def test_anchor_block_mask_matches_definition():
    n, bs = 40, 6
    m = dense_mask(AnchorBlockPattern(bs), n)[0, 0]
    for i in range(n):
        for j in range(n):
            assert bool(m[i, j]) == (j <= i and (j < bs or j // bs == i // bs))


@pytest.mark.parametrize("q_lo,q_hi", [(0, 1), (5, 9), (100, 164), (3, 300)])
def test_key_ranges_cover_the_mask(q_lo, q_hi):
    n = 320
    for pat in (SinkWindowPattern(4, 33), SinkWindowPattern(0, 1), AnchorBlockPattern(50)):
        m = dense_mask(pat, n)[0, 0, q_lo:q_hi]
        covered = torch.zeros(n, dtype=torch.bool)
        for lo, hi in pat.key_ranges(q_lo, q_hi):
            covered[lo:hi] = True
        assert not (m & ~covered).any(), f"{pat.name} key_ranges miss keys for rows {q_lo}:{q_hi}"


def brute_vertical_slash(q, k, scale, last_q, first_columns, last_diagonals):
    """Per-head column sums and diagonal sums of the last queries' attention, by explicit loops."""
    b, hq, n, d = q.shape
    g = hq // k.shape[1]
    col = torch.zeros(b, hq, n, dtype=torch.float64)
    diag = torch.zeros(b, hq, n, dtype=torch.float64)
    for bi in range(b):
        for h in range(hq):
            for i in range(n - last_q, n):
                s = torch.tensor(
                    [float(q[bi, h, i] @ k[bi, h // g, j]) * scale for j in range(i + 1)], dtype=torch.float64
                )
                p = torch.softmax(s, 0)
                for j in range(i + 1):
                    col[bi, h, j] += p[j]
                    diag[bi, h, i - j] += p[j]
    col[..., :first_columns] = math.inf
    diag[..., :last_diagonals] = math.inf
    return col, diag


def test_vertical_slash_picks_the_heaviest_columns_and_diagonals(seed):
    q, k = torch.randn(1, 4, 60, 8, dtype=torch.float64), torch.randn(1, 2, 60, 8, dtype=torch.float64)
    k[:, :, 17] *= 4  # a strong vertical
    pat = estimate_vertical_slash(
        q, k, q_start=0, scale=0.35, last_q=10, vertical_size=6, slash_size=5, first_columns=2, last_diagonals=3
    )
    col, diag = brute_vertical_slash(q, k, 0.35, 10, 2, 3)
    for h in range(4):
        want_cols = set(col[0, h].topk(6).indices.tolist())
        want_diag = set(diag[0, h].topk(5).indices.tolist())
        assert set(pat.columns[0, h].tolist()) == want_cols
        assert set(pat.diagonals[0, h].tolist()) == want_diag
        assert {0, 1} <= want_cols and {0, 1, 2} <= want_diag


def test_block_topk_picks_the_best_pooled_blocks(seed):
    bs, n = 8, 75
    q, k = torch.randn(2, 2, n, 16, dtype=torch.float64), torch.randn(2, 1, n, 16, dtype=torch.float64)
    pat = estimate_block_topk(q, k, q_start=0, block=bs, n_blocks=3, sink=0, window=1)
    nb = math.ceil(n / bs)
    for b in range(2):
        for h in range(2):
            for qb in range(nb):
                qm = q[b, h, qb * bs : (qb + 1) * bs].mean(0)
                scores = [float(qm @ k[b, 0, kb * bs : (kb + 1) * bs].mean(0)) for kb in range(qb + 1)]
                want = set(sorted(range(qb + 1), key=lambda i: -scores[i])[:3])
                got = set(pat.selected[b, h, qb][pat.valid[b, h, qb]].tolist())
                assert got == want, (b, h, qb)


def test_estimators_respect_chunk_offsets(seed):
    """With q_start > 0 the estimators use absolute positions (chunked prefill)."""
    q, k = torch.randn(1, 2, 100, 8), torch.randn(1, 2, 100, 8)
    full = estimate_vertical_slash(
        q, k, q_start=0, scale=0.3, last_q=16, vertical_size=5, slash_size=5, first_columns=1, last_diagonals=1
    )
    part = estimate_vertical_slash(
        q[:, :, 60:],
        k,
        q_start=60,
        scale=0.3,
        last_q=16,
        vertical_size=5,
        slash_size=5,
        first_columns=1,
        last_diagonals=1,
    )
    assert torch.equal(full.columns, part.columns) and torch.equal(full.diagonals, part.diagonals)
    tk_full = estimate_block_topk(q, k, q_start=0, block=10, n_blocks=2, sink=0, window=1)
    tk_part = estimate_block_topk(q[:, :, 60:], k, q_start=60, block=10, n_blocks=2, sink=0, window=1)
    assert torch.equal(tk_full.selected[:, :, 6:], tk_part.selected)


def test_render_ascii_runs():
    pic = render_ascii(SinkWindowPattern(1, 3), 6).splitlines()
    assert pic == ["#.....", "##....", "###...", "####..", "#.###.", "#..###"]


def test_reference_never_builds_an_n_by_n_matrix(monkeypatch, seed):
    """At N = 24K the streaming base scores only rows × (window + sink + rows) at a time."""
    import delta_attn.reference as ref
    from delta_attn import delta_attention

    largest = []
    orig = ref.masked_attention

    def spy(q, k, v, allowed, scale, **kwargs):
        largest.append(q.shape[3] * k.shape[2])
        return orig(q, k, v, allowed, scale, **kwargs)

    monkeypatch.setattr(ref, "masked_attention", spy)
    n = 24_000
    q, k, v = torch.randn(1, 1, n, 8), torch.randn(1, 1, n, 8), torch.randn(1, 1, n, 8)
    out = delta_attention(q, k, v, DeltaConfig(window=256, sink=16, gamma=64, mode="sparse"))
    assert torch.isfinite(out).all()
    assert max(largest) <= ref.DEFAULT_CHUNK_ELEMENTS and max(largest) < n * n / 100
