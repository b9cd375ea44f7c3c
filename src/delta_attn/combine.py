"""From sparse rows and dense rows to the output: the four modes and the four interpolations.

Every backend computes the same two things for the rows of a call — the sparse output Õ of every row
and the dense output D of the rows ``plan.dense_pos`` selects — and hands them to :func:`combine`
(docs/algorithm.md §3–§5). Kernels may fuse the combine step, but this is the definition. The call's
bookkeeping (which rows, which γ-blocks, the carried Δ and filter state) comes from
:func:`delta_attn.backend.plan_call`.

The Δ variants (docs/algorithm.md §13) are defined here too: :func:`delta_scales` (λ per γ-block for
``delta_scale``) and :func:`extra_anchor_blocks` (which blocks get an extra dense row for
``extra_anchors``; the backend computes those rows and hands them to :func:`combine`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from .backend import CallPlan, SequenceState, extra_anchor_count, filter_start, finish
from .config import FILTER_INTERPS
from .filters import lti_scan
from .sparse import resolve_sparse_method


def combine(
    plan: CallPlan,
    sparse_out: Tensor | None,
    dense_out: Tensor | None,
    state: SequenceState | None = None,
    extra: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Assemble the output rows of one call and leave the carry for the next one in ``state``.

    Args:
        plan: the call's :class:`~delta_attn.backend.CallPlan`.
        sparse_out: Õ for every row of the call, (B, H, Nq, D); may be None for ``mode="dense"``.
        dense_out: D for the rows in ``plan.dense_pos``, (B, H, len(dense_pos), D).
        state: the sequence group's chunk carry (written for the next call; read through ``plan``).
        extra: ``extra_anchors`` only: (blocks (B, E) from :func:`extra_anchor_blocks`, D of their
            rows :func:`extra_anchor_positions` (B, H, E, D)). Required when E > 0.
    Returns:
        (B, H, Nq, D) in the dtype of the inputs.
    """
    mode = plan.config.mode
    if mode == "delta":
        return _delta(plan, sparse_out, dense_out, state, extra)
    if mode == "dense":
        out = dense_out
    elif mode == "sparse":
        out = sparse_out
    else:  # recompute: Õ with the anchor and tail rows overwritten by D
        out = sparse_out.clone()
        out[:, :, plan.dense_pos - plan.q_start] = dense_out
    finish(state, plan)
    return out


def anchor_deltas(plan: CallPlan, sparse_out: Tensor, dense_out: Tensor) -> Tensor:
    """Raw Δ of every γ-block the call's body touches, (B, H, n_blocks, D): the carried one, then D − Õ
    at each of the call's anchors."""
    local = plan.dense_pos[: plan.n_anchors] - plan.q_start
    deltas = dense_out[:, :, : plan.n_anchors] - sparse_out[:, :, local]
    if plan.carried_delta is not None:
        deltas = torch.cat([plan.carried_delta.unsqueeze(2).to(deltas.dtype), deltas], dim=2)
    return deltas


def _lstsq_factor(sums: Tensor) -> Tensor:
    """clip(Σ⟨Δ_i, Δ_{i-1}⟩ / Σ‖Δ_{i-1}‖², 0, 1) from sums (..., 2); 0/0 (no pair yet, or zero Δs) is 1."""
    num, den = sums[..., 0], sums[..., 1]
    ratio = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(num))
    return ratio.clamp(0.0, 1.0)


def block_mean_decay(rho: Tensor) -> Tensor:
    """(ρ − 1) / ln ρ: the mean of ρ^t over t ∈ [0, 1] (1 at ρ = 1, 0 at ρ = 0), elementwise (§13 ``auto-decay``).

    If consecutive anchors' Δs correlate as ρ over γ rows and the correlation decays geometrically with the
    distance, a body row d rows after its anchor is best predicted by ρ^(d/γ) Δ_anchor; this is that factor
    averaged over the block.
    """
    rho = rho.clamp(0.0, 1.0)
    inner = (rho > 0) & (rho < 1)
    x = torch.where(inner, rho - 1.0, torch.full_like(rho, -0.5))  # ρ − 1 is exact near 1; log1p keeps it so
    return torch.where(inner, x / torch.log1p(x), rho)


def fully_covered_blocks(plan: CallPlan, first: int, count: int, device=None) -> Tensor | None:
    """bool (count,): whether the anchors of γ-blocks ``first … first + count − 1`` see every causal key in
    the sparse pattern (the base's :meth:`~delta_attn.sparse.SparseMethod.row_key_counts` reaches the
    prefix): their Δ is 0 in exact arithmetic. None when the base gives no counts. On ``device`` (default CPU),
    cached as :func:`scale_left_out_blocks`."""
    device = str(torch.device("cpu") if device is None else device)
    return _blocks_missing_fewer(plan.config, first, count, 1, device)


