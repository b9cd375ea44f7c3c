"""From sparse rows and dense rows to the output: the four modes and the four interpolations.

Every backend computes the same two things for the rows of a call — the sparse output Õ of every row
and the dense output D of the rows ``plan.dense_pos`` selects — and hands them to :func:`combine`
(docs/algorithm.md §3–§5). Kernels may fuse the combine step, but this is the definition. The call's
bookkeeping (which rows, which γ-blocks, the carried Δ and filter state) comes from
:func:`delta_attn.backend.plan_call`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backend import CallPlan, SequenceState, filter_start, finish
from .config import FILTER_INTERPS
from .scan import lti_scan


def combine(
    plan: CallPlan,
    sparse_out: Tensor | None,
    dense_out: Tensor | None,
    state: SequenceState | None = None,
) -> Tensor:
    """Assemble the output rows of one call and leave the carry for the next one in ``state``.

    Args:
        plan: the call's :class:`~delta_attn.backend.CallPlan`.
        sparse_out: Õ for every row of the call, (B, H, Nq, D); may be None for ``mode="dense"``.
        dense_out: D for the rows in ``plan.dense_pos``, (B, H, len(dense_pos), D).
        state: the sequence group's chunk carry (written for the next call; read through ``plan``).
    Returns:
        (B, H, Nq, D) in the dtype of the inputs.
    """
    mode = plan.config.mode
    if mode == "delta":
        return _delta(plan, sparse_out, dense_out, state)
    if mode == "dense":
        out = dense_out
    elif mode == "sparse":
        out = sparse_out
    else:  # recompute: Õ with the anchor and tail rows overwritten by D
        out = sparse_out.clone()
        out[:, :, plan.dense_pos - plan.q_start] = dense_out
    finish(state, plan)
    return out


def _delta(plan: CallPlan, sparse_out: Tensor, dense_out: Tensor, state: SequenceState | None) -> Tensor:
    """``mode="delta"``: Õ + Δ on the body rows, D on the tail rows (docs/algorithm.md §3, §5)."""
    config, gamma, q0, body_end = plan.config, plan.gamma, plan.q_start, plan.body_end
    local = plan.dense_pos - q0
    n_anchor = plan.n_anchors
    out = torch.empty_like(sparse_out)
    out[:, :, local[n_anchor:]] = dense_out[:, :, n_anchor:]  # the exact tail
    if not plan.has_body:
        finish(state, plan)
        return out
    deltas = dense_out[:, :, :n_anchor] - sparse_out[:, :, local[:n_anchor]]  # (B, H, nA, D)
    if plan.carried_delta is not None:
        deltas = torch.cat([plan.carried_delta.unsqueeze(2).to(deltas.dtype), deltas], dim=2)
    assert deltas.shape[2] == plan.n_blocks
    rows = torch.arange(q0, body_end, device=sparse_out.device)
    block_of_row = rows // gamma - plan.first_block
    z = deltas[:, :, block_of_row]  # repeat: Δ(i) = Δ_{i // γ}
    scan_state = None
    if config.interp == "linear":
        nxt = torch.cat([deltas[:, :, 1:], deltas[:, :, -1:]], dim=2)  # the last block keeps Δ_j
        t = ((rows % gamma).to(z.dtype) / gamma).view(1, 1, -1, 1)
        z = (1 - t) * z + t * nxt[:, :, block_of_row]
    elif config.interp in FILTER_INTERPS:
        m, k, s_prev = filter_start(plan, z[:, :, 0])
        z, scan_state = lti_scan(z, m, k, s_prev.to(z.dtype))
    out[:, :, : body_end - q0] = sparse_out[:, :, : body_end - q0] + z
    finish(state, plan, last_delta=deltas[:, :, -1], scan_state=scan_state)
    return out
