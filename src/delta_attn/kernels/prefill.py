"""``triton_prefill``: the GPU backend, same contract as :func:`delta_attn.reference.reference_prefill`.

The steps of one call (queries at absolute positions ``[q_start, Nk)``, q_start = Nk − Nq):

1. dense rows D (anchors every γ plus the exact tail): :func:`.dense_rows.dense_rows`;
2. the sparse rows Õ of the body ``[q_start, body_end)``: :func:`.sparse.sparse_attention`, with
   the Δ broadcast fused into its epilogue for ``interp="repeat"`` (γ dividing the tile);
3. otherwise the Δ apply as a filter over the rows (:mod:`.scan`) for ``repeat``/``ema``/``abg``;
4. the tail rows are copied from D.

Whatever the kernels do not cover falls back to the reference pieces rather than failing:
user ``mask_mod`` patterns get Õ from the PyTorch reference, ``interp="linear"`` is combined in
PyTorch (:func:`delta_attn.combine.combine`), and inputs the kernels do not take (CPU tensors,
float64, head dims above 256) run :func:`reference_prefill` whole.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..combine import _SequenceState, combine, open_block_delta, row_schedule, scan_start
from ..config import DeltaConfig
from ..reference import attention_rows, reference_prefill
from ..sparse import resolve_sparse_method
from . import sparse as sparse_mod
from .blocks import spec_for
from .dense_rows import RowSet, dense_rows, kernel_config
from .interpret import active as _interpreting
from .interpret import enable as _enable_interpreter
from .scan import delta_scan_apply

MAX_HEAD_DIM = 256
_INTERPRET = _interpreting()
if _INTERPRET:
    _enable_interpreter()
_ALLOCATOR_SET = False


def _supported(q: Tensor) -> bool:
    on_device = q.is_cuda or _INTERPRET
    return on_device and q.dtype in (torch.float16, torch.bfloat16, torch.float32) and q.shape[-1] <= MAX_HEAD_DIM


def _ensure_allocator() -> None:
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
    state: _SequenceState | None = None,
    kernel_configs: dict | None = None,
) -> Tensor:
    """One sequence group (shared positions) on the GPU. Returns (B, Hq, Nq, D) in q's dtype.

    Same arguments and semantics as :func:`delta_attn.reference.reference_prefill`: queries are the
    last Nq of the Nk key positions (``q_start = Nk − Nq``), ``prompt_len`` places the exact tail, and
    ``state`` carries Δ (and the ema/abg filter state) between chunks. ``kernel_configs`` may override
    the launch configuration (``{"dense": {...}, "sparse": {...}}``; used by the benchmark).
    """
    if not _supported(q):
        return reference_prefill(q, k, v, config, scale=scale, prompt_len=prompt_len, state=state)
    kc = kernel_configs or {}
    if q.is_cuda:
        _ensure_allocator()
    q = _last_dim_contiguous(q)
    k = _last_dim_contiguous(k)
    v = _last_dim_contiguous(v)
    bsz, hq, nq, d = q.shape
    nk = k.shape[2]
    q0 = nk - nq
    mode, gamma = config.mode, config.gamma
    tail_start = prompt_len - config.tail_rows(prompt_len)
    body_end = min(nk, tail_start)

    if mode == "dense":
        out = torch.empty(bsz, hq, nq, d, device=q.device, dtype=q.dtype)
        return dense_rows(q, k, v, RowSet(0, 0, 1, q0, nk), scale=scale, out=out, config=kc.get("dense"))

    anchor_lo = -(-q0 // gamma) * gamma
    rows = RowSet(anchor_lo, body_end, gamma, max(q0, tail_start), nk)
    dense = None
    if mode != "sparse" and len(rows):
        dense = dense_rows(q, k, v, rows, scale=scale, config=kc.get("dense"))

    pattern = resolve_sparse_method(config.sparse).plan(q, k, config, q_start=q0, scale=scale)
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
            )
            full = out if out is not None else torch.empty(bsz, hq, nq, d, device=q.device, dtype=out_dtype)
            full[:, :, : row_end - q0] = sp.to(full.dtype)
            return full
        return sparse_mod.sparse_attention(
            q, k, v, spec, scale=scale, row_end=row_end, out=out, out_dtype=out_dtype, delta=delta, config=sp_cfg
        )

    if mode == "sparse":
        return sparse_rows(q.dtype)
    if mode == "recompute":
        out = sparse_rows(q.dtype)
        if dense is not None:
            local = torch.from_numpy(rows.positions() - q0).to(q.device)
            out.index_copy_(2, local, dense.to(q.dtype))
        return out

    # ---- mode == "delta" -------------------------------------------------------------------------
    n_anchor = rows.n_anchors
    if config.interp == "linear":  # non-causal blend: PyTorch combine on kernel-computed rows
        sched = row_schedule(config, q0, nk, prompt_len, device=q.device)
        sp = sparse_rows(torch.float32)
        return combine(config, sched, sp, dense, state)

    out = torch.empty(bsz, hq, nq, d, device=q.device, dtype=q.dtype)
    if nk > tail_start:  # exact tail rows
        out[:, :, max(q0, tail_start) - q0 :] = dense[:, :, n_anchor:].to(q.dtype)
    if body_end > q0:
        first_block, last_block = q0 // gamma, (body_end - 1) // gamma
        if dense is None:  # a chunk inside one γ-block whose anchor came earlier: no dense rows here
            dense = torch.zeros(bsz, hq, 1, d, device=q.device, dtype=torch.float32)
        carry = open_block_delta(state, q0, gamma)
        carry = carry.float().contiguous() if carry is not None else None
        fused = config.interp == "repeat" and spec is not None and bmp % gamma == 0 and sp_cfg["BM"] // gamma <= 8
        if fused:
            delta_out = None
            if state is not None:
                delta_out = torch.empty(bsz, hq, last_block - first_block + 1, d, device=q.device, dtype=torch.float32)
            sparse_rows(
                q.dtype,
                out=out,
                delta=dict(gamma=gamma, dense=dense, first_anchor=anchor_lo, carry=carry, delta_out=delta_out),
            )
            last_delta = delta_out[:, :, -1] if delta_out is not None else None
        else:
            sp = sparse_rows(torch.float32)
            anchors = torch.arange(anchor_lo, max(anchor_lo, body_end), gamma, device=q.device) - q0
            deltas = dense[:, :, :n_anchor] - sp[:, :, anchors]
            if carry is not None:
                deltas = torch.cat([carry.unsqueeze(2), deltas], dim=2)
            if config.interp == "repeat":
                m, kk = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
                s_prev = deltas.new_zeros(bsz, hq, 1, d)
            else:
                m, kk, s_prev = scan_start(config, state, q0, deltas[:, :, 0])
                s_prev = s_prev.float()
            s_last = delta_scan_apply(sp, deltas, s_prev, m, kk, q_start=q0, body_end=body_end, gamma=gamma, out=out)
            if state is not None and config.interp != "repeat":
                state.scan = s_last
            last_delta = deltas[:, :, -1]
        if state is not None:
            state.block_index = last_block
            state.block_delta = last_delta
    if state is not None:
        state.next_pos = nk
    return out