def scale_left_out_blocks(plan: CallPlan, first: int, count: int, device=None) -> Tensor | None:
    """bool (count,): whether the anchors of γ-blocks ``first … first + count − 1`` are left out of the
    data-driven λ's sums (docs/algorithm.md §13, "Anchors left out of the sums"): their sparse row misses
    fewer than γ causal keys by the base's :meth:`~delta_attn.sparse.SparseMethod.row_key_counts` — every
    fully covered anchor (Δ = rounding noise) and the partly covered ones at the edge of the covered prefix,
    whose Δ comes from a handful of keys and makes a pair's ratio ill-conditioned. A pair (Δ_{i−1}, Δ_i)
    enters the sums only when neither of its anchors is left out. Decided by integer key counts, so every
    backend and every chunking agree on it. None when the base gives no counts (every anchor counts).

    On ``device`` (default CPU), cached: a copy from pageable host memory synchronises the host with the
    GPU, and every layer of a forward asks for the same blocks."""
    device = str(torch.device("cpu") if device is None else device)
    return _blocks_missing_fewer(plan.config, first, count, plan.config.gamma, device)


@lru_cache(maxsize=64)
def _blocks_missing_fewer(config, first: int, count: int, min_missing: int, device: str) -> Tensor | None:
    """bool (count,): the anchors jγ (j = first …) whose sparse row misses fewer than ``min_missing`` causal
    keys; None when the base gives no key counts. A base whose counts are an upper bound (top-k,
    vertical-slash) gives a lower bound on the keys missed, so it may leave out a few more anchors."""
    positions = np.arange(first, first + count, dtype=np.int64) * config.gamma
    counts = resolve_sparse_method(config.sparse).row_key_counts(config, positions)
    if counts is None:
        return None
    missing = positions + 1 - np.asarray(counts, dtype=np.int64)
    return torch.from_numpy(missing < min_missing).to(device)


def delta_scales(plan: CallPlan, deltas: Tensor) -> tuple[Tensor | float | None, Tensor | None]:
    """λ of every γ-block of the call for ``config.delta_scale`` (docs/algorithm.md §13).

    deltas: the raw Δs from :func:`anchor_deltas` (B, H, n_blocks, D).
    Returns ``(λ, sums)``: λ is None for the default 1.0 (nothing to scale), the float itself, or a
    float64 (B, H, n_blocks) tensor for ``"auto"``/``"auto-global"``; ``sums`` (B, H, 2) are the
    ``"auto"`` running sums through the call's last block (None otherwise), for the next chunk.

    ``"auto"`` (causal): λ_j = clip(Σ_{1≤i≤j} ⟨Δ_i, Δ_{i-1}⟩ / Σ_{1≤i≤j} ‖Δ_{i-1}‖², 0, 1), λ_0 = 1.
    ``"auto-decay"`` (causal): :func:`block_mean_decay` of that λ_j (the same sums are carried).
    Block j's λ reads anchors ≤ j only, and the carried sums continue a chunked prompt; the sums are
    accumulated sequentially in float64 from the carried value, so a chunked prompt repeats the
    one-shot additions. ``"auto-global"``: the same ratio with j = the call's last block, for every block.
    A pair with an anchor of :func:`scale_left_out_blocks` (fewer than γ keys missed) adds nothing to either sum.
    """
    scale = plan.config.delta_scale
    if not isinstance(scale, str):
        return (None, None) if scale == 1.0 else (float(scale), None)
    bsz, heads, n_blocks, _ = deltas.shape
    # the per-anchor dot products in (at least) float32: λ is a clipped ratio, and float64 (B, H, n, D)
    # temporaries cost ~0.4 ms at 128K on an H100 (profile, BENCHMARKS.md); only the running sums are float64
    work = deltas if deltas.dtype in (torch.float32, torch.float64) else deltas.float()
    # a pair with an anchor that misses fewer than γ keys (covered: rounding noise; partly covered: a Δ of a
    # handful of keys, an ill-conditioned ratio) adds exact zeros to both sums (selected, not multiplied: a
    # non-finite Δ of such an anchor stays out too). left_out[0] is the block before the call's first block,
    # left_out[k + 1] the call's block k; pair_out[k]: the pair ending at the call's block k
    left_out = scale_left_out_blocks(plan, plan.first_block - 1, n_blocks + 1, device=work.device)
    pair_out = None if left_out is None else (left_out[:-1] | left_out[1:]).view(1, 1, 1, -1)
    n_carried = 1 if plan.carried_delta is not None else 0
    # pairs (Δ_i, Δ_{i-1}) inside the tensor: shifted views, no (B, H, n, D) copy
    inner = torch.stack([(work[:, :, 1:] * work[:, :, :-1]).sum(-1), work[:, :, :-1].square().sum(-1)], dim=2)
    if pair_out is not None:
        inner = inner.masked_fill(pair_out[..., 1:], 0.0)
    if n_carried:  # the carried block is the first new anchor's predecessor: every pair is inside
        terms = inner
    else:  # the call's first anchor pairs with the previous chunk's last Δ, or (prompt start) with nothing
        first = work.new_zeros(bsz, heads, 2)
        if plan.previous_delta is not None:
            before = plan.previous_delta.to(work.dtype)
            first = torch.stack([(work[:, :, 0] * before).sum(-1), before.square().sum(-1)], dim=2)
            if pair_out is not None:  # masked on the device: bool() of a GPU tensor would wait for the GPU
                first = first.masked_fill(pair_out[0, 0, :, 0], 0.0)
        terms = torch.cat([first.unsqueeze(3), inner], dim=3)  # (B, H, 2, n_new)
    terms = terms.double()
    start = plan.carried_sums.double() if plan.carried_sums is not None else terms.new_zeros(bsz, heads, 2)
    # the scan runs along the last (contiguous) axis: CUDA's outer-axis scan took 0.21 ms at 128K (H100 profile)
    sums = torch.cat([start.unsqueeze(3), terms], dim=3).cumsum(dim=3).transpose(2, 3)  # sums[:, :, 0] = carried
    if scale == "auto-global":
        lam = _lstsq_factor(sums[:, :, -1]).unsqueeze(2).expand(bsz, heads, n_blocks)
        return lam, None
    lam = _lstsq_factor(sums[:, :, 1 - n_carried :])  # the carried block keeps the carried sums' λ
    if scale == "auto-decay":
        lam = block_mean_decay(lam)
    return lam, sums[:, :, -1].contiguous()


