"""The backend contract (delta_attn.backend): the call plan, the carried state, backend selection."""

from __future__ import annotations

import pytest
import torch

from delta_attn import DeltaConfig, DeltaState, delta_attention
from delta_attn.backend import SequenceState, finish, plan_call
from delta_attn.config import INTERPS
from delta_attn.ops import select_backend
from delta_attn.reference import reference_prefill
from oracle import make_qkv

CAUSAL_INTERPS = [i for i in INTERPS if DeltaConfig(interp=i).is_causal]


def test_plan_of_a_chunk_inside_a_block():
    cfg = DeltaConfig(gamma=16, tail=20)  # prompt of 300: tail = 300 % 16 + 20 = 32 rows, body ends at 268
    state = SequenceState(next_pos=37, block_index=2, block_delta=torch.ones(1, 2, 4))
    plan = plan_call(cfg, 37, 120, 300, state)
    assert (plan.tail_start, plan.body_end, plan.tail_lo) == (268, 120, 120)
    assert (plan.anchor_lo, plan.n_anchors, plan.first_block, plan.last_block, plan.n_blocks) == (48, 5, 2, 7, 6)
    assert plan.dense_pos.tolist() == [48, 64, 80, 96, 112]
    assert plan.carried_delta is state.block_delta and plan.carried_scan is None
    finish(state, plan, last_delta=torch.zeros(1, 2, 4))
    assert (state.next_pos, state.block_index) == (120, 7) and not state.block_delta.any()


def test_plan_of_a_chunk_in_the_tail_needs_no_carry():
    cfg = DeltaConfig(gamma=16, tail=20)
    plan = plan_call(cfg, 270, 300, 300, None)  # all tail rows: no body, no Δ to carry
    assert not plan.has_body and plan.dense_pos.tolist() == list(range(270, 300))
    state = SequenceState(next_pos=270)
    finish(state, plan)
    assert state.next_pos == 300 and state.block_index == -1


@pytest.mark.parametrize("mode,expected", [("dense", list(range(10, 40))), ("sparse", []), ("recompute", [16, 32])])
def test_dense_rows_per_mode(mode, expected):
    plan = plan_call(DeltaConfig(gamma=16, tail=0, mode=mode), 10, 40, 48, None)
    assert plan.dense_pos.tolist() == expected and not plan.has_body


def test_missing_or_stale_state_is_a_clear_error():
    cfg = DeltaConfig(gamma=16)
    with pytest.raises(ValueError, match="continue the γ-block starting at 32.*same DeltaState"):
        plan_call(cfg, 40, 64, 300, None)
    with pytest.raises(ValueError, match="continue the γ-block"):
        plan_call(cfg, 40, 64, 300, SequenceState(next_pos=40, block_index=1))
    with pytest.raises(ValueError, match="interp='ema' carries a filter state"):
        plan_call(cfg.replace(interp="ema"), 32, 64, 300, SequenceState(next_pos=16, scan=torch.zeros(1)))
    plan_call(cfg, 32, 64, 300, None)  # block-aligned repeat: nothing to carry
    with pytest.raises(ValueError, match="must hand over the Δ"):
        finish(SequenceState(), plan_call(cfg, 0, 64, 300, None))


@pytest.mark.parametrize("interp", CAUSAL_INTERPS)
def test_shards_handing_over_plain_state_equal_one_shot(interp, seed):
    """The context-parallel contract: each shard starts from a fresh SequenceState built from the plain
    values the previous shard handed over (as a rank would receive them), and the result is the one-shot one."""
    n = 400
    q, k, v = make_qkv(seed, 1, 2, 2, n, 16)
    cfg = DeltaConfig(gamma=16, window=24, sink=3, tail=40, interp=interp)
    one_shot = reference_prefill(q, k, v, cfg, scale=0.25, prompt_len=n)
    outs, handed = [], {}
    for lo, hi in [(0, 123), (123, 250), (250, 333), (333, n)]:
        state = SequenceState(**handed)  # what this rank received (empty for the first shard)
        outs.append(
            reference_prefill(q[:, :, lo:hi], k[:, :, :hi], v[:, :, :hi], cfg, scale=0.25, prompt_len=n, state=state)
        )
        handed = dict(  # plain values, copied: what a rank would send to the next one
            next_pos=state.next_pos,
            block_index=state.block_index,
            block_delta=state.block_delta.clone(),
            scan=state.scan.clone() if state.scan is not None else None,
        )
        assert handed["next_pos"] == hi and handed["block_index"] == (min(hi, 360) - 1) // 16
    torch.testing.assert_close(torch.cat(outs, dim=2), one_shot, rtol=0, atol=1e-12)


def test_backend_selection_on_cpu():
    assert select_backend(DeltaConfig(), torch.device("cpu")) is reference_prefill
    assert select_backend(DeltaConfig(backend="reference"), torch.device("cpu")) is reference_prefill
    with pytest.raises(ValueError, match="backend='triton' needs CUDA"):
        select_backend(DeltaConfig(backend="triton"), torch.device("cpu"))


def test_operator_keeps_one_state_per_padding_group(seed):
    q, k, v = make_qkv(seed, 2, 1, 1, 64, 8)
    state = DeltaState()
    cfg = DeltaConfig(gamma=16)
    delta_attention(q[:, :, :40], k[:, :, :40], v[:, :, :40], cfg, prompt_len=64, state=state, left_pad=[0, 5])
    assert state.group((0,)).next_pos == 40 and state.group((1,)).next_pos == 35  # positions of each sequence
    state.reset()
    assert state.group((0,)).next_pos == 0
