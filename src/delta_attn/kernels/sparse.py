"""Sparse-base attention Õ for consecutive query rows, with the Δ correction fused into the epilogue.

One program computes ``BMP = BM / HP`` consecutive query positions of ``HP`` query heads of one KV
group (default HP = 1; GQA by head index: K/V are read from head ``h // G`` and never copied).
Tiles start at absolute multiples of ``BMP`` so that γ-blocks (γ dividing BMP) never straddle two
programs.

Which keys a tile visits
------------------------
Every pattern is described by a few numbers and, for the data-dependent ones, small index tables
(:class:`SparseSpec`); nothing N×N is ever built.

* **Analytic ranges** (``sink``, ``window``, ``block_size``): query p sees key j ≤ p when
  ``j < sink`` or ``p - j < window`` or ``j // block_size == p // block_size``. That is
  ``streaming`` (sink + window), ``block`` (anchor block = sink of ``block_size`` + own block) and
  ``dense`` (window = ∞). Per tile this gives a sink range ``[0, a_end)`` and a local range
  ``[b_lo, p_last]``. They are walked in two loops: one without a mask (whole sink tiles and the
  middle of the window) and one with it (window edge, diagonal, partial sink tiles).
* **Index lists** (``topk``, ``vertical_slash``): per (batch, head, query tile) a list of extra key
  tiles (``blk_idx``/``blk_cnt``) visited with a per-element mask read from the pattern's lookup
  tables, and for ``vertical_slash`` a list of single key columns (``col_idx``/``col_cnt``) that
  are gathered, BN at a time. Lists are built by :mod:`.blocks` and exclude what the ranges cover.

Epilogues
---------
* ``EPILOGUE=0``: store Õ (any output dtype).
* ``EPILOGUE=1`` (Δ, ``interp="repeat"``): for each γ-block in the tile,
  ``Δ = D_anchor − Õ_anchor`` (``D`` from the dense-rows kernel; ``Õ_anchor`` is a row of this
  tile) or the Δ carried from the previous chunk when the anchor lies before the call; then
  store ``Õ + λΔ`` with a constant λ (``delta_scale`` a float; 1 by default). Optionally store every
  raw Δ (for the chunked-prefill state).
* ``EPILOGUE=2`` (Δ with a per-block λ, ``delta_scale="auto"``/``"auto-decay"``/``"auto-global"``): the scaled
  ``λ_j Δ_j`` of every γ-block is given (from :func:`.anchor_sparse.anchor_sparse_rows`, D − Õ of the anchor rows
  alone, and :func:`.delta_scale.scaled_block_deltas`); store ``Õ + λ_j Δ_j``.
* ``EXACT_ANCHOR`` (λ ≠ 1, docs/algorithm.md §13): the anchor rows store D itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

from .core import LOG2E, kv_pointers, load_kv, load_q_rows, make_kv_descriptors, row_pointers, softmax_step
from .dense_rows import kernel_config, kv_descriptors, stand_in

# Launch configuration per input dtype, chosen by `python -m delta_attn.bench.launch` on an H200
# (BENCHMARKS.md); HP (query heads per program, default 1) was tried and not faster at 128K.
CONFIG = {
    "half": dict(BM=64, BN=64, num_warps=4, num_stages=3, USE_TMA=True),
    "float32": dict(BM=64, BN=32, num_warps=4, num_stages=2, USE_TMA=False),
}

PATTERN_RANGES, PATTERN_TOPK, PATTERN_VS = 0, 1, 2


@dataclass
class SparseSpec:
    """What the kernel needs to know about a pattern (see module docstring)."""

    kind: int = PATTERN_RANGES
    sink: int = 0
    window: int = 0
    block_size: int = 0
    # topk: selected key blocks per query block, (B, Hq, nQB, nKB) uint8, block size and first query block
    sel: torch.Tensor | None = None
    sel_block: int = 1
    sel_q0: int = 0
    # vertical_slash: kept-column and kept-diagonal lookup tables, (B, Hq, Nk) uint8
    col_mask: torch.Tensor | None = None
    diag_mask: torch.Tensor | None = None
    # index lists per (B, Hq, n_tiles): extra key tiles, gathered columns
    blk_idx: torch.Tensor | None = None
    blk_cnt: torch.Tensor | None = None
    col_idx: torch.Tensor | None = None
    col_cnt: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


@triton.jit
def _allowed(
    pos,
    kn,
    sink,
    window,
    bsize,
    Sel,
    sel_base,
    sel_block,
    sel_q0,
    n_qb,
    n_kb,
    ColM,
    DiagM,
    tbl_base,
    n_keys,
    PATTERN: tl.constexpr,
    HAS_BLOCK: tl.constexpr,
):
    """[BM, BN] mask of pattern ∩ causality for query positions pos [BM] and keys kn [BN]."""
    causal = kn[None, :] <= pos[:, None]
    if PATTERN == 2:
        col = tl.load(ColM + tbl_base + kn, mask=kn < n_keys, other=0) != 0
        off = tl.maximum(pos[:, None] - kn[None, :], 0)
        diag = tl.load(DiagM + tbl_base + off, mask=causal, other=0) != 0
        keep = col[None, :] | diag
    else:
        keep = (kn[None, :] < sink) | (pos[:, None] - kn[None, :] < window)
        if HAS_BLOCK:
            keep = keep | ((kn // bsize)[None, :] == (pos // bsize)[:, None])
        if PATTERN == 1:
            qb = tl.minimum(tl.maximum(pos // sel_block - sel_q0, 0), n_qb - 1)
            kb = tl.minimum(kn // sel_block, n_kb - 1)
            sel = tl.load(Sel + sel_base + qb[:, None].to(tl.int64) * n_kb + kb[None, :], mask=causal, other=0)
            keep = keep | (sel != 0)
    return causal & keep


# Scalars that change with the prompt length are not specialised on (no recompile per length).
@triton.jit(
    do_not_specialize=[
        "q_start",
        "row_end",
        "tile0",
        "n_keys",
        "qk_scale",
        "sink",
        "window",
        "bsize",
        "sel_q0",
        "n_qb",
        "n_kb",
        "blk_max",
        "col_max",
        "n_tiles",
        "tbl_stride",
        "first_anchor",
        "first_block",
        "n_delta",
        "lam",
    ]
)
def _sparse_kernel(
    Q,
    K,
    V,
    DescK,
    DescV,
    Out,
    Dense,
    Carry,
    Deltas,
    Sel,
    ColM,
    DiagM,
    BlkIdx,
    BlkCnt,
    ColIdx,
    ColCnt,
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
    Hq,
    G,
    q_start,
    row_end,
    tile0,
    n_keys,
    qk_scale,
    sink,
    window,
    bsize,
    sel_block,
    sel_q0,
    n_qb,
    n_kb,
    blk_max,
    col_max,
    n_tiles,
    tbl_stride,
    first_anchor,
    first_block,
    n_delta,
    lam,
    D: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    HP: tl.constexpr,
    PATTERN: tl.constexpr,
    HAS_BLOCK: tl.constexpr,
    EPILOGUE: tl.constexpr,
    GAMMA: tl.constexpr,
    STORE_DELTA: tl.constexpr,
    EXACT_ANCHOR: tl.constexpr,
    USE_TMA: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    # program = (batch, group of HP query heads of one KV head) × tile of BMP = BM/HP positions;
    # head groups vary fastest, so the G heads of a KV group read its K/V tiles from L2 together.
    BMP: tl.constexpr = BM // HP
    bh = tl.program_id(0)
    t = tl.program_id(1)
    n_hg = Hq // HP
    b = bh // n_hg
    h0 = (bh % n_hg) * HP
    hk = h0 // G
    rows = tl.arange(0, BM)
    h = h0 + rows // BMP  # query head of each row (all h0 when HP == 1)
    tile_p0 = tile0 + t * BMP
    pos = tile_p0 + rows % BMP
    row_ok = (pos >= q_start) & (pos < row_end)
    p0 = tl.maximum(tile_p0, q_start)  # first and last real position of the tile
    p_last = tl.minimum(tile_p0 + BMP, row_end) - 1
    p_end = p_last + 1

    offs_d = tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    d_ok = offs_d < D
    q = load_q_rows(Q, b, h, pos, q_start, sqb, sqh, sqn, offs_d, row_ok, d_ok)
    k_base = b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    desc_k, desc_v, row0 = make_kv_descriptors(
        K, V, DescK, DescV, k_base, v_base, b * (Hq // G) + hk, n_keys, skn, svn, D, BN, BD, USE_TMA
    )
    kt_ptrs, v_ptrs = kv_pointers(K, V, k_base, v_base, offs_n, offs_d, skn, svn)
    bh_q = (b * Hq + h0).to(tl.int64)  # index-list patterns run with HP == 1: one head per program
    tbl_base = bh_q * tbl_stride  # row of the (B, Hq, N) vertical-slash tables
    sel_base = bh_q * n_qb * n_kb

    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BD], tl.float32)

    # ---- analytic ranges: local range [b_lo, p_end) and sink range [0, a_end) --------------------
    lo = p_end
    if window > 0:
        lo = tl.minimum(lo, p0 - window + 1)
    if HAS_BLOCK:
        lo = tl.minimum(lo, (p0 // bsize) * bsize)
    if lo < p_end:
        b_lo = (tl.maximum(lo, 0) // BN) * BN
    else:
        b_lo = p_end  # no local range
    a_end = tl.minimum(((sink + BN - 1) // BN) * BN, b_lo)
    # keys in [f_lo, f_hi) are allowed for every row of the tile: no mask
    f_hi = ((p0 + 1) // BN) * BN
    f_lo = p_end + BN * 4  # "never"
    if window > 0:  # (divisions below only ever see non-negative operands: Triton's // truncates)
        f_lo = ((tl.maximum(p_end - window, 0) + BN - 1) // BN) * BN
    if HAS_BLOCK:
        f_lo = tl.minimum(f_lo, (((p_last // bsize) * bsize + BN - 1) // BN) * BN)
    x = tl.minimum(tl.maximum(f_lo, b_lo), p_end)
    y = tl.minimum(tl.maximum(f_hi, x), p_end)

    # Two loops, not four: each loop start pays a pipeline fill, and a 64-row tile only has ~35 key
    # tiles. Unmasked: the sink tiles every row sees whole, then [x, y). Masked: the rest of the sink
    # range, the window's lower edge [b_lo, x) and the diagonal [y, p_end). k0 walks the
    # concatenated segments.
    n_sf = tl.minimum(tl.minimum(sink // BN, (p0 + 1) // BN), a_end // BN)  # whole sink tiles
    sf_end = n_sf * BN
    n_full = n_sf + (y - x) // BN
    for i in range(0, n_full):
        k0 = tl.where(i < n_sf, i * BN, x + (i - n_sf) * BN)
        k, v = load_kv(
            kt_ptrs, v_ptrs, desc_k, desc_v, row0, b, hk, k0, offs_n, offs_d, skn, svn, n_keys, D, False, USE_TMA
        )
        acc, l_i, m_i = softmax_step(acc, l_i, m_i, q, k, v, qk_scale, None, False, DOT_PREC)
    m1 = (a_end - sf_end + BN - 1) // BN
    m2 = m1 + (x - b_lo + BN - 1) // BN
    n_masked = m2 + (p_end - y + BN - 1) // BN
    for i in range(0, n_masked):
        k0 = tl.where(i < m1, sf_end + i * BN, tl.where(i < m2, b_lo + (i - m1) * BN, y + (i - m2) * BN))
        k, v = load_kv(
            kt_ptrs, v_ptrs, desc_k, desc_v, row0, b, hk, k0, offs_n, offs_d, skn, svn, n_keys, D, True, USE_TMA
        )
        allowed = _allowed(
            pos,
            k0 + offs_n,
            sink,
            window,
            bsize,
            Sel,
            sel_base,
            sel_block,
            sel_q0,
            n_qb,
            n_kb,
            ColM,
            DiagM,
            tbl_base,
            n_keys,
            PATTERN,
            HAS_BLOCK,
        )
        acc, l_i, m_i = softmax_step(acc, l_i, m_i, q, k, v, qk_scale, allowed, True, DOT_PREC)

    # ---- index lists: extra key tiles (topk / vertical_slash), then gathered columns -----------
    lst = bh_q * n_tiles + t
    if PATTERN != 0:
        cnt = tl.load(BlkCnt + lst)
        for i in range(cnt):
            k0 = tl.load(BlkIdx + lst * blk_max + i) * BN
            if (k0 >= a_end) & ((k0 < b_lo) | (k0 >= p_end)):  # not visited by the ranges above
                k, v = load_kv(
                    kt_ptrs, v_ptrs, desc_k, desc_v, row0, b, hk, k0, offs_n, offs_d, skn, svn, n_keys, D, True, USE_TMA
                )
                allowed = _allowed(
                    pos,
                    k0 + offs_n,
                    sink,
                    window,
                    bsize,
                    Sel,
                    sel_base,
                    sel_block,
                    sel_q0,
                    n_qb,
                    n_kb,
                    ColM,
                    DiagM,
                    tbl_base,
                    n_keys,
                    PATTERN,
                    HAS_BLOCK,
                )
                acc, l_i, m_i = softmax_step(acc, l_i, m_i, q, k, v, qk_scale, allowed, True, DOT_PREC)
    if PATTERN == 2:
        n_col = tl.load(ColCnt + lst)
        for c0 in range(0, n_col, BN):
            c_ok = c0 + offs_n < n_col
            kn = tl.load(ColIdx + lst * col_max + c0 + offs_n, mask=c_ok, other=0)
            k = tl.load(
                K + k_base + kn[None, :].to(tl.int64) * skn + offs_d[:, None],
                mask=c_ok[None, :] & d_ok[:, None],
                other=0.0,
            )
            v = tl.load(
                V + v_base + kn[:, None].to(tl.int64) * svn + offs_d[None, :],
                mask=c_ok[:, None] & d_ok[None, :],
                other=0.0,
            )
            allowed = c_ok[None, :] & (kn[None, :] <= pos[:, None])
            acc, l_i, m_i = softmax_step(acc, l_i, m_i, q, k, v, qk_scale, allowed, True, DOT_PREC)

    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    if EPILOGUE != 0:
        # λΔ of every γ-block of the tile (γ divides BMP), added to its rows in place: block s reads its anchor's
        # Õ from rows not yet changed (earlier blocks only touch their own rows), and no second [BM, BD]
        # temporary stays live (with one, BM = 128 tiles spilled registers)
        for s in tl.static_range(BM // GAMMA):
            h_a = h0 + (s * GAMMA) // BMP  # head and position of the block's anchor row
            a_pos = tile_p0 + (s * GAMMA) % BMP
            bh_a = (b * Hq + h_a).to(tl.int64)
            own = (a_pos >= q_start) & (a_pos < row_end)
            carried = (a_pos < q_start) & (a_pos + GAMMA > q_start)
            blk = a_pos // GAMMA - first_block
            d_a = tl.load(
                Dense
                + b.to(tl.int64) * sdb
                + h_a.to(tl.int64) * sdh
                + ((a_pos - first_anchor) // GAMMA).to(tl.int64) * sdn
                + offs_d,
                mask=d_ok & own,
                other=0.0,
            )
            if EPILOGUE == 1:
                o_a = tl.sum(tl.where((rows == s * GAMMA)[:, None], o, 0.0), axis=0)  # Õ of the anchor row
                c_a = tl.load(Carry + bh_a * D + offs_d, mask=d_ok & carried, other=0.0)
                raw = tl.where(own, d_a - o_a, c_a)
                delta = raw * lam
                if STORE_DELTA:
                    tl.store(
                        Deltas + (bh_a * n_delta + blk) * D + offs_d,
                        raw,
                        mask=d_ok & (own | carried) & (a_pos < row_end),
                    )
            else:  # the scaled Δ of the block, computed before this kernel
                delta = tl.load(
                    Deltas + (bh_a * n_delta + blk) * D + offs_d,
                    mask=d_ok & (own | carried) & (a_pos < row_end),
                    other=0.0,
                )
            o = tl.where(((rows // GAMMA) == s)[:, None], o + delta[None, :], o)
            if EXACT_ANCHOR:  # λ ≠ 1: the anchor row stores D itself
                o = tl.where(((rows == s * GAMMA) & own)[:, None], d_a[None, :], o)
    o_ptrs = row_pointers(Out, b, h, pos - q_start, sob, soh, son, offs_d)
    tl.store(o_ptrs, o.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def heads_per_program(hp: int, group: int, spec: SparseSpec | None) -> int:
    """Query heads packed into one program: they must share a KV head, and index-list patterns
    (per-head lists) run one head per program."""
    if hp <= 1 or group % hp or (spec is not None and spec.kind != PATTERN_RANGES):
        return 1
    return hp


def tile_positions(config: dict, group: int, spec: SparseSpec | None) -> int:
    """Consecutive query positions per sparse tile for a launch configuration."""
    return config["BM"] // heads_per_program(config.get("HP", 1), group, spec)


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: SparseSpec,
    *,
    scale: float,
    row_end: int | None = None,
    out: torch.Tensor | None = None,
    out_dtype=None,
    delta: dict | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """Õ of the query rows at positions ``[q_start, row_end)`` (q_start = Nk − Nq).

    q: (B, Hq, Nq, D); k, v: (B, Hkv, Nk, D), last dim contiguous. Writes rows ``0 .. row_end-q_start-1``
    of ``out`` (B, Hq, Nq, D) (allocated in ``out_dtype``, default q's, if not given) and returns it.

    ``delta`` switches on the fused Δ epilogue: a dict with ``gamma`` (must divide BM), ``dense``
    (B, Hq, nR, D) float32 dense rows whose first rows are the anchors from ``first_anchor`` on,
    ``first_anchor``, ``carry`` ((B, Hq, D) float32 Δ of the block open at q_start, or None),
    ``delta_out`` ((B, Hq, n_blocks, D) float32 to receive every raw Δ, or None), ``lam`` (a float λ
    scaling every Δ, default 1), ``given`` ((B, Hq, n_blocks, D) float32 λ_jΔ_j of every block the
    call touches, the open one first: EPILOGUE 2; ``carry``/``delta_out``/``lam`` are then unused)
    and ``exact_anchor`` (store D on the anchor rows; required when λ ≠ 1).
    """
    bsz, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    q_start = nk - nq
    row_end = nk if row_end is None else row_end
    if out is None:
        out = torch.empty(bsz, hq, nq, d, device=q.device, dtype=out_dtype or q.dtype)
    if row_end <= q_start:
        return out
    cfg = kernel_config(q.dtype, CONFIG) if config is None else dict(config)
    bm, bn = cfg.pop("BM"), cfg.pop("BN")
    hp = heads_per_program(cfg.pop("HP", 1), hq // hkv, spec)
    bmp = bm // hp  # positions per tile
    if spec.extra.get("BM", bmp) != bmp or spec.extra.get("BN", bn) != bn:
        raise ValueError("index lists were built for another tile size")
    bd = max(16, triton.next_power_of_2(d))
    tile0 = (q_start // bmp) * bmp
    n_tiles = -(-(row_end - tile0) // bmp)
    dummy8, dummy32 = stand_in(q.device, torch.uint8), stand_in(q.device, torch.int32)
    sel = spec.sel if spec.sel is not None else dummy8
    col_m = spec.col_mask if spec.col_mask is not None else dummy8
    diag_m = spec.diag_mask if spec.diag_mask is not None else dummy8
    blk_idx = spec.blk_idx if spec.blk_idx is not None else dummy32
    blk_cnt = spec.blk_cnt if spec.blk_cnt is not None else dummy32
    col_idx = spec.col_idx if spec.col_idx is not None else dummy32
    col_cnt = spec.col_cnt if spec.col_cnt is not None else dummy32
    n_qb, n_kb = (spec.sel.shape[2], spec.sel.shape[3]) if spec.sel is not None else (1, 1)
    if delta is not None:
        gamma = int(delta["gamma"])
        if bmp % gamma:
            raise ValueError(f"fused Δ needs gamma ({gamma}) to divide the positions per tile ({bmp})")
        dense = delta["dense"]
        carry = delta.get("carry")
        given = delta.get("given")
        delta_out = given if given is not None else delta.get("delta_out")
        if given is not None:
            carry = None
        lam = float(delta.get("lam", 1.0))
        exact_anchor = bool(delta.get("exact_anchor", False))
        epilogue = 2 if given is not None else 1
        sd = dense.stride()[:3]
        first_anchor, first_block = int(delta["first_anchor"]), q_start // gamma
    else:
        gamma, dense, carry, delta_out, sd, first_anchor, first_block = bm, out, None, None, (0, 0, 0), 0, 0
        lam, exact_anchor, epilogue, given = 1.0, False, 0, None
    carry = carry if carry is not None else stand_in(q.device, torch.float32)
    n_delta = delta_out.shape[2] if delta_out is not None else 1
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    grid = (bsz * hq // hp, n_tiles)
    desc_k, desc_v, tma_mode = kv_descriptors(k, v, bn, bd, cfg.pop("USE_TMA"))
    _sparse_kernel[grid](
        q,
        k,
        v,
        desc_k,
        desc_v,
        out,
        dense,
        carry,
        delta_out if delta_out is not None else carry,
        sel,
        col_m,
        diag_m,
        blk_idx,
        blk_cnt,
        col_idx,
        col_cnt,
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        *out.stride()[:3],
        *sd,
        hq,
        hq // hkv,
        q_start,
        row_end,
        tile0,
        nk,
        scale * LOG2E,
        spec.sink,
        spec.window,
        max(1, spec.block_size),
        spec.sel_block,
        spec.sel_q0,
        n_qb,
        n_kb,
        blk_idx.shape[-1] if spec.blk_idx is not None else 1,
        col_idx.shape[-1] if spec.col_idx is not None else 1,
        n_tiles,
        spec.diag_mask.shape[-1] if spec.diag_mask is not None else nk,
        first_anchor,
        first_block,
        n_delta,
        lam,
        D=d,
        BD=bd,
        BM=bm,
        BN=bn,
        HP=hp,
        PATTERN=spec.kind,
        HAS_BLOCK=spec.block_size > 0,
        EPILOGUE=epilogue,
        GAMMA=gamma,
        STORE_DELTA=epilogue == 1 and delta_out is not None,
        EXACT_ANCHOR=exact_anchor,
        USE_TMA=tma_mode,
        DOT_PREC=prec,
        **cfg,
    )
    return out
