"""Õ of the anchor rows alone, for λ = auto in the fused epilogue (docs/algorithm.md §13).

``delta_scale="auto"`` needs each anchor's raw Δ before the sparse kernel's epilogue can add λ_j·Δ_j, so this
small kernel computes the sparse output of the N/γ anchor rows only (the GQA group's heads packed in one tile),
over the analytic key ranges of a sink+window or block pattern (:class:`.sparse.SparseSpec`). Given the dense
rows, its epilogue stores the raw Δ = D − Õ directly (what :mod:`.delta_scale` reads), so no PyTorch
subtraction (and no (B, Hq, n, D) temporary) sits between the two.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .core import LOG2E, kv_pointers, load_kv, load_q_rows, row_pointers, softmax_step
from .dense_rows import kernel_config
from .sparse import PATTERN_RANGES, SparseSpec, _allowed

# Launch configuration per input dtype. A tile of BM packed rows spans BM/G anchors, γ positions apart, and
# visits the union of their windows (BM = 128, G = 4, γ = 64: 32 anchors over 1,984 positions, ~1.9× the keys
# each row needs). Smaller tiles waste less but run slower: at 128K on an H100 (one Llama-3-8B layer, 2026-12-07,
# ``python -m delta_attn.bench.profile --anchor-tiles 128:8,64:4,64:8,32:4``) BM 128 / 8 warps took 0.49 ms,
# BM 64 / 4 warps 0.62, BM 64 / 8 warps 0.83, BM 32 / 4 warps 0.98 (BENCHMARKS.md).
CONFIG = {
    "half": dict(BM=128, BN=64, num_warps=8, num_stages=3),
    "float32": dict(BM=64, BN=32, num_warps=4, num_stages=2),
}


@triton.jit(do_not_specialize=["q_start", "n_keys", "anchor_lo", "n_anchor", "qk_scale", "sink", "window", "bsize"])
def _anchor_sparse_kernel(
    Q,
    K,
    V,
    Out,
    Dense,
    sqb,
    sqh,
    sqn,
    skb,
    skh,
    skn,
    svb,
    svh,
    svn,
    sob,
    soh,
    son,
    sdb,
    sdh,
    sdn,
    Hkv,
    G,
    q_start,
    n_keys,
    anchor_lo,
    gamma,
    n_anchor,
    qk_scale,
    sink,
    window,
    bsize,
    D: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    HAS_BLOCK: tl.constexpr,
    HAS_DENSE: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Õ of the anchor rows alone (positions anchor_lo + a·γ) under an analytic-range pattern; with HAS_DENSE,
    D − Õ (Dense: the anchors' dense rows, row a = anchor a).

    Rows are packed like the dense-rows kernel's (the G query heads of a KV head interleaved), so a
    tile of BM rows spans BM/G anchors and shares every K/V tile it loads; it visits the sink tiles
    and the union of its rows' local ranges, every tile masked (a few per cent of the sparse kernel's
    work: 1/γ of the rows)."""
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hkv
    hk = bh % Hkv
    r = tile * BM + tl.arange(0, BM)
    a = r // G
    row_ok = a < n_anchor
    a = tl.minimum(a, n_anchor - 1)
    head = hk * G + r % G
    pos = anchor_lo + a * gamma
    p_min = anchor_lo + ((tile * BM) // G) * gamma
    p_max = anchor_lo + tl.minimum((tile * BM + BM - 1) // G, n_anchor - 1) * gamma
    offs_d = tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    d_ok = offs_d < D
    q = load_q_rows(Q, b, head, pos, q_start, sqb, sqh, sqn, offs_d, row_ok, d_ok)
    k_base = b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    kt_ptrs, v_ptrs = kv_pointers(K, V, k_base, v_base, offs_n, offs_d, skn, svn)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BD], tl.float32)
    lo = p_max + 1
    if window > 0:
        lo = tl.minimum(lo, p_min - window + 1)
    if HAS_BLOCK:
        lo = tl.minimum(lo, (p_min // bsize) * bsize)
    b_lo = (tl.maximum(lo, 0) // BN) * BN
    a_end = tl.minimum(((sink + BN - 1) // BN) * BN, b_lo)
    n_sink = a_end // BN
    n_tiles = n_sink + (p_max + 1 - b_lo + BN - 1) // BN
    for i in range(0, n_tiles):
        k0 = tl.where(i < n_sink, i * BN, b_lo + (i - n_sink) * BN)
        k, v = load_kv(kt_ptrs, v_ptrs, 0, 0, 0, 0, 0, k0, offs_n, offs_d, skn, svn, n_keys, D, True, 0)
        allowed = _allowed(
            pos,
            k0 + offs_n,
            sink,
            window,
            bsize,
            0,
            0,
            1,
            0,
            1,
            1,
            0,
            0,
            0,
            n_keys,
            0,
            HAS_BLOCK,  # pattern 0: ranges
        )
        acc, l_i, m_i = softmax_step(acc, l_i, m_i, q, k, v, qk_scale, allowed, True, DOT_PREC)
    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    out_mask = row_ok[:, None] & d_ok[None, :]
    if HAS_DENSE:  # the raw Δ of each anchor
        d_ptrs = row_pointers(Dense, b, head, a, sdb, sdh, sdn, offs_d)
        o = tl.load(d_ptrs, mask=out_mask, other=0.0).to(tl.float32) - o
    tl.store(row_pointers(Out, b, head, a, sob, soh, son, offs_d), o, mask=out_mask)


def anchor_sparse_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: SparseSpec,
    *,
    anchor_lo: int,
    n_anchor: int,
    gamma: int,
    scale: float,
    config: dict | None = None,
    dense: torch.Tensor | None = None,
) -> torch.Tensor:
    """Õ (float32, (B, Hq, n_anchor, D), contiguous) of the anchor rows ``anchor_lo + a·γ`` only, for an
    analytic-range pattern (``spec.kind == PATTERN_RANGES``): what ``delta_scale="auto"`` needs before the
    sparse kernel runs, so that the per-block λ is known in its epilogue. With ``dense`` ((B, Hq, ≥ n_anchor, D),
    row a the dense row of anchor a, last dim contiguous) it returns the raw Δ = D − Õ instead. ``config``: a
    launch config (BM packed rows, BN keys, num_warps, num_stages; pointer loads); default :data:`CONFIG` for the
    dtype."""
    if spec.kind != PATTERN_RANGES:
        raise ValueError("anchor_sparse_rows takes analytic-range patterns only (sink/window/block/dense)")
    bsz, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = hq // hkv
    if dense is not None and (dense.shape[:2] != (bsz, hq) or dense.shape[2] < n_anchor or dense.shape[3] != d):
        raise ValueError(f"dense rows {tuple(dense.shape)} do not cover the {n_anchor} anchors of q {tuple(q.shape)}")
    if dense is not None and dense.stride(-1) != 1:
        dense = dense.contiguous()
    out = torch.empty(bsz, hq, n_anchor, d, device=q.device, dtype=torch.float32)
    if n_anchor == 0:
        return out
    cfg = kernel_config(q.dtype, CONFIG) if config is None else dict(config)
    bm, bn = cfg.pop("BM"), cfg.pop("BN")
    for key in ("USE_TMA", "HP", "ITEMS_PER_SM", "MAX_CHUNK"):  # not options of this kernel
        cfg.pop(key, None)
    bd = max(16, triton.next_power_of_2(d))
    grid = (triton.cdiv(n_anchor * g, bm), bsz * hkv)
    _anchor_sparse_kernel[grid](
        q,
        k,
        v,
        out,
        dense if dense is not None else out,
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        *out.stride()[:3],
        *(dense.stride()[:3] if dense is not None else (0, 0, 0)),
        hkv,
        g,
        nk - nq,
        nk,
        anchor_lo,
        gamma,
        n_anchor,
        scale * LOG2E,
        spec.sink,
        spec.window,
        max(1, spec.block_size),
        D=d,
        BD=bd,
        BM=bm,
        BN=bn,
        HAS_BLOCK=spec.block_size > 0,
        HAS_DENSE=dense is not None,
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        **cfg,
    )
    return out