def scale_deltas(deltas: Tensor, lam: Tensor | float | None) -> Tensor:
    """λ_j·Δ_j (deltas (B, H, n_blocks, D); λ from :func:`delta_scales`)."""
    if lam is None:
        return deltas
    if isinstance(lam, float):
        return deltas * lam
    return deltas * lam.unsqueeze(-1).to(deltas.dtype)


def extra_anchor_blocks(plan: CallPlan, deltas: Tensor) -> Tensor:
    """The γ-blocks that get an extra dense row (``extra_anchors``, docs/algorithm.md §13), (B, E) ascending.

    deltas: the raw Δs of a one-shot call (B, H, n_blocks, D). Candidates are the blocks with a next
    anchor (j < n_blocks − 1); block j scores s_j = Σ_h ‖Δ_{j+1} − Δ_j‖ per sequence (one choice for
    all heads, so the extra rows stay one rectangular batch per sequence); the top
    ``ceil(extra_anchors · n_blocks)`` win, ties to the lower j.
    """
    bsz, n_blocks = deltas.shape[0], deltas.shape[2]
    n_extra = extra_anchor_count(plan.config, n_blocks) if plan.has_body else 0
    if n_extra == 0:
        return torch.zeros(bsz, 0, dtype=torch.long, device=deltas.device)
    score = (deltas[:, :, 1:] - deltas[:, :, :-1]).double().norm(dim=-1).sum(dim=1)  # (B, n_blocks - 1)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices  # stable: ties keep the lower j
    return order[:, :n_extra].sort(dim=1).values + plan.first_block


def extra_anchor_positions(plan: CallPlan, blocks: Tensor) -> Tensor:
    """Absolute positions ``jγ + γ//2`` of the extra dense rows of ``blocks`` (B, E)."""
    return blocks * plan.gamma + plan.gamma // 2


