"""The backend contract: what a prefill backend is given, what it must return, and what it carries.

A *backend* computes Δ attention for one group of sequences that share positions (one batch without
left padding, or the sequences of a batch with the same left padding; :func:`delta_attn.delta_attention`
does the grouping). Two exist: :func:`delta_attn.reference.reference_prefill` (PyTorch, any device)
and :func:`delta_attn.kernels.triton_prefill` (CUDA). Every backend follows :class:`Backend`:

* **Rows at absolute positions.** ``q`` holds the last Nq of the Nk key positions: query row r sits
  at position ``q_start + r`` with ``q_start = Nk - Nq`` and sees keys ``0..q_start + r``. A one-shot
  prefill has Nq = Nk; a later chunk of a chunked prefill, or one shard of a context-parallel prefill,
  passes only its own rows with the keys of everything before them (docs/algorithm.md §8).
* **The prompt length places the exact tail.** ``prompt_len`` (≥ Nk) is the length N of the whole
  prompt; the tail is the last ``config.tail_rows(N)`` positions of *the prompt*, not of the call.
* **The state carries what crosses a boundary** (:class:`SequenceState`): the Δ of the γ-block that
  is still open at ``q_start`` (its anchor row lies before the call) and, for ``ema``/``abg``, the
  filter state after row ``q_start - 1``. A call reads it and leaves the values for its own end.

The bookkeeping every backend needs is written once here: :func:`plan_call` turns (config, positions,
state) into a frozen :class:`CallPlan` — which rows are dense, where the body ends, which γ-blocks
the call touches, the carried Δ and filter state (checked) — and :func:`finish` writes the state for
the next call. A backend only computes Õ (the sparse rows) and D (the dense rows) and combines them
(:func:`delta_attn.combine.combine` is the definition; kernels may fuse it).

Writing a new backend (e.g. context-parallel: rank r holds the rows ``[q0, q1)`` and the keys
``[0, q1)``)::

    def my_prefill(q, k, v, config, *, scale, prompt_len, state=None):
        plan = plan_call(config, k.shape[2] - q.shape[2], k.shape[2], prompt_len, state, device=q.device)
        ...  # Õ of the rows, D of plan.dense_pos; Δ of the anchors; plan.carried_delta for the open block
        m, k_sys, s_prev = filter_start(plan, first_delta)   # ema/abg only
        ...
        finish(state, plan, last_delta=deltas[:, :, -1], scan_state=s_last)
        return out

For context parallelism each rank builds a :class:`SequenceState` from what the previous shard
handed over (``next_pos=q0``, ``block_index=q0 // γ``, ``block_delta``: the Δ of the block open at q0,
``scan``: the filter state after row q0 − 1; for ``delta_scale="auto"`` also ``scale_sums``, the two running
sums through the block before q0's first anchor, with ``block_delta`` the raw Δ of that block) and hands
its own end state to the next rank. The Δ of
the open block needs only that block's anchor row (one dense and one sparse row), so it can be sent
early; the ``ema``/``abg`` state is an affine function of the state before the shard
(``s_end = M^L s_start + local term``, see :mod:`delta_attn.filters`), so shards can compute their local
terms in parallel and fix them up with one small scan over the ranks. tests/test_backend.py runs
shards that hand over exactly these plain values and checks the one-shot result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import torch
from torch import Tensor

from .config import CAUSAL_SCALE_MODES, FILTER_INTERPS, DeltaConfig
from .filters import abg_system, ema_system, initial_state


@dataclass
class SequenceState:
    """What one group of sequences carries from a call to the next (chunks or shards of one prompt).

    next_pos:    the position the next call must start at (the previous call's Nk).
    block_index: the γ-block whose Δ is held in ``block_delta`` (-1: none yet).
    block_delta: (B, Hq, D) Δ of that block, in the dtype the backend computed it in.
    scan:        (B, Hq, S, D) state of the ``ema``/``abg`` filter after row ``next_pos - 1``
                 (S = 1 for ema, 3 for abg); None for the other interpolations.
    scale_sums:  (B, Hq, 2) float64 running sums (Σ⟨Δ_i, Δ_{i-1}⟩, Σ‖Δ_{i-1}‖²) over the anchors
                 1..``block_index`` for ``delta_scale="auto"`` (docs/algorithm.md §13); None otherwise.
                 ``block_delta`` stays the raw (unscaled) Δ, the next anchor's predecessor.
    """

    next_pos: int = 0
    block_index: int = -1
    block_delta: Tensor | None = None
    scan: Tensor | None = None
    scale_sums: Tensor | None = None


@dataclass
class DeltaState:
    """What one layer carries from chunk to chunk in a chunked prefill.

    Create one per layer (``DeltaState()``), pass it to every :func:`delta_attention` call of that
    layer's chunks in order, and drop it when the prompt is done. It holds, per group of sequences
    with the same left padding, a :class:`SequenceState`: the Δ of the γ-block that is still open at
    the chunk boundary and, for ``ema``/``abg``, the filter state.
    """

    _groups: dict = field(default_factory=dict, repr=False)

    def group(self, key) -> SequenceState:
        """The :class:`SequenceState` of the sequences ``key`` (a tuple of batch indices), created on first use."""
        return self._groups.setdefault(key, SequenceState())

    def reset(self) -> None:
        """Forget every group (start a new prompt with the same object)."""
        self._groups.clear()


class Backend(Protocol):
    """A prefill backend: any callable with this signature.

    Args:
        q: (B, Hq, Nq, D); k, v: (B, Hkv, Nk, D) with ``Hq % Hkv == 0`` and ``Nk >= Nq``: the queries
            are the last Nq key positions (validated by :func:`delta_attn.delta_attention`).
        config: the :class:`DeltaConfig` (mode, base, γ, interpolation, ...).
        scale: the softmax scale.
        prompt_len: the whole prompt's length N (≥ Nk); it places the exact tail.
        state: the group's :class:`SequenceState` (None for a one-shot prefill); read through
            :func:`plan_call` and written through :func:`finish`.
    Returns:
        (B, Hq, Nq, D): the output rows, in q's dtype or a wider one (the caller casts).
    """

    def __call__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        config: DeltaConfig,
        *,
        scale: float,
        prompt_len: int,
        state: SequenceState | None = None,
    ) -> Tensor: ...


@dataclass(frozen=True)
class CallPlan:
    """The rows of one backend call and what it continues (built by :func:`plan_call`).

    The call's queries sit at absolute positions ``[q_start, n_keys)`` of a prompt of ``prompt_len``
    tokens; ``tail_start`` is where the prompt's exact tail begins.

    dense_pos:     absolute positions (ascending, on the call's ``device``) whose dense output D the
                   backend computes: the anchors ``anchor_lo, anchor_lo + γ, … < body_end`` then the
                   tail rows ``[tail_lo, n_keys)`` (every row for ``dense``, none for ``sparse``). Built on
                   first use: the Triton backend describes the same rows by numbers
                   (:class:`delta_attn.kernels.dense_rows.RowSet`) and never needs the tensor, whose
                   three small device kernels and allocations were host time before every call's first kernel.
    carried_delta: (B, Hq, D) Δ of the γ-block open at ``q_start`` (its anchor came in an earlier
                   call), or None when the call starts a block or needs no Δ.
    carried_scan:  (B, Hq, S, D) ``ema``/``abg`` filter state after row ``q_start - 1``, or None.
    carried_sums:  (B, Hq, 2) float64 ``delta_scale="auto"`` running sums through the γ-block before the
                   call's first anchor (docs/algorithm.md §13), or None when the call starts the prompt.
    previous_delta: (B, Hq, D) raw Δ of the γ-block ending at ``q_start`` when the call starts on a
                   block boundary (``delta_scale="auto"`` reads it as its first anchor's predecessor).
    """

    config: DeltaConfig
    q_start: int
    n_keys: int
    prompt_len: int
    tail_start: int
    device: torch.device | str | None = None
    carried_delta: Tensor | None = None
    carried_scan: Tensor | None = None
    carried_sums: Tensor | None = None
    previous_delta: Tensor | None = None

    @cached_property
    def dense_pos(self) -> Tensor:
        config, q_start, n_keys = self.config, self.q_start, self.n_keys
        if config.mode == "dense":
            return torch.arange(q_start, n_keys, device=self.device)
        if config.mode == "sparse":
            return torch.arange(0, device=self.device)
        # the anchors jγ ≥ q_start below the tail, then the tail: two aranges, no boolean index (a host sync)
        first_anchor, anchor_end, dev = self.anchor_lo, min(self.tail_start, n_keys), self.device
        return torch.cat(
            [
                torch.arange(first_anchor, max(first_anchor, anchor_end), config.gamma, device=dev),
                torch.arange(self.tail_lo, n_keys, device=dev),
            ]
        )

    @property
    def gamma(self) -> int:
        return self.config.gamma

    @property
    def n_queries(self) -> int:
        return self.n_keys - self.q_start

    @property
    def body_end(self) -> int:
        """End of the rows that get Õ + Δ: ``[q_start, body_end)``; the rows from there on are exact."""
        return min(self.n_keys, self.tail_start)

    @property
    def tail_lo(self) -> int:
        """First exact tail row of this call (``n_keys`` when the call has none)."""
        return min(self.n_keys, max(self.q_start, self.tail_start))

    @property
    def anchor_lo(self) -> int:
        """First anchor position at or after ``q_start`` (may be ≥ ``body_end``: then the call has no anchor)."""
        return -(-self.q_start // self.gamma) * self.gamma

    @property
    def n_anchors(self) -> int:
        """Anchor rows in this call (the first ``n_anchors`` entries of ``dense_pos`` in delta/recompute)."""
        return len(range(self.anchor_lo, self.body_end, self.gamma))

    @property
    def has_body(self) -> bool:
        """Whether this ``delta`` call has rows that get Õ + Δ (and so reads and writes the carry)."""
        return self.config.mode == "delta" and self.body_end > self.q_start

    @property
    def first_block(self) -> int:
        """γ-block of the first body row."""
        return self.q_start // self.gamma

    @property
    def last_block(self) -> int:
        """γ-block of the last body row (only meaningful when :attr:`has_body`)."""
        return (self.body_end - 1) // self.gamma

    @property
    def n_blocks(self) -> int:
        """γ-blocks the body touches: the open one (if any) and one per anchor."""
        return self.last_block - self.first_block + 1 if self.has_body else 0


def plan_call(
    config: DeltaConfig,
    q_start: int,
    n_keys: int,
    prompt_len: int,
    state: SequenceState | None = None,
    *,
    device: torch.device | str | None = None,
) -> CallPlan:
    """The :class:`CallPlan` of a call whose queries are the positions ``[q_start, n_keys)``.

    Reads (and checks) the carry a ``delta`` call needs from ``state``: the Δ of the open γ-block when
    ``q_start`` is not a multiple of γ, the ``ema``/``abg`` filter state when ``q_start > 0``, and for
    ``delta_scale="auto"`` the running sums and the previous block's Δ. Raises ``ValueError``
    telling the caller to pass the same state to every chunk, in order, when it is missing or belongs
    to another position, and for a non-causal Δ variant (``delta_scale="auto-global"``,
    ``extra_anchors``) asked for a part of a prompt.
    """
    if config.mode == "delta" and (config.delta_scale == "auto-global" or config.extra_anchors > 0):
        if q_start > 0 or prompt_len > n_keys:  # (linear runs on row blocks of one call: it reads its own keys)
            config.require_causal("a part of the prompt cannot be prefilled alone")
    tail_start = prompt_len - config.tail_rows(prompt_len)
    plan = CallPlan(config, q_start, n_keys, prompt_len, tail_start, device)
    if not plan.has_body:
        return plan
    carried_delta = carried_scan = None
    if q_start % config.gamma:
        if state is None or state.block_index != plan.first_block:
            raise ValueError(
                f"rows from position {q_start} continue the γ-block starting at {plan.first_block * config.gamma}, "
                "whose Δ was computed in an earlier chunk: pass the same DeltaState to every chunk of this "
                "layer, in order"
            )
        carried_delta = state.block_delta
    if config.interp in FILTER_INTERPS and q_start > 0:
        if state is None or state.scan is None or state.next_pos != q_start:
            raise ValueError(
                f"interp={config.interp!r} carries a filter state across chunks: pass the same DeltaState "
                "to every chunk of this layer, in order"
            )
        carried_scan = state.scan
    carried_sums = previous_delta = None
    if config.delta_scale in CAUSAL_SCALE_MODES and q_start > 0:
        if state is None or state.scale_sums is None or state.next_pos != q_start:
            raise ValueError(
                'delta_scale="auto" carries running sums across chunks: pass the same DeltaState to every '
                "chunk of this layer, in order"
            )
        carried_sums = state.scale_sums
        if q_start % config.gamma == 0:  # the previous call ended the block before our first anchor
            if state.block_index != plan.first_block - 1:
                raise ValueError(
                    f"the γ-block before position {q_start} was not the previous chunk's last: pass the same "
                    "DeltaState to every chunk of this layer, in order"
                )
            previous_delta = state.block_delta
    return CallPlan(
        config,
        q_start,
        n_keys,
        prompt_len,
        tail_start,
        device,
        carried_delta,
        carried_scan,
        carried_sums,
        previous_delta,
    )


def extra_anchor_count(config: DeltaConfig, n_blocks: int) -> int:
    """How many γ-blocks of a body of ``n_blocks`` get an extra dense row (``extra_anchors``, §13).

    ``ceil(extra_anchors · n_blocks)``, at most the ``n_blocks − 1`` blocks that have a next anchor;
    0 for γ < 2 (a block of one row has no midpoint) and outside ``mode="delta"``.
    """
    if config.mode != "delta" or config.extra_anchors <= 0 or config.gamma < 2 or n_blocks < 2:
        return 0
    # the 1e-9 keeps a product like 0.1·30 = 3.0000000000000004 from rounding up to 4
    return min(n_blocks - 1, math.ceil(config.extra_anchors * n_blocks - 1e-9))


def filter_system(config: DeltaConfig) -> tuple[Tensor, Tensor]:
    """(M, K) in float64 of the ``ema``/``abg`` filter ``s_i = M s_{i-1} + K z_i`` (docs/algorithm.md §5)."""
    if config.interp == "ema":
        return ema_system(config.ema_beta)
    if config.interp == "abg":
        return abg_system(*config.abg_coefficients)
    raise ValueError(f"interp={config.interp!r} has no filter; only 'ema' and 'abg' do")


def filter_start(plan: CallPlan, z0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(M, K, s_prev) of the ``ema``/``abg`` filter for the call's first body row.

    A prompt's first call starts the filter from its first input ``z0`` (B, Hq, D), so the first
    anchor row stays exact; a later call continues from ``plan.carried_scan``.
    """
    m, k = filter_system(plan.config)
    if plan.q_start == 0:
        return m, k, initial_state(z0, m.shape[0])
    return m, k, plan.carried_scan


def finish(
    state: SequenceState | None,
    plan: CallPlan,
    last_delta: Tensor | None = None,
    scan_state: Tensor | None = None,
    scale_sums: Tensor | None = None,
) -> None:
    """Leave in ``state`` what the next call of the prompt needs.

    last_delta: (B, Hq, D) raw (unscaled) Δ of the call's last body block (required when ``plan.has_body``).
    scan_state: (B, Hq, S, D) ``ema``/``abg`` filter state after the last body row (None otherwise).
    scale_sums: (B, Hq, 2) ``delta_scale="auto"`` running sums through the last body block (None otherwise).
    """
    if state is None:
        return
    if plan.has_body:
        if last_delta is None:
            raise ValueError("finish(): a delta call with body rows must hand over the Δ of its last γ-block")
        state.block_index = plan.last_block
        state.block_delta = last_delta
        if scan_state is not None:
            state.scan = scan_state
        if scale_sums is not None:
            state.scale_sums = scale_sums
    state.next_pos = plan.n_keys
