"""``triton_prefill``: the GPU backend (:class:`delta_attn.backend.Backend`, like the reference).

The steps of one call (queries at absolute positions ``[q_start, Nk)``, q_start = Nk − Nq; the rows,
blocks and carry from :func:`delta_attn.backend.plan_call`):

1. dense rows D (anchors every γ plus the exact tail): :func:`.dense_rows.dense_rows`;
2. the sparse rows Õ of the body ``[q_start, body_end)``: :func:`.sparse.sparse_attention`, with
   the Δ broadcast fused into its epilogue for ``interp="repeat"`` (γ dividing the tile);
3. otherwise the Δ apply as a filter over the rows (:mod:`.scan`) for ``repeat``/``ema``/``abg``;
4. the tail rows are copied from D.

Whatever the kernels do not cover falls back to the reference pieces rather than failing:
user ``mask_mod`` patterns get Õ from the PyTorch reference, interpolations other than ``repeat``
and the filters (``linear``) are combined in PyTorch (:func:`delta_attn.combine.combine`), and
inputs the kernels do not take (CPU tensors, float64, head dims above 256) run
:func:`reference_prefill` whole.

The Δ variants (docs/algorithm.md §13) with ``interp="repeat"`` stay in the fused epilogue: a float
``delta_scale`` λ scales every Δ there (the anchor rows store D); ``"auto"``/``"auto-decay"``/``"auto-global"``
first compute the raw Δ = D − Õ of the anchor rows alone (:func:`.anchor_sparse.anchor_sparse_rows`, 1/γ of
the rows), then λ per γ-block and λ_jΔ_j in two small kernels (:func:`.delta_scale.scaled_block_deltas`, the
fused form of :func:`delta_attn.combine.delta_scales`), and the epilogue adds the given λ_jΔ_j. Index-list
patterns (top-k, vertical-slash) with ``"auto"`` and the filters take the unfused path of step 3 with the Δs
scaled in PyTorch. ``extra_anchors`` takes the unfused path too, chooses the blocks in PyTorch, computes the
extra rows with the dense-row kernel (one launch per sequence, as the choice differs per sequence, the rows as
an explicit position list) and, for ``repeat``, rewrites the second half of each chosen block in PyTorch (a
gather over those rows only); ``linear`` with extra anchors is combined in PyTorch
(:func:`delta_attn.combine.combine`), which materialises the Δ of every body row.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import torch
from torch import Tensor

from ..backend import SequenceState, filter_start, finish, plan_call
from ..combine import anchor_deltas, combine, delta_scales, extra_anchor_blocks, extra_anchor_positions, scale_deltas
from ..config import FILTER_INTERPS, DeltaConfig
from ..reference import attention_rows, reference_prefill
from ..sparse import plan_pattern
from . import sparse as sparse_mod
from .anchor_sparse import anchor_sparse_rows
from .blocks import spec_for
from .delta_scale import scaled_block_deltas
from .dense_rows import PositionList, RowSet, dense_rows, kernel_config
from .interpret import active as interpreting
from .interpret import enable as enable_interpreter
from .scan import delta_scan_apply, repeat_add

MAX_HEAD_DIM = 256
_INTERPRET = interpreting()
if _INTERPRET:
    enable_interpreter()
_ALLOCATOR_SET = False


@contextmanager
def launch_configs(table: dict | str | None):
    """Run the block with other launch configurations for half-precision inputs.

    ``table``: ``{"dense": {...}, "sparse": {...}}`` (either key may be left out), or the path of a JSON file
    holding it — what ``python -m delta_attn.bench.launch`` writes as ``best_<N>.json``. Each given entry
    replaces ``CONFIG["half"]`` of :mod:`.dense_rows` / :mod:`.sparse` until the block ends. For benchmarks of a
    whole model (``delta-attn bench e2e --kernel-config``), whose forward passes no ``kernel_configs``; a
    process-wide setting, so not for concurrent use.
    """
    from . import dense_rows as dense_mod

    if isinstance(table, str):
        with open(table) as f:
            table = json.load(f)
    table = table or {}
    unknown = set(table) - {"dense", "sparse"}
    if unknown:
        raise ValueError(f"launch configs: unknown keys {sorted(unknown)}; expected 'dense' and/or 'sparse'")
    saved = {name: dict(mod.CONFIG["half"]) for name, mod in (("dense", dense_mod), ("sparse", sparse_mod))}
    try:
        for name, mod in (("dense", dense_mod), ("sparse", sparse_mod)):
            if table.get(name):
                mod.CONFIG["half"] = dict(table[name])
        yield
    finally:
        dense_mod.CONFIG["half"], sparse_mod.CONFIG["half"] = saved["dense"], saved["sparse"]


def _supported(q: Tensor) -> bool:
    on_device = q.is_cuda or _INTERPRET
    return on_device and q.dtype in (torch.float16, torch.bfloat16, torch.float32) and q.shape[-1] <= MAX_HEAD_DIM


def ensure_allocator() -> None:
    """TMA descriptors made inside kernels need scratch memory from this allocator."""
    global _ALLOCATOR_SET
    if not _ALLOCATOR_SET:
        import triton

        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
        _ALLOCATOR_SET = True


def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def triton_prefill(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    config: DeltaConfig,
    *,
    scale: float,
    prompt_len: int,
    state: SequenceState | None = None,
    kernel_configs: dict | None = None,
) -> Tensor:
    """The GPU :class:`~delta_attn.backend.Backend`: one sequence group (shared positions).

    Returns (B, Hq, Nq, D) in q's dtype. Same arguments and semantics as
    :func:`delta_attn.reference.reference_prefill`: queries are the last Nq of the Nk key positions,
    ``prompt_len`` places the exact tail, and ``state`` carries Δ (and the ema/abg filter state)
    between chunks. ``kernel_configs`` overrides the launch configurations
    (``{"dense": {...}, "sparse": {...}}``, and ``"delta_scale"`` for the λ kernels; the benchmark and the
    checks pass them).
    """
    if not _supported(q):
        return reference_prefill(q, k, v, config, scale=scale, prompt_len=prompt_len, state=state)
    kc = kernel_configs or {}
    if q.is_cuda:
        ensure_allocator()
    q = _last_dim_contiguous(q)
    k = _last_dim_contiguous(k)
    v = _last_dim_contiguous(v)
    bsz, hq, nq, d = q.shape
    nk = k.shape[2]
    q0 = nk - nq
    mode, gamma = config.mode, config.gamma
    plan = plan_call(config, q0, nk, prompt_len, state, device=q.device)
    body_end = plan.body_end

    if mode == "dense":
        out = torch.empty(bsz, hq, nq, d, device=q.device, dtype=q.dtype)
        out = dense_rows(q, k, v, RowSet(0, 0, 1, q0, nk), scale=scale, out=out, config=kc.get("dense"))
        finish(state, plan)
        return out

    rows = RowSet(plan.anchor_lo, body_end, gamma, plan.tail_lo, nk)
    dense = None
    if mode != "sparse" and len(rows):
        dense = dense_rows(q, k, v, rows, scale=scale, config=kc.get("dense"))

    pattern = plan_pattern(config, q, k, q_start=q0, scale=scale)
    sp_cfg = kernel_config(q.dtype, sparse_mod.CONFIG) if kc.get("sparse") is None else dict(kc["sparse"])
    row_end = nk if mode in ("sparse", "recompute") else body_end
    # index lists are per head: built for one head per program (tile = BM positions)
    spec = spec_for(pattern, q_start=q0, row_end=max(row_end, q0 + 1), n_keys=nk, bm=sp_cfg["BM"], bn=sp_cfg["BN"])
    bmp = sparse_mod.tile_positions(sp_cfg, hq // k.shape[1], spec)  # positions per sparse tile

    def sparse_rows(out_dtype, delta=None, out=None):
        if spec is None:  # user pattern: the reference computes Õ (only the rows needed)
            sp, _ = attention_rows(
                q[:, :, : row_end - q0],
                k[:, :, :row_end],
                v[:, :, :row_end],
                scale=scale,
                q_start=q0,
                pattern=pattern,
                dense_pos=torch.zeros(0, dtype=torch.long, device=q.device),
                compute_dtype=torch.float32,
                method=config.method_name,
            )
            full = out if out is not None else torch.empty(bsz, hq, nq, d, device=q.device, dtype=out_dtype)
            full[:, :, : row_end - q0] = sp.to(full.dtype)
            return full
        return sparse_mod.sparse_attention(
            q, k, v, spec, scale=scale, row_end=row_end, out=out, out_dtype=out_dtype, delta=delta, config=sp_cfg
        )

    if mode == "sparse":
        out = sparse_rows(q.dtype)
        finish(state, plan)
        return out
    if mode == "recompute":
        out = sparse_rows(q.dtype)
        if dense is not None:
            local = torch.from_numpy(rows.positions() - q0).to(q.device)
            out.index_copy_(2, local, dense.to(q.dtype))
        finish(state, plan)
        return out

    # ---- mode == "delta" -------------------------------------------------------------------------
    n_anchor = plan.n_anchors
    if config.interp not in ("repeat", *FILTER_INTERPS):  # linear: PyTorch combine on kernel-computed rows
        sp = sparse_rows(torch.float32)
        extra = None
        if plan.has_body and config.extra_anchors > 0:
            extra = _extra_anchor_rows(plan, q, k, v, sp, dense, scale=scale, config=kc.get("dense"))
        return combine(plan, sp, dense, state, extra)

    out = torch.empty(bsz, hq, nq, d, device=q.device, dtype=q.dtype)
    if nk > plan.tail_start:  # exact tail rows
        out[:, :, plan.tail_lo - q0 :] = dense[:, :, n_anchor:].to(q.dtype)
    if not plan.has_body:
        finish(state, plan)
        return out
    if dense is None:  # a chunk inside one γ-block whose anchor came earlier: no dense rows here
        dense = torch.zeros(bsz, hq, 1, d, device=q.device, dtype=torch.float32)
    carry = plan.carried_delta.float().contiguous() if plan.carried_delta is not None else None
    per_block_scale = isinstance(config.delta_scale, str)  # "auto" / "auto-global": λ_j from the anchors' Δs
    fused = (
        config.extra_anchors == 0
        and config.interp == "repeat"
        and spec is not None
        and bmp % gamma == 0
        and sp_cfg["BM"] // gamma <= 8
        and (not per_block_scale or spec.kind == sparse_mod.PATTERN_RANGES)
    )
    scan_state = scale_sums = None
    if fused and per_block_scale:
        # the anchor kernel stores the raw Δ = D − Õ of the call's anchors; the λ kernels turn them (and the
        # carried block's Δ) into λ_jΔ_j and the running sums: combine.delta_scales + scale_deltas, fused
        raw = anchor_sparse_rows(
            q,
            k,
            v,
            spec,
            anchor_lo=plan.anchor_lo,
            n_anchor=n_anchor,
            gamma=gamma,
            scale=scale,
            config=kc.get("dense"),
            dense=dense,
        )
        given, scale_sums = scaled_block_deltas(plan, raw, config=kc.get("delta_scale"))
        sparse_rows(
            q.dtype,
            out=out,
            delta=dict(gamma=gamma, dense=dense, first_anchor=plan.anchor_lo, given=given, exact_anchor=True),
        )
        last_delta = raw[:, :, -1] if n_anchor else carry
    elif fused:
        delta_out = None
        if state is not None:
            delta_out = torch.empty(bsz, hq, plan.n_blocks, d, device=q.device, dtype=torch.float32)
        lam = float(config.delta_scale)
        sparse_rows(
            q.dtype,
            out=out,
            delta=dict(
                gamma=gamma,
                dense=dense,
                first_anchor=plan.anchor_lo,
                carry=carry,
                delta_out=delta_out,
                lam=lam,
                exact_anchor=lam != 1.0,
            ),
        )
        last_delta = delta_out[:, :, -1] if delta_out is not None else None
    else:
        sp = sparse_rows(torch.float32)
        raw, lam, scan_state, scale_sums = apply_block_deltas(plan, sp, dense[:, :, :n_anchor], out)
        last_delta = raw[:, :, -1]
        if config.extra_anchors > 0:  # repeat (the filters refuse extra anchors)
            _apply_extra_anchors(plan, q, k, v, sp, raw, lam, out, scale=scale, config=kc.get("dense"))
    finish(state, plan, last_delta=last_delta, scan_state=scan_state, scale_sums=scale_sums)
    return out


def apply_block_deltas(plan, sp: Tensor, anchor_dense: Tensor, out: Tensor):
    """The body rows of a ``delta`` call from Õ and its anchors' D (docs/algorithm.md §3–§5, §13), into ``out``.

    sp: Õ of the call's rows (B, Hq, Nq, D); anchor_dense: D of the call's anchors (B, Hq, n_anchors, D); out: where
    the rows go — ``sp`` itself (in place) or another tensor. Δ_j = D_j − Õ_j (float32; the carried block's Δ first),
    λ_jΔ_j, x_i by the scan kernel (``interp`` repeat or a filter; in place, repeat is one add per row,
    :func:`.scan.repeat_add`), and, for λ ≠ 1, the anchor rows exact. λ is :func:`delta_attn.combine.delta_scales`'
    except for the data-driven forms (``"auto"`` …) without extra anchors, whose λ_jΔ_j and running sums come from
    the Triton λ kernels (:func:`.delta_scale.scaled_block_deltas`: a few small launches, where delta_scales'
    PyTorch ops took 1.1–1.8 ms more at 128K on an H100, BENCHMARKS.md, eleventh session).
    Returns (raw Δs, λ, filter state after the last row or None, λ's running sums or None); λ is None for
    ``delta_scale=1.0`` and when the λ kernels applied it (only extra anchors read it).
    """
    q0, gamma, body_end = plan.q_start, plan.gamma, plan.body_end
    local = slice(plan.anchor_lo - q0, body_end - q0, gamma)  # the anchors' rows (none when past body_end)
    anchor_raw = anchor_dense.float() - sp[:, :, local].float()
    raw = anchor_raw
    if plan.carried_delta is not None:
        raw = torch.cat([plan.carried_delta.float().unsqueeze(2), raw], dim=2)
    by_kernels = _lambda_by_kernels(plan.config, sp)
    if by_kernels:  # λ_jΔ_j (the carried block's first) and the running sums; λ itself is not returned
        lam = None
        deltas, scale_sums = scaled_block_deltas(plan, anchor_raw)
    else:
        lam, scale_sums = delta_scales(plan, raw)  # λ = None for delta_scale=1.0
        deltas = scale_deltas(raw, lam)
    scan_state = None
    if plan.config.interp == "repeat" and out is sp:  # x_i = z_i: one add per row, no scan
        repeat_add(out, deltas, q_start=q0, body_end=body_end, gamma=gamma)
    else:
        if plan.config.interp == "repeat":  # the system M = 0, K = 1: x_i = z_i
            m, kk = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
            s_prev = deltas.new_zeros(*deltas.shape[:2], 1, deltas.shape[-1])
        else:
            m, kk, s_prev = filter_start(plan, deltas[:, :, 0])
            s_prev = s_prev.float()
        s_last = delta_scan_apply(sp, deltas, s_prev, m, kk, q_start=q0, body_end=body_end, gamma=gamma, out=out)
        scan_state = s_last if plan.config.interp != "repeat" else None
    if (by_kernels or lam is not None) and anchor_dense.shape[2]:  # λ ≠ 1: the anchor rows are exact
        out[:, :, local] = anchor_dense.to(out.dtype)
    return raw, lam, scan_state, scale_sums


def _lambda_by_kernels(config: DeltaConfig, sp: Tensor) -> bool:
    """Whether :func:`apply_block_deltas` takes λ_jΔ_j from the Triton λ kernels: a data-driven λ, no extra anchors
    (they need λ itself, which the kernels do not return) and Õ where the kernels run."""
    return isinstance(config.delta_scale, str) and config.extra_anchors == 0 and _supported(sp)


def _apply_extra_anchors(
    plan, q: Tensor, k: Tensor, v: Tensor, sp: Tensor, raw: Tensor, lam, out: Tensor, *, scale, config
) -> None:
    """``extra_anchors`` with ``repeat`` on an output already holding Õ + λΔ: rows m_j … (j+1)γ − 1 of
    each chosen block become Õ + λ_j Δ'_j and the row m_j itself D(m_j) (docs/algorithm.md §13).

    Only the rewritten rows are gathered (E · (γ − γ//2) per sequence), never every body row.
    """
    blocks = extra_anchor_blocks(plan, raw)
    if blocks.shape[1] == 0:
        return
    gamma, half, q0 = plan.gamma, plan.gamma // 2, plan.q_start
    extra = _extra_rows_at(q, k, v, extra_anchor_positions(plan, blocks), scale=scale, config=config)
    offsets = torch.arange(gamma - half, device=q.device)
    for b in range(q.shape[0]):
        mids = extra_anchor_positions(plan, blocks[b]) - q0  # (E,)
        d_extra = extra[b] - sp[b][:, mids]  # Δ'_j, (H, E, D)
        if isinstance(lam, Tensor):
            d_extra = d_extra * lam[b][:, blocks[b] - plan.first_block].unsqueeze(-1).to(d_extra.dtype)
        elif lam is not None:
            d_extra = d_extra * lam
        rows = (mids.view(-1, 1) + offsets.view(1, -1)).flatten()  # (E·(γ − half),)
        out[b][:, rows] = (sp[b][:, rows] + d_extra.repeat_interleave(gamma - half, dim=1)).to(out.dtype)
        out[b][:, mids] = extra[b].to(out.dtype)


def _extra_rows_at(q: Tensor, k: Tensor, v: Tensor, pos: Tensor, *, scale: float, config) -> Tensor:
    """D at the positions ``pos`` (B, E) of each sequence, (B, Hq, E, D) float32: the dense-row kernel
    with an explicit position list, one launch per sequence (the positions differ per sequence)."""
    bsz, hq, _, d = q.shape
    rows = torch.empty(bsz, hq, pos.shape[1], d, device=q.device, dtype=torch.float32)
    for b, p in enumerate(pos.tolist()):
        sl = slice(b, b + 1)
        dense_rows(q[sl], k[sl], v[sl], PositionList(tuple(p)), scale=scale, out=rows[sl], config=config)
    return rows


def _extra_anchor_rows(
    plan, q: Tensor, k: Tensor, v: Tensor, sp: Tensor, dense: Tensor, *, scale: float, config: dict | None
) -> tuple[Tensor, Tensor]:
    """``extra_anchors`` for :func:`delta_attn.combine.combine`: the chosen blocks (B, E) and D of their
    midpoint rows (B, Hq, E, D) float32."""
    blocks = extra_anchor_blocks(plan, anchor_deltas(plan, sp, dense))
    return blocks, _extra_rows_at(q, k, v, extra_anchor_positions(plan, blocks), scale=scale, config=config)
