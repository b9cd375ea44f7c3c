"""The PyTorch reference backend: plain, chunked, CPU and GPU, any float dtype.

It is the correctness oracle for the GPU kernels and the CPU execution path of the model
integration. It never allocates an N×N matrix: queries are processed in chunks of rows, and for each
chunk only the key intervals the sparse pattern can reach (``SparsePattern.key_ranges``) are scored,
so a sink+window base costs O(N·(W + sink)) here too. GQA is handled by reshaping query heads into
their KV group — K and V are never repeated in memory.

Half-precision inputs are computed in float32 (like flash kernels accumulate) unless
``compute_dtype`` says otherwise; float64 inputs stay float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backend import CallPlan, SequenceState, plan_call
from .combine import anchor_deltas, combine, extra_anchor_blocks, extra_anchor_positions
from .config import DeltaConfig
from .sparse import SparsePattern, plan_pattern, visible_keys

DEFAULT_CHUNK_ELEMENTS = 1 << 24  # scores held at once (64 MiB in float32)


def default_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _key_index(ranges: list[tuple[int, int]], device) -> tuple[Tensor | slice, int]:
    if len(ranges) == 1:
        lo, hi = ranges[0]
        return slice(lo, hi), hi - lo
    idx = torch.cat([torch.arange(lo, hi, device=device) for lo, hi in ranges])
    return idx, int(idx.numel())


def _next_chunk(pattern: SparsePattern | None, q_start: int, r0: int, nq: int, nk: int, budget: int):
    """End row of the next query chunk (and its key ranges) so that rows × keys stays within budget.

    Dense rows of the chunk are few (anchors + tail), so the sparse key count sets the size: a
    sink+window chunk touches ~W + sink + rows keys, far fewer than Nk.
    """
    rows = max(1, min(nq - r0, budget // max(1, nk), 64))
    if pattern is None:
        return r0 + max(rows, min(nq - r0, budget // max(1, nk))), None
    ranges = pattern.key_ranges(q_start + r0, q_start + r0 + rows)
    base_keys = sum(hi - lo for lo, hi in ranges)
    while r0 + rows < nq:
        grow = min(nq - r0, rows * 2)
        cand = pattern.key_ranges(q_start + r0, q_start + r0 + grow)
        keys = sum(hi - lo for lo, hi in cand)
        # stop when the budget is full, or when a larger chunk would score many keys its rows never see
        if grow * keys > budget or keys > 2 * base_keys:
            break
        rows, ranges = grow, cand
    return r0 + rows, ranges


def masked_attention(
    q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float, *, finite_v: bool = True
) -> Tensor:
    """Softmax attention of query rows over a key set, with a boolean mask.

    q: (B, Hkv, G, R, D); k, v: (B, Hkv, K, D); allowed: broadcastable to (B, Hkv, G, R, K).
    Rows with no allowed key return zeros (never NaN; the callers forbid such rows for the sparse base).
    ``finite_v=False`` (v holds inf or NaN) takes the exact path: a row's output then depends on the
    keys it may see only, as it does for finite v.
    """
    bsz, hkv, g, r, d = q.shape
    s = (q.reshape(bsz, hkv, g * r, d) @ k.transpose(-1, -2)).view(bsz, hkv, g, r, -1) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    denom = p.sum(dim=-1, keepdim=True)
    if finite_v:
        o = (p.view(bsz, hkv, g * r, -1) @ v).view(bsz, hkv, g, r, -1)
    else:  # p is 0 on the keys a row may not see, and 0·NaN must not reach the row
        o = _weighted_values(p, v, allowed)
    return o / torch.where(denom > 0, denom, torch.ones_like(denom))


def _weighted_values(p: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """``p @ v`` for a v with non-finite entries, without 0·NaN from keys a row may not see.

    p: (B, Hkv, G, R, K) with zeros on forbidden keys; v: (B, Hkv, K, D). The finite part is the
    same matrix product as the fast path (so rows that see no non-finite value are bit-identical
    to it); the non-finite entries are added back per row from the keys that row may see, with
    IEEE rules (p·NaN = NaN, 0·inf = NaN, inf − inf = NaN).
    """
    bsz, hkv, g, r, kn = p.shape

    def flat(x: Tensor) -> Tensor:  # (B, Hkv, G, R, K) -> (B, Hkv, G·R, K)
        return x.reshape(bsz, hkv, g * r, kn)

    def count(keys: Tensor, values: Tensor) -> Tensor:
        """Per row and channel: how many of the row's ``keys`` (bool, like p) hold a ``values`` entry."""
        return flat(keys.to(p.dtype)) @ values.to(p.dtype)

    o = flat(p) @ v.masked_fill(~torch.isfinite(v), 0.0)
    sees = allowed.expand_as(p)
    nan_hits = count(sees, torch.isnan(v)) + count(sees & (p == 0), torch.isinf(v))
    pos_inf = count(sees & (p > 0), v == float("inf")) > 0
    neg_inf = count(sees & (p > 0), v == float("-inf")) > 0
    extra = torch.zeros_like(o)
    extra = extra.masked_fill(pos_inf, float("inf")) + extra.masked_fill(neg_inf, float("-inf"))
    extra = extra.masked_fill(nan_hits > 0, float("nan"))
    o = torch.where((nan_hits > 0) | pos_inf | neg_inf, o + extra, o)
    return o.view(bsz, hkv, g, r, -1)


