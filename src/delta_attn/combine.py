"""From sparse rows and dense rows to the output: the row schedule, the four modes, the four
interpolations, and the state that chunked prefill carries between chunks.

Every backend computes the same two things — the sparse output Õ of the rows of a call and the
dense output D of the rows :func:`row_schedule` selects — and hands them to :func:`combine`
(algorithm.md §3–§5). Kernels may fuse the combine step, but this is the definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .config import DeltaConfig
from .scan import abg_system, ema_system, initial_state, lti_scan


@dataclass(frozen=True)
class RowSchedule:
    """Which rows of one call are computed densely.

    The call's queries sit at absolute positions ``[q_start, n_keys)`` of a prompt of
    ``prompt_len`` tokens. Rows at ``>= tail_start`` form the exact tail; ``dense_pos`` lists the
    absolute positions (ascending) whose dense output the backend must compute.
    """

    q_start: int
    n_keys: int
    prompt_len: int
    tail_start: int
    gamma: int
    dense_pos: Tensor

    @property
    def n_queries(self) -> int:
        return self.n_keys - self.q_start


def row_schedule(config: DeltaConfig, q_start: int, n_keys: int, prompt_len: int, device=None) -> RowSchedule:
    """Anchor and tail rows of the call (all rows for ``dense``, none for ``sparse``)."""
    tail_start = prompt_len - config.tail_rows(prompt_len)
    pos = torch.arange(q_start, n_keys, device=device)
    if config.mode == "dense":
        dense = pos
    elif config.mode == "sparse":
        dense = pos[:0]
    else:
        dense = pos[((pos % config.gamma) == 0) | (pos >= tail_start)]
    return RowSchedule(q_start, n_keys, prompt_len, tail_start, config.gamma, dense)


@dataclass
class _SequenceState:
    next_pos: int = 0
    block_index: int = -1  # γ-block whose Δ is held in block_delta
    block_delta: Tensor | None = None  # (B, H, D)
    scan: Tensor | None = None  # (B, H, S, D): filter state after row next_pos - 1


@dataclass
class DeltaState:
    """What one layer carries from chunk to chunk in a chunked prefill.

    Create one per layer (``DeltaState()``), pass it to every :func:`delta_attention` call of that
    layer's chunks in order, and drop it when the prompt is done. It holds the Δ of the γ-block that
    is still open at the chunk boundary and, for ``ema``/``abg``, the filter state.
    """

    _groups: dict = field(default_factory=dict, repr=False)

    def group(self, key) -> _SequenceState:
        return self._groups.setdefault(key, _SequenceState())

    def reset(self) -> None:
        self._groups.clear()


def open_block_delta(state: _SequenceState | None, q0: int, gamma: int) -> Tensor | None:
    """Δ of the γ-block a call starting at row ``q0`` continues (None when ``q0`` starts a block).

    That block's anchor came in an earlier chunk, so its Δ must come from the chunk carry.
    """
    if q0 % gamma == 0:
        return None
    first_block = q0 // gamma
    if state is None or state.block_index != first_block:
        raise ValueError(
            f"rows from position {q0} continue the γ-block starting at {first_block * gamma}, whose Δ was "
            "computed in an earlier chunk: pass the same DeltaState to every chunk of this layer, in order"
        )
    return state.block_delta


def _interp_system(config: DeltaConfig) -> tuple[Tensor, Tensor]:
    if config.interp == "ema":
        return ema_system(config.ema_beta)
    return abg_system(*config.abg_coefficients)


def scan_start(config: DeltaConfig, state: _SequenceState | None, q0: int, z0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(M, K, s_prev) of the ``ema``/``abg`` filter for a call whose first row is ``q0``.

    A prompt's first call starts the filter from its first input ``z0``; a later chunk continues from
    the state the previous chunk left in ``state`` (every backend goes through here).
    """
    m, k = _interp_system(config)
    if q0 == 0:
        return m, k, initial_state(z0, m.shape[0])
    if state is None or state.scan is None or state.next_pos != q0:
        raise ValueError(
            f"interp={config.interp!r} carries a filter state across chunks: pass the same DeltaState "
            "to every chunk of this layer, in order"
        )
    return m, k, state.scan


def combine(
    config: DeltaConfig,
    sched: RowSchedule,
    sparse_out: Tensor | None,
    dense_out: Tensor | None,
    state: _SequenceState | None = None,
) -> Tensor:
    """Assemble the output rows of one call.

    Args:
        sparse_out: Õ for every row of the call, (B, H, Nq, D); may be None for ``mode="dense"``.
        dense_out: D for the rows in ``sched.dense_pos``, (B, H, len(dense_pos), D).
        state: the sequence's chunk carry (required by ``delta`` when the call does not start a prompt).
    Returns:
        (B, H, Nq, D) in the dtype of the inputs.
    """
    mode = config.mode
    if mode == "dense":
        return dense_out
    if mode == "sparse":
        return sparse_out
    local = sched.dense_pos - sched.q_start
    if mode == "recompute":
        out = sparse_out.clone()
        out[:, :, local] = dense_out
        return out

    # mode == "delta"
    gamma, q0 = sched.gamma, sched.q_start
    body_end = min(sched.n_keys, sched.tail_start)  # rows [q0, body_end) get Õ + Δ; the rest are exact
    out = torch.empty_like(sparse_out)
    is_tail = sched.dense_pos >= sched.tail_start
    out[:, :, local[is_tail]] = dense_out[:, :, is_tail]
    if body_end > q0:
        anchor_local = local[~is_tail]
        deltas = dense_out[:, :, ~is_tail] - sparse_out[:, :, anchor_local]  # (B, H, nA, D)
        first_block, last_block = q0 // gamma, (body_end - 1) // gamma
        carry = open_block_delta(state, q0, gamma)
        if carry is not None:
            deltas = torch.cat([carry.unsqueeze(2).to(deltas.dtype), deltas], dim=2)
        assert deltas.shape[2] == last_block - first_block + 1
        rows = torch.arange(q0, body_end, device=sparse_out.device)
        block_of_row = rows // gamma - first_block
        z = deltas[:, :, block_of_row]  # repeat: Δ(i) = Δ_{i // γ}
        if config.interp == "linear":
            nxt = torch.cat([deltas[:, :, 1:], deltas[:, :, -1:]], dim=2)  # last block keeps Δ_j
            t = ((rows % gamma).to(z.dtype) / gamma).view(1, 1, -1, 1)
            z = (1 - t) * z + t * nxt[:, :, block_of_row]
        elif config.interp in ("ema", "abg"):
            m, k, s_prev = scan_start(config, state, q0, z[:, :, 0])
            z, s_last = lti_scan(z, m, k, s_prev.to(z.dtype))
            if state is not None:
                state.scan = s_last
        out[:, :, : body_end - q0] = sparse_out[:, :, : body_end - q0] + z
        if state is not None:
            state.block_index = last_block
            state.block_delta = deltas[:, :, -1]
    if state is not None:
        state.next_pos = sched.n_keys
    return out
