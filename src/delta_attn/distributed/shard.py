"""One context-parallel shard without communication: the local call and the carry fix-up.

A shard is the rows ``[q0, q1)`` of a prompt of N tokens with the keys ``[0, q1)`` (the backend
contract, :mod:`delta_attn.backend`). What crosses a shard boundary in ``mode="delta"`` is

* Δ_in — the Δ of the γ-block open at q0 (its anchor lies on an earlier rank), and
* s_start — for ``ema``/``abg``, the filter state after row q0 − 1.

Both enter the shard's body rows *linearly*: the filter is linear, and Δ_in is the filter's input on
the ``m`` rows of the open block. So every rank runs its backend call once with zero carries
(:func:`local_shard`) — all ranks in parallel, no dependency chain — and afterwards adds the response
to the true carries (:func:`apply_carry`). The true carries come from a small exclusive scan over the
ranks' summaries (:func:`carries_from_summaries`): each rank's end state is an affine function of its
start state, ``s_end = M^L s_start + M^(L−m) G_m Δ_in + s_local`` with ``G_m = Σ_{t<m} M^t K``
(docs/algorithm.md §5), computed with S×S matrices only.

Everything here is single-process and backend-agnostic, so the tests check it without ranks too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..backend import Backend, SequenceState, filter_system, plan_call
from ..config import FILTER_INTERPS, DeltaConfig
from ..filters import lti_scan
from ..reference import default_compute_dtype

CARRY_CHUNK_ROWS = 8192  # rows of the filter fix-up held at once (bounded extra memory)


@dataclass
class ShardSummary:
    """What one rank tells the others after its local call (plain values, one small tensor).

    n_body:     body rows of the shard (rows that get Õ + Δ), L.
    open_rows:  of those, the rows of the γ-block open at q0 (whose Δ came from an earlier rank), m.
    has_anchor: whether the shard's body holds an anchor row (then ``last_delta`` is the Δ of its last one).
    last_delta: (B, H, D) Δ of the shard's last anchor (zeros when it has none).
    scan_end:   (B, H, S, D) filter state after the shard's last body row, computed from a zero start
                (the true one for the first shard); zeros for the interpolations without a filter.
    """

    n_body: int
    open_rows: int
    has_anchor: bool
    last_delta: Tensor
    scan_end: Tensor


def n_filter_states(config: DeltaConfig) -> int:
    """S of the ``ema``/``abg`` filter state (0 for the other interpolations)."""
    return filter_system(config)[0].shape[0] if config.interp in FILTER_INTERPS else 0


def local_shard(
    q: Tensor, k: Tensor, v: Tensor, config: DeltaConfig, *, scale: float, prompt_len: int, backend: Backend
) -> tuple[Tensor, ShardSummary]:
    """The shard's output with zero carries (in the compute dtype or q's) and its :class:`ShardSummary`.

    q: (B, Hq, n, D) at positions ``[q0, q1)``; k, v: (B, Hkv, q1, D) — every key up to the shard's end.
    """
    bsz, hq, n, d = q.shape
    q1 = k.shape[2]
    q0 = q1 - n
    cdt = default_compute_dtype(q.dtype)
    gamma = config.gamma
    n_states = n_filter_states(config)
    state = SequenceState(next_pos=q0)
    tail_start = prompt_len - config.tail_rows(prompt_len)
    if config.mode == "delta" and q0 < tail_start and q0 > 0:  # zero carries: fixed up later
        if q0 % gamma:
            state.block_index = q0 // gamma
            state.block_delta = q.new_zeros(bsz, hq, d, dtype=cdt)
        if n_states:
            state.scan = q.new_zeros(bsz, hq, n_states, d, dtype=cdt)
    plan = plan_call(config, q0, q1, prompt_len, state, device=q.device)
    out = backend(q, k, v, config, scale=scale, prompt_len=prompt_len, state=state)
    last_delta = q.new_zeros(bsz, hq, d, dtype=cdt)
    scan_end = q.new_zeros(bsz, hq, n_states, d, dtype=cdt)
    n_body = open_rows = 0
    has_anchor = False
    if plan.has_body:
        n_body = plan.body_end - q0
        if q0 % gamma:
            open_rows = min((plan.first_block + 1) * gamma, plan.body_end) - q0
        has_anchor = plan.n_anchors > 0
        if has_anchor:
            last_delta = state.block_delta.to(cdt)
        if n_states:
            scan_end = state.scan.to(cdt)
    return out, ShardSummary(n_body, open_rows, has_anchor, last_delta, scan_end)


def carries_from_summaries(
    config: DeltaConfig, summaries: list[ShardSummary], rank: int
) -> tuple[Tensor | None, Tensor | None]:
    """(Δ_in, s_start) of shard ``rank`` from the summaries of the shards before it (an exclusive scan).

    Δ_in: the last anchor Δ of the latest earlier shard that has one, times a float ``delta_scale``
    (None when the shard opens no block inherited from before). s_start: the true filter state after the
    previous shard (None without a filter, or for the first shard, whose filter starts from its own first Δ).
    """
    me = summaries[rank]
    if me.n_body == 0:
        return None, None

    def delta_into(j: int) -> Tensor | None:
        return next((s.last_delta for s in reversed(summaries[:j]) if s.has_anchor), None)

    lam = float(config.delta_scale)  # a float λ scales every Δ before it reaches a row (docs/algorithm.md §13)
    if lam != 1.0:
        inner = delta_into

        def delta_into(j: int) -> Tensor | None:
            raw = inner(j)
            return None if raw is None else raw * lam

    delta_in = delta_into(rank) if me.open_rows else None
    if me.open_rows and delta_in is None:
        raise AssertionError(f"shard {rank} continues a γ-block but no earlier shard holds an anchor")
    if config.interp not in FILTER_INTERPS or rank == 0:
        return delta_in, None
    m64, k64 = filter_system(config)
    s = torch.zeros_like(me.scan_end)
    for j in range(rank):  # s_end_j = M^L s_start_j + M^(L-m) G_m Δ_in_j + s_local_j
        sj = summaries[j]
        if sj.n_body == 0:
            continue
        power = torch.linalg.matrix_power(m64, sj.n_body).to(s)
        s = torch.einsum("rs,...sd->...rd", power, s) + sj.scan_end
        if sj.open_rows:
            gain = _step_response(m64, k64, sj.open_rows, sj.n_body).to(s)  # (S,)
            s = s + gain.view(-1, 1) * delta_into(j).unsqueeze(-2)
    return delta_in, s


def _step_response(m: Tensor, k: Tensor, steps_on: int, steps_total: int) -> Tensor:
    """State after ``steps_total`` steps from zero of an input equal to 1 for the first ``steps_on``: (S,)."""
    g = torch.zeros_like(k)
    for _ in range(steps_on):
        g = m @ g + k
    return torch.linalg.matrix_power(m, steps_total - steps_on) @ g


def apply_carry(
    out: Tensor, config: DeltaConfig, summary: ShardSummary, delta_in: Tensor | None, s_start: Tensor | None
) -> Tensor:
    """Add the response to the true carries to the shard's body rows of ``out`` (in place; returns it)."""
    if delta_in is None and s_start is None:
        return out
    if config.interp not in FILTER_INTERPS:  # repeat: the open block's rows get Δ_in
        m = summary.open_rows
        out[:, :, :m] = (out[:, :, :m].to(delta_in.dtype) + delta_in.unsqueeze(2)).to(out.dtype)
        return out
    m64, k64 = filter_system(config)
    exact_anchors = float(config.delta_scale) != 1.0  # docs/algorithm.md §13
    bsz, hq, _, d = out.shape
    ref = delta_in if delta_in is not None else s_start
    s = s_start if s_start is not None else ref.new_zeros(bsz, hq, m64.shape[0], d)
    for r0 in range(0, summary.n_body, CARRY_CHUNK_ROWS):  # chunks: O(chunk) extra memory at 1M tokens
        r1 = min(summary.n_body, r0 + CARRY_CHUNK_ROWS)
        z = ref.new_zeros(bsz, hq, r1 - r0, d)
        if delta_in is not None and r0 < summary.open_rows:
            z[:, :, : summary.open_rows - r0] = delta_in.unsqueeze(2)
        x, s = lti_scan(z, m64, k64, s)
        if exact_anchors:  # λ ≠ 1: the anchor rows hold D itself, which no carry changes
            r = torch.arange(r0, r1, device=x.device)
            x[:, :, (r >= summary.open_rows) & ((r - summary.open_rows) % config.gamma == 0)] = 0
        out[:, :, r0:r1] = (out[:, :, r0:r1].to(x.dtype) + x).to(out.dtype)
    return out
