"""Which rows of a vLLM batch run Δ, which run stock FlashAttention, and what a chunk carries (pure; no vLLM).

A vLLM step is one flat batch of query tokens: request r owns the tokens ``[qsl[r], qsl[r+1])`` and sits at
absolute positions ``[seq_len[r] − n_r, seq_len[r])`` of its sequence (its earlier positions are in the
paged KV cache). Decode tokens and chunks of prompt prefills are mixed freely, and a long prompt arrives
over several steps (chunked prefill). :func:`plan_batch` splits the batch:

* **Δ rows** (:class:`DeltaRows`): the prompt rows of a request whose prompt has at least ``min_prompt``
  tokens. The rows keep their absolute positions, so anchors and windows fall where a one-shot prefill
  puts them, and the exact tail is placed from the whole prompt's length — it only appears in the chunk
  that reaches the prompt's end (docs/algorithm.md §8).
* **Dense rows** (:class:`DenseRows`): everything else — decode tokens (positions past the prompt,
  speculative tokens included), prompts shorter than ``min_prompt``, the re-prefilled output tokens of a
  request resumed after preemption — run vLLM's stock FlashAttention over the paged cache, unchanged.

:class:`PrefillCarry` keeps what a chunk hands to the next chunk of the same prompt in one layer
(:class:`delta_attn.DeltaState`), keyed by vLLM's request id, and decides with :func:`chunk_rows` what to do
when that carry is missing (a prefix-cache hit or a preemption starts a prompt in the middle).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from ..backend import DeltaState
from ..config import CAUSAL_SCALE_MODES, FILTER_INTERPS, DeltaConfig

logger = logging.getLogger("delta_attn.vllm")


@dataclass(frozen=True)
class DenseRows:
    """Batch tokens ``[token_lo, token_hi)`` of request ``req_index``, run by stock FlashAttention.

    The rows are the last ones of the request's keys ``0 .. seq_len − kv_trim − 1`` (bottom-right causal
    alignment, as FlashAttention places them); ``kv_trim`` > 0 when rows after them in the same request
    take another path.
    """

    token_lo: int
    token_hi: int
    req_index: int
    kv_trim: int = 0

    @property
    def n_rows(self) -> int:
        return self.token_hi - self.token_lo


@dataclass(frozen=True)
class DeltaRows:
    """Batch tokens ``[token_lo, token_hi)``: prompt rows of request ``req_index`` at positions ``[q_start, n_keys)``.

    prompt_len: the whole prompt's length N (places the exact tail); ``n_keys ≤ prompt_len``.
    req_id:     vLLM's request id (the key of the carried state).
    """

    token_lo: int
    token_hi: int
    req_index: int
    req_id: str
    q_start: int
    prompt_len: int

    @property
    def n_rows(self) -> int:
        return self.token_hi - self.token_lo

    @property
    def n_keys(self) -> int:
        return self.q_start + self.n_rows

    @property
    def is_last_chunk(self) -> bool:
        """Whether this chunk reaches the end of the prompt (it holds the exact tail; the carry is dropped after it)."""
        return self.n_keys >= self.prompt_len


@dataclass(frozen=True)
class BatchPlan:
    """The rows of one step: ``dense`` (stock FlashAttention) and ``delta`` (Δ over the paged cache)."""

    dense: tuple[DenseRows, ...]
    delta: tuple[DeltaRows, ...]

    @property
    def has_delta(self) -> bool:
        return bool(self.delta)


def plan_batch(
    query_start_loc: Sequence[int],
    seq_lens: Sequence[int],
    prompt_lens: Sequence[int] | None,
    req_ids: Sequence[str] | None,
    min_prompt: int,
) -> BatchPlan:
    """Split a step's batch into Δ rows and stock-FlashAttention rows.

    query_start_loc: (R + 1) cumulative query lengths (``CommonAttentionMetadata.query_start_loc_cpu``);
    seq_lens:        (R) positions after this step (earlier context + this step's queries; exact for prefill rows);
    prompt_lens:     (R') prompt lengths of the first R' ≤ R requests, or None when unknown (then every row
                     runs stock FlashAttention — exact, never wrong); requests after R' are padding;
    req_ids:         (R') request ids, in the same order;
    min_prompt:      prompts shorter than this run stock FlashAttention.
    """
    n_req = len(query_start_loc) - 1
    if len(seq_lens) < n_req:
        raise ValueError(f"seq_lens has {len(seq_lens)} entries for {n_req} requests")
    known = 0 if prompt_lens is None else len(prompt_lens)
    if req_ids is not None and prompt_lens is not None and len(req_ids) != known:
        raise ValueError(f"{len(req_ids)} request ids for {known} prompt lengths")
    dense: list[DenseRows] = []
    delta: list[DeltaRows] = []
    for r in range(n_req):
        lo, hi = int(query_start_loc[r]), int(query_start_loc[r + 1])
        n_rows = hi - lo
        if n_rows <= 0:  # a padded request slot
            continue
        seq_len = int(seq_lens[r])
        context = seq_len - n_rows
        if context < 0:
            raise ValueError(f"request {r}: seq_len {seq_len} is shorter than its {n_rows} query tokens")
        prompt_len = int(prompt_lens[r]) if r < known else 0
        if r >= known or prompt_len < min_prompt or context >= prompt_len:
            dense.append(DenseRows(lo, hi, r))
            continue
        delta_hi = lo + min(seq_len, prompt_len) - context
        req_id = str(req_ids[r]) if req_ids is not None else f"#{r}"
        delta.append(DeltaRows(lo, delta_hi, r, req_id, context, prompt_len))
        if delta_hi < hi:  # rows past the prompt (a request resumed after preemption re-prefills its output)
            dense.append(DenseRows(delta_hi, hi, r))
    return BatchPlan(tuple(dense), tuple(delta))


@dataclass(frozen=True)
class DenseBatch:
    """The stock-FlashAttention rows of a plan as one varlen batch.

    token_range: ``(lo, hi)`` when the rows are one contiguous run of batch tokens (query and output are
                 then sliced, not copied), else None and ``token_index`` lists the batch tokens in order.
    cu_seqlens_q, req_index, kv_trim: per piece, for FlashAttention's ``cu_seqlens_q``, the block-table rows
                 and ``seqused_k = seq_lens[req_index] − kv_trim``.
    """

    token_range: tuple[int, int] | None
    token_index: tuple[int, ...] | None
    cu_seqlens_q: tuple[int, ...]
    req_index: tuple[int, ...]
    kv_trim: tuple[int, ...]
    max_query_len: int

    @property
    def n_tokens(self) -> int:
        return self.cu_seqlens_q[-1]


def dense_batch(rows: Sequence[DenseRows]) -> DenseBatch | None:
    """The varlen batch of ``rows`` (None when there are none)."""
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: r.token_lo)
    cu = [0]
    for r in rows:
        cu.append(cu[-1] + r.n_rows)
    contiguous = all(a.token_hi == b.token_lo for a, b in zip(rows, rows[1:]))
    token_range = (rows[0].token_lo, rows[-1].token_hi) if contiguous else None
    token_index = None if contiguous else tuple(t for r in rows for t in range(r.token_lo, r.token_hi))
    return DenseBatch(
        token_range=token_range,
        token_index=token_index,
        cu_seqlens_q=tuple(cu),
        req_index=tuple(r.req_index for r in rows),
        kv_trim=tuple(r.kv_trim for r in rows),
        max_query_len=max(r.n_rows for r in rows),
    )


def needs_carry(config: DeltaConfig, q_start: int, prompt_len: int) -> bool:
    """Whether Δ rows starting at ``q_start`` need state from the prompt's earlier chunk (docs/algorithm.md §8).

    True in ``mode="delta"`` when the chunk has body rows (``q_start`` before the tail) and either starts
    inside a γ-block (the block's Δ came from its anchor in an earlier chunk), or the interpolation is a
    filter (``ema``/``abg``), or λ is ``"auto"``/``"auto-decay"`` (running sums, ``CAUSAL_SCALE_MODES``).
    """
    if config.mode != "delta" or q_start == 0:
        return False
    if q_start >= prompt_len - config.tail_rows(prompt_len):
        return False
    return bool(q_start % config.gamma) or config.interp in FILTER_INTERPS or config.delta_scale in CAUSAL_SCALE_MODES


def resumable_at_anchor(config: DeltaConfig) -> bool:
    """Whether Δ can restart without a carry at an anchor: yes for ``repeat`` with a fixed λ.

    ``ema``/``abg`` need the filter state and ``delta_scale="auto"``/``"auto-decay"`` their running sums from the
    prompt's first row on; they cannot restart mid-prompt.
    """
    return config.interp not in FILTER_INTERPS and config.delta_scale not in CAUSAL_SCALE_MODES


@dataclass(frozen=True)
class ChunkRows:
    """How one layer computes a chunk's Δ rows ``[q_start, n_keys)``.

    dense_until: rows ``[q_start, dense_until)`` are computed exactly (dense causal attention) because the
                 carry they need is missing; rows ``[dense_until, n_keys)`` run Δ.
    fresh_state: whether the Δ rows start a new carried state (prompt start, or a restart at an anchor)
                 instead of continuing the stored one.
    """

    dense_until: int
    fresh_state: bool


def chunk_rows(config: DeltaConfig, rows: DeltaRows, have_carry: bool) -> ChunkRows:
    """The :class:`ChunkRows` of ``rows`` given whether this layer holds the prompt's carry at ``rows.q_start``.

    Without the carry it needs (see :func:`needs_carry`), a ``repeat`` config computes the rows up to the next
    anchor exactly and restarts Δ there (a one-shot prefill would give them Õ + Δ; exact rows are closer to
    dense, never worse); ``ema``/``abg``/``delta_scale="auto"`` compute the whole chunk exactly and the later
    chunks of that prompt likewise (they cannot restart mid-prompt).
    """
    q0, n_keys = rows.q_start, rows.n_keys
    if have_carry or not needs_carry(config, q0, rows.prompt_len):
        return ChunkRows(dense_until=q0, fresh_state=not have_carry)
    if resumable_at_anchor(config):
        anchor = -(-q0 // config.gamma) * config.gamma
        return ChunkRows(dense_until=min(anchor, n_keys), fresh_state=True)
    return ChunkRows(dense_until=n_keys, fresh_state=False)


class PrefillCarry:
    """One layer's carried Δ state per request in prefill, keyed by vLLM's request id.

    :meth:`begin` hands out the state a chunk continues (or a fresh one) and the rows plan; :meth:`end`
    drops the state once the prompt's last chunk is done. Entries of requests that never finish their
    prefill (aborted, preempted) are evicted oldest first beyond ``capacity``; a state that does not sit at
    the chunk's first position is never used (it belongs to an earlier attempt of the request).
    """

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._states: OrderedDict[str, DeltaState] = OrderedDict()
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, req_id: str) -> bool:
        return req_id in self._states

    def begin(self, config: DeltaConfig, rows: DeltaRows, *, layer: str = "") -> tuple[ChunkRows, DeltaState | None]:
        """The rows plan of this chunk and the state its Δ rows use (None when they run without one)."""
        state = self._states.pop(rows.req_id, None)
        if state is not None and state.group((0,)).next_pos != rows.q_start:
            state = None  # left by an earlier attempt of this request (preempted, then resumed elsewhere)
        plan = chunk_rows(config, rows, have_carry=state is not None)
        if plan.dense_until > rows.q_start and rows.req_id not in self._warned:
            self._warned.add(rows.req_id)
            if len(self._warned) > self.capacity:
                self._warned.clear()
            logger.warning(
                "delta_attn: request %s starts its prefill chunk at position %d without the Δ state of the "
                "earlier chunk (prefix-cache hit or preemption)%s; rows %d..%d are computed exactly instead",
                rows.req_id,
                rows.q_start,
                f" in {layer}" if layer else "",
                rows.q_start,
                plan.dense_until - 1,
            )
        if plan.dense_until >= rows.n_keys:
            return plan, None
        if plan.fresh_state:
            state = DeltaState()
        self._states[rows.req_id] = state
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)
        return plan, state

    def end(self, rows: DeltaRows) -> None:
        """Drop the request's state when ``rows`` finished its prompt."""
        if rows.is_last_chunk:
            self._states.pop(rows.req_id, None)
            self._warned.discard(rows.req_id)
