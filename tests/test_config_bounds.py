"""``DeltaConfig``'s integer fields are bounded at 2**31 - 1 (int32): beyond it the config refuses at
construction with a message stating the bound (issue 18: ``gamma=10**20`` used to pass and fail later
with an ``OverflowError``); at the bound itself the operator and the cost model run without overflow."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from delta_attn import DeltaConfig, delta_attention
from delta_attn.config import MAX_INT_FIELD
from delta_attn.cost import prefill_cost
from delta_attn.sparse import resolve_sparse_method

INT_FIELDS = [
    "window",
    "sink",
    "gamma",
    "tail",
    "vertical_size",
    "slash_size",
    "vs_last_q",
    "vs_first_columns",
    "vs_last_diagonals",
    "topk_block",
    "topk_blocks",
    "block_size",
    "dense_layers",
]


def test_every_int_field_is_listed():
    """A new integer field must be bounded too: the list above names every int-typed field."""
    typed_int = {f.name for f in dataclasses.fields(DeltaConfig) if "int" in str(f.type)}
    assert typed_int == set(INT_FIELDS)


@pytest.mark.parametrize("name", INT_FIELDS)
@pytest.mark.parametrize("value", [MAX_INT_FIELD + 1, 2**63, 10**20, 10**5000], ids=["2^31", "2^63", "1e20", "1e5000"])
def test_beyond_int32_is_refused_with_the_bound_in_the_message(name, value):
    with pytest.raises(ValueError, match=rf"DeltaConfig\.{name} must be <= 2147483647 \(2\*\*31 - 1") as info:
        DeltaConfig(**{name: value})
    assert len(str(info.value)) < 200  # a 5,000-digit number is named by its size, not printed


def test_dense_layer_lists_are_bounded_too(seed):
    bad = MAX_INT_FIELD + 1 + random.randrange(10**9)
    with pytest.raises(ValueError, match=r"dense_layers entries must be ints in \[0, 2147483647\]") as info:
        DeltaConfig(dense_layers=[0, bad])
    assert str(bad) in str(info.value)
    assert DeltaConfig(dense_layers=[0, MAX_INT_FIELD]).dense_layers == (0, MAX_INT_FIELD)


def test_the_server_and_generate_reproduction_gamma_1e20():
    """The issue's case: the config itself refuses, naming the field and the bound."""
    with pytest.raises(ValueError, match="gamma must be <= 2147483647.*got 100000000000000000000"):
        DeltaConfig().replace(gamma=10**20)


@pytest.mark.parametrize("sparse", ["streaming", "vertical_slash", "topk", "block", "dense"])
@pytest.mark.parametrize("mode", ["delta", "recompute", "sparse"])
def test_the_bound_itself_runs_in_the_operator_and_the_cost_model(sparse, mode, seed):
    """Every int field at 2**31 - 1 at once: the window and blocks cover everything, so the sparse base is
    dense and the output equals dense attention (float64); the cost model counts without overflow."""
    ints = {name: MAX_INT_FIELD for name in INT_FIELDS if name != "dense_layers"}
    config = DeltaConfig(sparse=sparse, mode=mode, **ints)
    n = random.randint(20, 60)
    q = torch.randn(1, 4, n, 8, dtype=torch.float64)
    k, v = torch.randn(2, 1, 2, n, 8, dtype=torch.float64)
    out = delta_attention(q, k, v, config)
    dense = delta_attention(q, k, v, DeltaConfig(mode="dense"))
    torch.testing.assert_close(out, dense, rtol=1e-12, atol=1e-12)
    cost = prefill_cost(config, n, allow_upper_bound=True)
    assert 0 < cost.total <= 2 * n * (n + 1)


@pytest.mark.parametrize("sparse", ["streaming", "vertical_slash", "topk", "block", "dense"])
def test_key_counts_near_2_31_positions_stay_exact_in_int64(sparse):
    """The cost model's per-row key counts at positions near 2**31 with every field at the bound: no
    int64 wrap-around (a count is positive and at most position + 1)."""
    ints = {name: MAX_INT_FIELD for name in INT_FIELDS if name != "dense_layers"}
    config = DeltaConfig(sparse=sparse, **ints)
    positions = np.array([0, 1, 2**20, MAX_INT_FIELD - 1, MAX_INT_FIELD], dtype=np.int64)
    counts = resolve_sparse_method(sparse).row_key_counts(config, positions)
    assert counts.dtype == np.int64
    assert (counts >= 1).all() and (counts <= positions + 1).all(), counts
