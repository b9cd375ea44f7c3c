"""``plan_call``'s dense rows (anchors jγ and the exact tail) equal the boolean-mask definition for any call
window, prompt length, γ and tail: they are built from two aranges, because a boolean index on the GPU
synchronises the host on every layer's call (docs/algorithm.md §2)."""

import random

import pytest
import torch

from delta_attn import DeltaConfig
from delta_attn.backend import plan_call


def _expected(q_start: int, n_keys: int, prompt_len: int, config: DeltaConfig) -> torch.Tensor:
    pos = torch.arange(q_start, n_keys)
    tail_start = prompt_len - config.tail_rows(prompt_len)
    return pos[((pos % config.gamma) == 0) | (pos >= tail_start)]


@pytest.mark.parametrize("mode", ["delta", "recompute"])
def test_dense_positions_match_the_mask_definition(mode):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    for _ in range(200):
        gamma = rng.choice([1, 3, 8, 16, 64])
        tail = rng.choice([1, 5, 64, 128])
        prompt_len = rng.randrange(1, 3000)
        n_keys = rng.randrange(1, prompt_len + 1)
        # q_start on a block boundary (a state-free call); chunks inside a block need the carried Δ
        q_start = rng.randrange(0, n_keys) // gamma * gamma
        config = DeltaConfig(mode=mode, gamma=gamma, tail=tail, sink=4, window=16)
        plan = plan_call(config, q_start, n_keys, prompt_len, None)
        want = _expected(q_start, n_keys, prompt_len, config)
        assert torch.equal(plan.dense_pos, want), (seed, gamma, tail, prompt_len, n_keys, q_start)


def test_dense_positions_are_built_only_when_read(monkeypatch):
    """The Triton backend never reads ``dense_pos`` (it describes the rows by numbers): building it eagerly cost
    three device kernels and allocations of host time before every call's first kernel."""
    made = []
    real_arange = torch.arange

    def counting_arange(*args, **kwargs):
        made.append(args)
        return real_arange(*args, **kwargs)

    monkeypatch.setattr(torch, "arange", counting_arange)
    plan = plan_call(DeltaConfig(gamma=16, tail=16), 0, 500, 500)
    assert made == [] and "dense_pos" not in vars(plan)
    first = plan.dense_pos
    assert len(made) == 2 and plan.dense_pos is first  # built once, then cached
    monkeypatch.undo()
    assert torch.equal(first, _expected(0, 500, 500, DeltaConfig(gamma=16, tail=16)))