def _delta(
    plan: CallPlan,
    sparse_out: Tensor,
    dense_out: Tensor,
    state: SequenceState | None,
    extra: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """``mode="delta"``: Õ + λΔ on the body rows, D on the tail rows (docs/algorithm.md §3, §5, §13)."""
    config, gamma, q0, body_end = plan.config, plan.gamma, plan.q_start, plan.body_end
    local = plan.dense_pos - q0
    n_anchor = plan.n_anchors
    out = torch.empty_like(sparse_out)
    out[:, :, local[n_anchor:]] = dense_out[:, :, n_anchor:]  # the exact tail
    if not plan.has_body:
        finish(state, plan)
        return out
    raw = anchor_deltas(plan, sparse_out, dense_out)  # (B, H, n_blocks, D)
    assert raw.shape[2] == plan.n_blocks
    lam, sums = delta_scales(plan, raw)
    deltas = scale_deltas(raw, lam)
    rows = torch.arange(q0, body_end, device=sparse_out.device)
    block_of_row = rows // gamma - plan.first_block
    z = deltas[:, :, block_of_row]  # repeat: Δ(i) = Δ_{i // γ}
    scan_state = None
    second = None
    if extra is not None and extra[0].shape[1] > 0:
        blocks, extra_dense = extra
        second, ext = _extra_deltas(plan, sparse_out, extra_dense, blocks, lam)
        half = gamma // 2
        second = second[:, block_of_row].view(z.shape[0], 1, -1, 1)  # (B, 1, R, 1): row's block has one
        late = ((rows % gamma) >= half).view(1, 1, -1, 1)  # rows from the extra anchor on
        ext_z = ext[:, :, block_of_row]
    if config.interp == "linear":
        nxt = torch.cat([deltas[:, :, 1:], deltas[:, :, -1:]], dim=2)  # the last block keeps Δ_j
        nxt_z = nxt[:, :, block_of_row]
        t = ((rows % gamma).to(z.dtype) / gamma).view(1, 1, -1, 1)
        lin = (1 - t) * z + t * nxt_z
        if second is not None:  # anchor → extra anchor → next anchor
            off = (rows % gamma).to(z.dtype).view(1, 1, -1, 1)
            t1 = off / half
            t2 = (off - half) / (gamma - half)
            early_z = (1 - t1) * z + t1 * ext_z
            late_z = (1 - t2) * ext_z + t2 * nxt_z
            lin = torch.where(second, torch.where(late, late_z, early_z), lin)
        z = lin
    elif config.interp in FILTER_INTERPS:
        m, k, s_prev = filter_start(plan, z[:, :, 0])
        z, scan_state = lti_scan(z, m, k, s_prev.to(z.dtype))
    elif second is not None:  # repeat: the rows from the extra anchor on use its Δ
        z = torch.where(second & late, ext_z, z)
    out[:, :, : body_end - q0] = sparse_out[:, :, : body_end - q0] + z
    if lam is not None:  # λ ≠ 1: the anchor rows are exact (Õ + λΔ would not be)
        out[:, :, local[:n_anchor]] = dense_out[:, :, :n_anchor].to(out.dtype)
    if second is not None:  # the extra rows are exact
        pos = extra_anchor_positions(plan, extra[0]) - q0  # (B, E)
        b_idx = torch.arange(pos.shape[0], device=pos.device).view(-1, 1)
        out.permute(0, 2, 1, 3)[b_idx, pos] = extra[1].to(out.dtype).permute(0, 2, 1, 3)
    finish(state, plan, last_delta=raw[:, :, -1], scan_state=scan_state, scale_sums=sums)
    return out


def _extra_deltas(
    plan: CallPlan, sparse_out: Tensor, extra_dense: Tensor, blocks: Tensor, lam: Tensor | float | None
) -> tuple[Tensor, Tensor]:
    """(has_extra (B, n_blocks) bool, λ_j·Δ'_j placed at its block (B, H, n_blocks, D), zero elsewhere)."""
    bsz, heads, _, d = sparse_out.shape
    pos = extra_anchor_positions(plan, blocks) - plan.q_start  # (B, E)
    idx = pos.view(bsz, 1, -1, 1).expand(bsz, heads, pos.shape[1], d)
    raw = extra_dense.to(sparse_out.dtype) - sparse_out.gather(2, idx)  # Δ'_j = D(m_j) − Õ(m_j)
    local_blocks = blocks - plan.first_block
    if isinstance(lam, Tensor):
        lam = lam.gather(2, local_blocks.view(bsz, 1, -1).expand(bsz, heads, -1))
    scaled = scale_deltas(raw, lam)  # block j's λ_j (E entries per head)
    ext = sparse_out.new_zeros(bsz, heads, plan.n_blocks, d)
    ext.scatter_(2, local_blocks.view(bsz, 1, -1, 1).expand(bsz, heads, -1, d), scaled)
    has = torch.zeros(bsz, plan.n_blocks, dtype=torch.bool, device=sparse_out.device)
    has.scatter_(1, local_blocks, True)
    return has, ext
