"""Non-finite inputs stay causal (docs/algorithm.md §12): an inf/NaN at position i of q, k or v never
changes the output rows before i, for every causal interpolation and every mode (reference backend)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from delta_attn import DeltaConfig, DeltaState, delta_attention
from delta_attn.config import INTERPS, MODES
from delta_attn.filters import abg_system, ema_system, initial_state, lti_scan
from oracle import make_qkv

STATIC_BASES = ["streaming", "block", "dense"]
CAUSAL_INTERPS = [i for i in INTERPS if DeltaConfig(interp=i).is_causal]


def causal_configs():
    for base in STATIC_BASES:
        for mode in MODES:
            for interp in CAUSAL_INTERPS if mode == "delta" else ["repeat"]:
                yield DeltaConfig(
                    sparse=base, mode=mode, interp=interp, gamma=8, window=16, sink=4, block_size=40, tail=8
                )


def poisoned(x: torch.Tensor, pos: int, value: float, channel: int) -> torch.Tensor:
    y = x.clone()
    y[0, 0, pos, channel] = value
    return y


def assert_rows_before_unchanged(clean: torch.Tensor, dirty: torch.Tensor, pos: int) -> None:
    assert torch.isfinite(clean).all()
    assert torch.equal(clean[:, :, :pos], dirty[:, :, :pos]), "a non-finite input changed an earlier row"


@pytest.mark.parametrize("cfg", list(causal_configs()), ids=lambda c: f"{c.sparse}-{c.mode}-{c.interp}")
@pytest.mark.parametrize("tensor", ["q", "k", "v"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_never_changes_earlier_rows(cfg, tensor, value, seed):
    n, d = 300, 16
    rng = random.Random(seed)
    pos, channel = rng.randrange(1, n), rng.randrange(d)
    q, k, v = make_qkv(seed, 1, 1, 2, n, d, torch.float32)
    if tensor == "q" and math.isinf(value):
        # key 0 (visible to every row) scores +inf against the poisoned query, so that row is not finite even
        # when every other visible key has the other sign in that channel (all scores −inf would give 0)
        k[:, :, 0, channel] = math.copysign(1.0, value)
    clean = delta_attention(q, k, v, cfg)
    inputs = {"q": q, "k": k, "v": v}
    inputs[tensor] = poisoned(inputs[tensor], pos, value, channel)
    dirty = delta_attention(inputs["q"], inputs["k"], inputs["v"], cfg)
    assert_rows_before_unchanged(clean, dirty, pos)
    if tensor == "q":  # the poisoned row itself reads its own query: its output for head 0 is not finite
        assert not torch.isfinite(dirty[0, 0, pos]).all()


@pytest.mark.parametrize("interp", CAUSAL_INTERPS)
def test_issue_reproduction_nan_query_with_ema(interp, seed):
    """A NaN in q[0, 0, 200] (window 16, sink 4, γ 8, tail 8) used to turn rows 128–199 into NaN with ema."""
    q, k, v = make_qkv(seed, 1, 1, 1, 300, 16, torch.float32)
    cfg = DeltaConfig(window=16, sink=4, gamma=8, tail=8, interp=interp)
    clean = delta_attention(q, k, v, cfg)
    dirty = delta_attention(poisoned(q, 200, float("nan"), 0), k, v, cfg)
    assert_rows_before_unchanged(clean, dirty, 200)


@pytest.mark.parametrize("interp", CAUSAL_INTERPS)
def test_chunked_prefill_with_a_non_finite_value_stays_causal(interp, seed):
    n = 240
    q, k, v = make_qkv(seed, 2, 1, 2, n, 16, torch.float32)
    cfg = DeltaConfig(window=16, sink=4, gamma=8, tail=8, interp=interp)

    def chunked(v):
        state = DeltaState()
        bounds = [(0, 101), (101, 170), (170, n)]
        outs = [
            delta_attention(q[:, :, a:b], k[:, :, :b], v[:, :, :b], cfg, prompt_len=n, state=state) for a, b in bounds
        ]
        return torch.cat(outs, dim=2)

    assert_rows_before_unchanged(chunked(v), chunked(poisoned(v, 150, float("nan"), 3)), 150)


@pytest.mark.parametrize("system", ["ema", "abg"])
def test_scan_poisons_a_channel_from_its_first_non_finite_input_on(system, seed):
    m, k = ema_system(0.8) if system == "ema" else abg_system(0.2, 0.02, 0.001)
    z = torch.randn(2, 3, 300, 4, dtype=torch.float64)
    s0 = initial_state(z[..., 0, :], m.shape[0])
    x_clean, _ = lti_scan(z, m, k, s0)
    bad = z.clone()
    bad[1, 2, 170, 1] = float("inf")
    x, s = lti_scan(bad, m, k, s0)
    assert torch.equal(x[..., :170, :], x_clean[..., :170, :])
    assert x[1, 2, 170:, 1].isnan().all() and s[1, 2, :, 1].isnan().all()
    others = torch.ones_like(x, dtype=torch.bool)
    others[1, 2, :, 1] = False
    assert torch.equal(x[others], x_clean[others]), "other channels changed"
