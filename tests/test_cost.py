"""The cost model (delta_attn.cost) against brute-force counting of the masks the reference uses."""

from __future__ import annotations

import pytest
import torch

from delta_attn import DeltaConfig
from delta_attn.config import MODES
from delta_attn.cost import (
    base_pairs,
    causal_pairs,
    dense_row_count,
    dense_row_positions,
    pair_flops,
    prefill_cost,
)
from delta_attn.sparse import SinkWindowPattern, dense_mask, resolve_sparse_method


def mask_pairs(config: DeltaConfig, n: int, lo: int = 0) -> int:
    """Allowed query-key pairs of rows ``lo..n-1`` in the base's causal mask (one head, random data)."""
    q = torch.randn(1, 1, n, 8)
    pattern = resolve_sparse_method(config.sparse).plan(q, q, config, q_start=0, scale=0.3)
    return int(dense_mask(pattern, n)[0, 0, lo:].sum())


def brute_dense_rows(config: DeltaConfig, n: int) -> list[int]:
    """The dense rows from the rule itself: anchors every γ before the tail, then every tail row."""
    if config.mode == "dense":
        return list(range(n))
    if config.mode == "sparse":
        return []
    tail = config.tail if config.tail is not None else max(128, config.gamma)
    body = n - min(n, n % config.gamma + tail)
    return [p for p in range(n) if p >= body or p % config.gamma == 0]


CONFIGS = [
    dict(sparse="streaming", window=16, sink=4, gamma=8),
    dict(sparse="streaming", window=5, sink=30, gamma=3, tail=7),
    dict(sparse="streaming", window=100, sink=0, gamma=64),
    dict(sparse="block", block_size=13, gamma=16, tail=10),
    dict(sparse="block", block_size=64, gamma=7),
    dict(sparse="dense", gamma=16, tail=0),
]


@pytest.mark.parametrize("n", [1, 9, 50, 333, 1001])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fields", CONFIGS, ids=lambda f: "-".join(f"{k}{v}" for k, v in f.items()))
def test_static_bases_match_brute_force(fields, mode, n):
    config = DeltaConfig(mode=mode, **fields)
    cost = prefill_cost(config, n)
    rows = brute_dense_rows(config, n)
    body = n - config.tail_rows(n)
    assert cost.exact and cost.n_dense_rows == len(rows) == dense_row_count(config, n)
    assert dense_row_positions(config, n).tolist() == rows
    assert cost.dense_rows == sum(p + 1 for p in rows)
    if mode == "dense":
        assert cost.base == 0 and cost.total == causal_pairs(n) == n * (n + 1) // 2
        return
    assert cost.base == mask_pairs(config, n)
    assert cost.base_body == mask_pairs(config, n) - mask_pairs(config, n, lo=body)
    expected = {
        "sparse": cost.base,
        "recompute": cost.base + cost.dense_rows,
        "delta": cost.base_body + cost.dense_rows,
    }
    assert cost.total == expected[mode]
    assert cost.flops(64, heads=3, batch=2) == pair_flops(cost.total, 64, 3, 2) == 4 * 64 * 3 * 2 * cost.total


@pytest.mark.parametrize("n,sink,window,lo", [(100, 4, 10, 0), (300, 0, 1, 17), (50, 60, 10, 3), (77, 3, 200, 40)])
def test_sink_window_pairs_match_the_mask(n, sink, window, lo):
    m = dense_mask(SinkWindowPattern(sink, window), n)[0, 0]
    pairs, exact = base_pairs(DeltaConfig(sink=sink, window=window), lo, n)
    assert exact and pairs == int(m[lo:].sum())


def test_pair_counts():
    assert causal_pairs(1) == 1 and causal_pairs(4) == 10
    config = DeltaConfig(gamma=7, tail=0, mode="recompute")
    positions = dense_row_positions(config, 100)
    assert prefill_cost(config, 100).dense_rows == int((positions + 1).sum())


@pytest.mark.parametrize(
    "fields",
    [
        dict(sparse="topk", topk_block=8, topk_blocks=3, sink=2, window=5),
        dict(sparse="topk", topk_block=4, topk_blocks=0, sink=0, window=1),
        dict(sparse="vertical_slash", vertical_size=6, slash_size=5, vs_last_q=16, vs_first_columns=2),
        dict(sparse="vertical_slash", vertical_size=0, slash_size=1, vs_first_columns=0, vs_last_diagonals=0),
    ],
)
def test_data_dependent_bases_are_bounded_by_their_budget(fields, seed):
    n = 203
    config = DeltaConfig(gamma=16, **fields)
    with pytest.raises(ValueError, match="no analytic cost.*allow_upper_bound"):
        prefill_cost(config, n)
    cost = prefill_cost(config, n, allow_upper_bound=True)
    assert not cost.exact
    assert cost.base >= mask_pairs(config, n) and cost.base <= causal_pairs(n)


def test_a_base_without_a_cost_model_says_so():
    from delta_attn.sparse import MaskModMethod

    config = DeltaConfig(sparse=MaskModMethod(lambda b, h, q, kv: (q - kv) % 3 == 0, "every_third"))
    with pytest.raises(ValueError, match="no analytic cost for sparse base 'every_third'"):
        prefill_cost(config, 50, allow_upper_bound=True)


def test_dense_fraction_of_the_paper_setting():
    """γ = 64 over a long prompt: the dense rows cost about 1/γ of dense attention (docs/algorithm.md §10)."""
    n = 1 << 17
    cost = prefill_cost(DeltaConfig(window=2048, sink=128, gamma=64), n)
    rows_fraction = cost.dense_rows / causal_pairs(n)
    assert abs(rows_fraction - 1 / 64) < 0.003
    assert cost.dense_fraction == pytest.approx(cost.total / causal_pairs(n))
