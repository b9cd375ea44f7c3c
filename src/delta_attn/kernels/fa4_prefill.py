"""``backend="fa4"``: Δ attention whose two attention passes run on FlashAttention 4 (:mod:`.fa4`), the same
:class:`~delta_attn.backend.Backend` contract as :func:`.prefill.triton_prefill`.

What runs where, for one call (docs/algorithm.md §3–§5, §13):

1. Õ of every query row of the call: FA4's sink + window pass (:func:`.fa4.sparse_base`), written
   once, in q's dtype, into the output buffer (B, Nq, Hq, D) — the layout a transformers model hands over, so
   neither q nor the output is copied;
2. D of the call's anchors ``anchor_lo, anchor_lo + γ, …``: FA4 with the strided causal ``mask_mod``
   (:func:`.fa4.anchor_rows`, the GQA group's query heads packed into one tile); the exact tail rows, launched
   first, on this package's dense-rows kernel;
3. Δ_j = D_j − Õ_j in float32, λ (a float or the data-driven forms) and the body rows Õ + x_i in place, by the
   same code as the Triton backend's unfused path (:func:`.prefill.apply_block_deltas`: one add per row for
   ``repeat``, the scan kernel for the ``ema``/``abg`` filters). With ``Passes(fused_add=True)`` a ``repeat``
   call instead computes the anchors' raw Δ first (Triton's anchor kernel) and λ, and the sparse pass adds
   λ_jΔ_j in FA4's epilogue (:func:`_fused_delta`): no second pass over the output.

Chunked prefill carries Δ, the filter state and the λ sums exactly as the Triton backend does (:func:`finish`).
Only what FA4 expresses runs here: ``sparse="streaming"`` (sink + window) or dense rows, ``interp`` repeat / ema /
abg, no extra anchors; anything else raises a ValueError that names the Triton backend. The attention passes
are parameters (:class:`Passes`) so the CPU tests drive this orchestration with a float64 reference in place of
FA4, against :func:`delta_attn.reference.reference_prefill`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..backend import SequenceState, finish, plan_call
from ..combine import delta_scales, scale_deltas
from ..config import FILTER_INTERPS, DeltaConfig
from . import fa4
from .anchor_sparse import anchor_sparse_rows
from .delta_scale import scaled_block_deltas
from .dense_rows import RowSet, dense_rows
from .prefill import _last_dim_contiguous, apply_block_deltas, ensure_allocator
from .prefill import _supported as triton_supported
from .sparse import PATTERN_RANGES, SparseSpec


@dataclass(frozen=True)
class Passes:
    """The attention passes, in FA4's layout (B, N, H, D):

    sparse(q, k, v, *, sink, window, scale[, add]) → Õ of q's rows, the last Nq of the Nk keys; with ``add``
    (a :class:`~.fa4.BlockAdd`) the rows Õ + x of its blocks;
    rows(q_rows, k, v, *, start, step, scale) → dense causal attention of row j at position start + j·step;
    tail: the same for the exact tail rows (step 1), or None for this package's dense-rows kernel, which splits
    the keys over the SMs (FA4 cannot with block sparsity: ~128 rows over 128K keys would keep 32 of 132 SMs busy);
    fused_add: whether the ``delta``/``repeat`` body rows take the Δ add in the sparse pass (``sparse`` then takes
    ``add``; :func:`_fused_delta`); None: wherever FA4's epilogue wrapper applies (:func:`.fa4.wrapped_kernel`).
    False by default: it passes the GPU tests (tests/test_fa4_tiles.py) but measured slower than the add after the
    kernel — 17.1–18.0× against 19.2–19.5× cuDNN at 128K on an H100, the add costing 0.83 ms inside FA4's epilogue
    (BENCHMARKS.md, eleventh session; ``bench layer --methods delta+fa4+epi,delta+fa4+noepi``).
    """

    sparse: Callable[..., Tensor] = fa4.sparse_base
    rows: Callable[..., Tensor] = fa4.anchor_rows
    tail: Callable[..., Tensor] | None = None
    fused_add: bool | None = False


def unsupported(config: DeltaConfig) -> str | None:
    """Why ``config`` cannot run on the FA4 backend (None when it can)."""
    if config.mode != "dense" and config.sparse != "streaming":
        return f"sparse={config.sparse!r} (the FA4 backend runs sink + window, sparse='streaming')"
    if config.mode == "delta" and config.interp not in ("repeat", *FILTER_INTERPS):
        return f"interp={config.interp!r} (the FA4 backend runs repeat, {', '.join(FILTER_INTERPS)})"
    if config.mode == "delta" and config.extra_anchors:
        return "extra_anchors (the FA4 backend has none)"
    return None


def fa4_prefill(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    config: DeltaConfig,
    *,
    scale: float,
    prompt_len: int,
    state: SequenceState | None = None,
    passes: Passes | None = None,
) -> Tensor:
    """The FA4 :class:`~delta_attn.backend.Backend`: (B, Hq, Nq, D) like :func:`.prefill.triton_prefill`; the
    returned tensor is a (B, Hq, Nq, D) view of (B, Nq, Hq, D) memory."""
    why = unsupported(config)
    if why is not None:
        raise ValueError(f"backend='fa4' cannot run {why}; use backend='triton' (or 'auto') for it")
    if passes is None:  # the real FA4 kernels: their dtypes and head dims (the CPU tests pass float64 stand-ins)
        if q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] % 8 or q.shape[-1] > 256:
            raise ValueError(
                f"backend='fa4' runs fp16/bf16 with head dim a multiple of 8 up to 256, got {q.dtype} and "
                f"head dim {q.shape[-1]}; use backend='triton' (or 'auto')"
            )
        passes = Passes()
    bsz, hq, nq, d = q.shape
    nk = k.shape[2]
    q0 = nk - nq
    plan = plan_call(config, q0, nk, prompt_len, state, device=q.device)
    # FA4 reads (B, N, H, D) with the last dim contiguous: a model's projections already are, seen transposed
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    qf, kf, vf = (t.transpose(1, 2) for t in (q, k, v))

    def rows(lo: int, hi: int, step: int) -> Tensor:  # D at positions lo, lo + step, … < hi: (B, R, Hq, D)
        return passes.rows(qf[:, lo - q0 : hi - q0 : step], kf, vf, start=lo, step=step, scale=scale)

    if config.mode == "dense":
        dense = rows(q0, nk, 1)
        finish(state, plan)
        return dense.transpose(1, 2)
    tail = None
    if config.mode != "sparse" and nk > plan.tail_start:
        # The exact tail rows first: a short Triton launch, so the GPU is busy while FA4's Python prepares the Õ
        # call (host time a synchronised call would otherwise wait through); copied into place after Õ.
        if passes.tail is None:
            if q.is_cuda:
                ensure_allocator()  # the dense-rows kernel's TMA descriptors
            tail = q.new_empty(bsz, hq, nk - plan.tail_lo, d)
            dense_rows(q, k, v, RowSet(plan.tail_lo, plan.tail_lo, 1, plan.tail_lo, nk), scale=scale, out=tail)
        else:
            tail = passes.tail(qf[:, plan.tail_lo - q0 :], kf, vf, start=plan.tail_lo, step=1, scale=scale)
            tail = tail.transpose(1, 2)
    if _fused(config, plan, q, passes):
        return _fused_delta(plan, q, k, v, rows, tail, passes, scale=scale, state=state)
    out = passes.sparse(qf, kf, vf, sink=config.sink, window=config.window, scale=scale)  # (B, Nq, Hq, D)
    o = out.transpose(1, 2)  # (B, Hq, Nq, D) view, written in place below
    if config.mode == "sparse":
        finish(state, plan)
        return o
    gamma, body_end = config.gamma, plan.body_end
    if tail is not None:
        o[:, :, plan.tail_lo - q0 :] = tail
    anchors = None
    if plan.n_anchors:
        anchors = rows(plan.anchor_lo, body_end, gamma).transpose(1, 2).float()  # (B, Hq, n_anchor, D)
    local = slice(plan.anchor_lo - q0, body_end - q0, gamma)
    if config.mode == "recompute":
        if anchors is not None:
            o[:, :, local] = anchors.to(o.dtype)
        finish(state, plan)
        return o
    if not plan.has_body:
        finish(state, plan)
        return o
    if anchors is None:  # a chunk inside one γ-block whose anchor came earlier
        anchors = o.new_zeros(bsz, hq, 0, d, dtype=torch.float32)
    raw, _, scan_state, scale_sums = apply_block_deltas(plan, o, anchors, o)  # in place: repeat is one add per row
    finish(state, plan, last_delta=raw[:, :, -1], scan_state=scan_state, scale_sums=scale_sums)
    return o


def _fused(config: DeltaConfig, plan, q: Tensor, passes: Passes) -> bool:
    """Whether this call's body rows take the Δ add in FA4's epilogue (:func:`_fused_delta`)."""
    if config.mode != "delta" or config.interp != "repeat" or not plan.has_body or not triton_supported(q):
        return False
    return passes.fused_add if passes.fused_add is not None else fa4.wrapped_kernel(q.device)


def _fused_delta(plan, q, k, v, rows, tail: Tensor | None, passes: Passes, *, scale: float, state) -> Tensor:
    """A ``delta`` call with ``interp="repeat"`` whose body rows are stored once, as Õ + λ_jΔ_j, by FA4's
    epilogue: D of the anchors first (FA4), then the raw Δ_j = D_j − Õ_j of the anchor rows alone (the Triton
    backend's small kernel, :func:`.anchor_sparse.anchor_sparse_rows`: 1/γ of the rows), λ (a float, or the
    data-driven forms by :func:`.delta_scale.scaled_block_deltas`, as the Triton backend's fused path), then Õ with
    the add (:class:`.fa4.BlockAdd`). Saves the separate read and write of every output row that the unfused path
    spends on the add; the anchor rows are then set to D exactly."""
    config, q0, body_end, n_anchor = plan.config, plan.q_start, plan.body_end, plan.n_anchors
    gamma = config.gamma
    anchors = None
    if n_anchor:
        anchors = rows(plan.anchor_lo, body_end, gamma).transpose(1, 2)  # (B, Hq, n_anchor, D), q's dtype
    spec = SparseSpec(PATTERN_RANGES, sink=config.sink, window=config.window)
    raw = anchor_sparse_rows(
        q, k, v, spec, anchor_lo=plan.anchor_lo, n_anchor=n_anchor, gamma=gamma, scale=scale, dense=anchors
    )
    carry = plan.carried_delta.float() if plan.carried_delta is not None else None
    scale_sums = None
    if isinstance(config.delta_scale, str):  # "auto" and its forms: λ_j from the anchors' Δs, as the Triton backend
        given, scale_sums = scaled_block_deltas(plan, raw)
    else:  # a float λ (None for 1.0): the carried block's Δ first, then the anchors'
        deltas = raw if carry is None else torch.cat([carry.unsqueeze(2), raw], dim=2)
        given = scale_deltas(deltas, delta_scales(plan, deltas)[0]).contiguous()
    add = fa4.BlockAdd(given, block0=q0 // gamma * gamma, gamma=gamma, row_end=body_end)
    qf, kf, vf = (t.transpose(1, 2) for t in (q, k, v))  # FA4's (B, N, H, D) views
    out = passes.sparse(qf, kf, vf, sink=config.sink, window=config.window, scale=scale, add=add)
    o = out.transpose(1, 2)  # (B, Hq, Nq, D) view of FA4's (B, Nq, Hq, D) output
    if tail is not None:
        o[:, :, plan.tail_lo - q0 :] = tail
    if anchors is not None:  # D exactly (Õ_j + Δ_j would mix FA4's and the Triton kernel's Õ_j)
        o[:, :, plan.anchor_lo - q0 : body_end - q0 : gamma] = anchors
    finish(state, plan, last_delta=raw[:, :, -1] if n_anchor else carry, scale_sums=scale_sums)
    return o