def attention_rows(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    q_start: int,
    pattern: SparsePattern | None,
    dense_pos: Tensor,
    compute_dtype: torch.dtype,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    method: str | None = None,
) -> tuple[Tensor | None, Tensor]:
    """Sparse output of every query row (if ``pattern``) and dense output of rows ``dense_pos``.

    q: (B, Hq, Nq, D) at absolute positions [q_start, q_start + Nq); k, v: (B, Hkv, Nk, D).
    ``method`` names the sparse base in errors about its pattern (default: the pattern's name).
    Returns ``(sparse (B, Hq, Nq, D) or None, dense (B, Hq, len(dense_pos), D))`` in compute_dtype.
    """
    bsz, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = hq // hkv
    dev = q.device
    qc = q.to(compute_dtype).view(bsz, hkv, g, nq, d)
    kc, vc = k.to(compute_dtype), v.to(compute_dtype)
    finite_v = bool(torch.isfinite(vc).all())  # one check per call: the exact path only for inf/NaN values
    sparse = qc.new_empty(bsz, hkv, g, nq, d) if pattern is not None else None
    dense = qc.new_empty(bsz, hkv, g, dense_pos.numel(), d)
    b_idx = torch.arange(bsz, device=dev).view(-1, 1, 1, 1)
    h_idx = torch.arange(hq, device=dev).view(1, -1, 1, 1)
    per_row = max(1, bsz * hq)
    dense_local = (dense_pos - q_start).tolist()
    di = 0  # next entry of dense_pos to produce
    r0 = 0
    while r0 < nq:
        r1, ranges = _next_chunk(pattern, q_start, r0, nq, nk, chunk_elements // per_row)
        p0, p1 = q_start + r0, q_start + r1
        if pattern is not None:
            kidx, nkeys = _key_index(ranges, dev)
            kpos = torch.arange(nk, device=dev)[kidx].view(1, 1, 1, -1)
            qpos = torch.arange(p0, p1, device=dev).view(1, 1, -1, 1)
            allowed = visible_keys(pattern, b_idx, h_idx, qpos, kpos, shape=(bsz, hq, p1 - p0, nkeys), method=method)
            if allowed.shape[1] == 1:  # head-independent pattern: broadcast, don't copy per head
                allowed = allowed.unsqueeze(2)
            else:
                allowed = allowed.expand(allowed.shape[0], hq, p1 - p0, nkeys).reshape(-1, hkv, g, p1 - p0, nkeys)
            sparse[:, :, :, r0:r1] = masked_attention(
                qc[:, :, :, r0:r1], kc[:, :, kidx], vc[:, :, kidx], allowed, scale, finite_v=finite_v
            )
        dj = di
        while dj < len(dense_local) and dense_local[dj] < r1:
            dj += 1
        if dj > di:
            sel = torch.tensor(dense_local[di:dj], device=dev)
            qpos = (sel + q_start).view(1, 1, 1, -1, 1)
            kpos = torch.arange(p1, device=dev).view(1, 1, 1, 1, -1)
            dense[:, :, :, di:dj] = masked_attention(
                qc[:, :, :, sel], kc[:, :, :p1], vc[:, :, :p1], kpos <= qpos, scale, finite_v=finite_v
            )
            di = dj
        r0 = r1
    as_heads = lambda x: x.reshape(bsz, hq, x.shape[3], d)  # noqa: E731
    return (as_heads(sparse) if sparse is not None else None), as_heads(dense)


def reference_prefill(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    config: DeltaConfig,
    *,
    scale: float,
    prompt_len: int,
    state: SequenceState | None = None,
    compute_dtype: torch.dtype | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Tensor:
    """The reference :class:`~delta_attn.backend.Backend`: plan the sparse base, compute rows, combine.

    One sequence group (shared positions); inputs are already validated by
    :func:`delta_attn.delta_attention`; queries are the last Nq of the Nk key positions.
    Returns (B, Hq, Nq, D) in ``compute_dtype``.
    """
    nq, nk = q.shape[2], k.shape[2]
    q_start = nk - nq
    cdt = compute_dtype or default_compute_dtype(q.dtype)
    plan = plan_call(config, q_start, nk, prompt_len, state, device=q.device)
    pattern = None
    if config.mode != "dense":
        pattern = plan_pattern(config, q, k, q_start=q_start, scale=scale)
    sparse, dense = attention_rows(
        q,
        k,
        v,
        scale=scale,
        q_start=q_start,
        pattern=pattern,
        dense_pos=plan.dense_pos,
        compute_dtype=cdt,
        chunk_elements=chunk_elements,
        method=config.method_name,
    )
    extra = None
    if plan.has_body and config.extra_anchors > 0:
        extra = extra_anchor_rows(plan, q, k, v, sparse, dense, scale=scale, compute_dtype=cdt)
    return combine(plan, sparse, dense, state, extra)


def extra_anchor_rows(
    plan: CallPlan,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    sparse: Tensor,
    dense: Tensor,
    *,
    scale: float,
    compute_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """``extra_anchors``: the chosen γ-blocks (B, E) and the dense output of their midpoint rows (B, H, E, D).

    The blocks come from the anchors' Δs (:func:`delta_attn.combine.extra_anchor_blocks`), so they
    differ per sequence: each sequence's rows are computed on their own (queries ``[lo, hi]`` of its
    extra rows over keys ``[0, hi]``).
    """
    blocks = extra_anchor_blocks(plan, anchor_deltas(plan, sparse, dense))
    pos = extra_anchor_positions(plan, blocks)
    bsz, hq, _, d = sparse.shape
    rows = sparse.new_empty(bsz, hq, pos.shape[1], d)
    if pos.shape[1] == 0:
        return blocks, rows
    q0 = plan.q_start
    for b in range(bsz):
        lo, hi = int(pos[b, 0]), int(pos[b, -1]) + 1
        _, rows[b : b + 1] = attention_rows(
            q[b : b + 1, :, lo - q0 : hi - q0],
            k[b : b + 1, :, :hi],
            v[b : b + 1, :, :hi],
            scale=scale,
            q_start=lo,
            pattern=None,
            dense_pos=pos[b],
            compute_dtype=compute_dtype,
        )
    return blocks, rows
