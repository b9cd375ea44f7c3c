"""Dense causal attention of selected query rows, each at its own position (Δ's anchor + tail rows).

Row p (absolute position) attends to keys 0..p. The rows are a sorted position list, e.g. every
γ-th row plus the tail; they are never treated as a block of consecutive queries.

How the work is laid out
------------------------
* **GQA packing, no K/V copy.** For KV head ``hk`` the rows of its ``G = Hq/Hkv`` query heads are
  interleaved: packed row ``r`` is position ``pos[r // G]`` of query head ``hk*G + r % G``. A tile
  of ``BM`` packed rows shares every K/V tile it loads among the G heads, and its rows span only
  ``BM/G`` positions, so the causally masked remainder is short.
* **Unmasked prefix + masked remainder.** Keys below the tile's smallest position are visible to
  every row: that loop has no mask. Only the last few key tiles (up to the largest position) are
  masked.
* **Split over keys.** A tile's key range is cut into chunks (multiples of BN): small ones when
  there are too few tiles to fill the GPU (γ = 64 leaves only N/64 rows), and never more than
  ``MAX_CHUNK`` keys. Each chunk writes a normalised partial output and its log-sum-exp, and
  :func:`_merge_kernel` combines them.
* **Chunk-major order, one KV head at a time.** All tiles' first chunk, then the second, …; the
  programs in flight therefore read the same K/V chunk of the same head and hit L2 instead of HBM
  (this took the kernel from 0.90 to 1.01 of cuDNN's FLOP rate at 1M tokens, BENCHMARKS.md).

The schedule (tiles, chunks, merge lists) depends only on the row positions and the shapes, so it
is built once on the host and cached; all layers of a model reuse it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import triton
import triton.language as tl

from .core import LOG2E, kv_pointers, load_kv, load_q_rows, make_kv_descriptors, row_pointers, softmax_step


@dataclass(frozen=True)
class RowSet:
    """Sorted absolute positions ``range(anchor_lo, anchor_hi, gamma)`` followed by ``range(tail_lo, tail_hi)``.

    Anchor positions must all be below ``tail_lo``. Hashable, so it keys the schedule cache.
    """

    anchor_lo: int
    anchor_hi: int
    gamma: int
    tail_lo: int
    tail_hi: int

    def positions(self) -> np.ndarray:
        a = np.arange(self.anchor_lo, max(self.anchor_lo, self.anchor_hi), self.gamma, dtype=np.int64)
        t = np.arange(self.tail_lo, max(self.tail_lo, self.tail_hi), dtype=np.int64)
        return np.concatenate([a, t])

    @property
    def n_anchors(self) -> int:
        return len(range(self.anchor_lo, max(self.anchor_lo, self.anchor_hi), self.gamma))

    def __len__(self) -> int:
        return self.n_anchors + max(0, self.tail_hi - self.tail_lo)


@dataclass(frozen=True)
class PositionList:
    """An explicit sorted tuple of absolute row positions (the ``extra_anchors`` rows); used like a :class:`RowSet`."""

    rows: tuple[int, ...]

    def positions(self) -> np.ndarray:
        return np.asarray(self.rows, dtype=np.int64)

    @property
    def n_anchors(self) -> int:
        return len(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


# Launch configuration per input dtype, chosen by `python -m delta_attn.bench.launch` on an H200
# (BENCHMARKS.md). USE_TMA falls back to pointer loads where descriptors are not allowed.
CONFIG = {
    "half": dict(BM=128, BN=64, num_warps=8, num_stages=3, USE_TMA=True),
    "float32": dict(BM=64, BN=32, num_warps=4, num_stages=2, USE_TMA=False),
}
ITEMS_PER_SM = 4  # target number of work items per SM when splitting over keys
MAX_CHUNK = 32768  # keys per work item at most (K+V of one head's chunk stays in L2)
SEGMENT_ALIGN = 16  # int32 elements (64 bytes) between the starts of the schedule's device arrays


# Scalars that change with the prompt length are not specialised on (no recompile per length).
@triton.jit(do_not_specialize=["n_rows", "q_start", "n_keys", "n_slots", "n_items", "qk_scale"])
def _dense_rows_kernel(
    Q,
    K,
    V,
    DescK,
    DescV,
    Out,
    PartO,
    PartL,
    Pos,
    ItemTile,
    ItemLo,
    ItemHi,
    ItemSlot,
    TileMin,
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
    n_rows,
    q_start,
    n_keys,
    Hkv,
    G,
    n_slots,
    n_items,
    qk_scale,
    D: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    USE_TMA: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    # 1-D grid, (batch, KV head)-major: programs in flight share one head's current K/V chunk in L2
    pid = tl.program_id(0)
    bh = pid // n_items
    item = pid % n_items
    b = bh // Hkv
    hk = bh % Hkv
    tile = tl.load(ItemTile + item)
    k_lo = tl.load(ItemLo + item)
    k_hi = tl.load(ItemHi + item)
    slot = tl.load(ItemSlot + item)
    p_min = tl.load(TileMin + tile)

    r = tile * BM + tl.arange(0, BM)
    a = r // G  # row of the position list
    head = hk * G + r % G  # query head
    row_ok = a < n_rows
    pos = tl.load(Pos + a, mask=row_ok, other=-1)
    offs_d = tl.arange(0, BD)
    offs_n = tl.arange(0, BN)
    d_ok = offs_d < D
    q = load_q_rows(Q, b, head, pos, q_start, sqb, sqh, sqn, offs_d, row_ok, d_ok)

    k_base = b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    desc_k, desc_v, row0 = make_kv_descriptors(
        K, V, DescK, DescV, k_base, v_base, bh, n_keys, skn, svn, D, BN, BD, USE_TMA
    )
    kt_ptrs, v_ptrs = kv_pointers(K, V, k_base, v_base, offs_n, offs_d, skn, svn)

    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BD], tl.float32)
    # keys below full_end are <= every row's position: no mask needed
    full_end = ((p_min + 1) // BN) * BN
    mid = tl.maximum(k_lo, tl.minimum(k_hi, full_end))
    for k0 in range(k_lo, mid, BN):
        k, v = load_kv(
            kt_ptrs, v_ptrs, desc_k, desc_v, row0, b, hk, k0, offs_n, offs_d, skn, svn, n_keys, D, False, USE_TMA
        )
        acc, l_i, m_i = softmax_step(acc, l_i, m_i, q, k, v, qk_scale, None, False, DOT_PREC)
    for k0 in range(mid, k_hi, BN):
        k, v = load_kv(
            kt_ptrs, v_ptrs, desc_k, desc_v, row0, b, hk, k0, offs_n, offs_d, skn, svn, n_keys, D, True, USE_TMA
        )
        allowed = (k0 + offs_n)[None, :] <= pos[:, None]
        acc, l_i, m_i = softmax_step(acc, l_i, m_i, q, k, v, qk_scale, allowed, True, DOT_PREC)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    if slot < 0:  # the whole key range in one item: final output
        o_ptrs = row_pointers(Out, b, head, a, sob, soh, son, offs_d)
        tl.store(o_ptrs, o.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    else:  # one chunk of a split tile: normalised partial output + log2-sum-exp
        base = (bh.to(tl.int64) * n_slots + slot) * BM
        rows = tl.arange(0, BM)
        tl.store(PartO + (base + rows)[:, None] * BD + offs_d[None, :], o)
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe))
        tl.store(PartL + base + rows, lse)


@triton.jit(do_not_specialize=["n_rows", "n_slots"])
def _merge_kernel(
    Out,
    PartO,
    PartL,
    MergeTile,
    MergeSlot0,
    MergeCount,
    sob,
    soh,
    son,
    n_rows,
    Hkv,
    G,
    n_slots,
    D: tl.constexpr,
    BD: tl.constexpr,
    BM: tl.constexpr,
):
    """Combine the chunks of one split tile: o = Σ_c 2^(lse_c - lse) o_c."""
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hkv
    hk = bh % Hkv
    tile = tl.load(MergeTile + i)
    s0 = tl.load(MergeSlot0 + i)
    cnt = tl.load(MergeCount + i)
    rows = tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    base = bh.to(tl.int64) * n_slots
    m = tl.full([BM], float("-inf"), tl.float32)
    for c in range(cnt):
        m = tl.maximum(m, tl.load(PartL + (base + s0 + c) * BM + rows))
    m_use = tl.where(m == float("-inf"), 0.0, m)
    acc = tl.zeros([BM, BD], tl.float32)
    wsum = tl.zeros([BM], tl.float32)
    for c in range(cnt):
        off = (base + s0 + c) * BM
        w = tl.math.exp2(tl.load(PartL + off + rows) - m_use)
        acc += w[:, None] * tl.load(PartO + (off + rows)[:, None] * BD + offs_d[None, :])
        wsum += w
    o = acc / tl.where(wsum == 0.0, 1.0, wsum)[:, None]
    r = tile * BM + rows
    a = r // G
    head = hk * G + r % G
    ok = (a < n_rows)[:, None] & (offs_d < D)[None, :]
    tl.store(row_pointers(Out, b, head, a, sob, soh, son, offs_d), o.to(Out.dtype.element_ty), mask=ok)


@dataclass
class _Schedule:
    pos: torch.Tensor  # (nR,) int32 absolute positions
    item_tile: torch.Tensor
    item_lo: torch.Tensor
    item_hi: torch.Tensor
    item_slot: torch.Tensor
    tile_min: torch.Tensor
    merge_tile: torch.Tensor
    merge_slot0: torch.Tensor
    merge_count: torch.Tensor
    n_items: int
    n_slots: int
    n_merge: int


def plan_items(
    pos: np.ndarray,
    g: int,
    bm: int,
    bn: int,
    n_heads: int,
    n_sm: int,
    items_per_sm: int = ITEMS_PER_SM,
    max_chunk: int = MAX_CHUNK,
) -> dict:
    """Host-side schedule: tiles of BM packed rows, their key chunks, and the merge lists.

    Key chunks are at most ``MAX_CHUNK`` keys (and smaller when there are too few tiles to fill the
    GPU). Items are ordered chunk-major — all tiles' chunk 0, then chunk 1, … — and the kernel runs
    one KV head's items before the next head's, so the programs in flight at any time read the same
    K/V chunk of the same head and find it in L2 (a 32K-key chunk of K and V is 16 MB at d = 128).
    Returns numpy arrays.
    """
    n_rows = len(pos)
    n_packed = n_rows * g
    n_tiles = -(-n_packed // bm)
    t = np.arange(n_tiles)
    a_lo = (t * bm) // g
    a_hi = (np.minimum((t + 1) * bm, n_packed) - 1) // g
    p_min, p_max = pos[a_lo], pos[a_hi]
    length = p_max + 1  # keys 0..p_max
    cost = -(-length // bn)  # key tiles per row tile
    # no item above ~1/ITEMS_PER_SM of one SM's share of the work (balance), nor above MAX_CHUNK (L2)
    share = int(cost.sum()) * n_heads / max(1, n_sm)
    chunk_tiles = min(max(1, max_chunk // bn), max(16, int(np.ceil(share / items_per_sm))))
    chunk = chunk_tiles * bn
    n_chunks = -(-length // chunk)
    it_tile = np.repeat(t, n_chunks)
    first = np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)
    c = np.arange(len(it_tile)) - first
    it_lo = c * chunk
    it_hi = np.minimum((c + 1) * chunk, length[it_tile])
    split = n_chunks[it_tile] > 1
    slot = np.full(len(it_tile), -1, dtype=np.int64)
    slot[split] = np.arange(int(split.sum()))  # contiguous per tile, in chunk order
    order = np.lexsort((-(it_hi - it_lo), c))  # chunk-major; longer (whole) chunks first within a chunk
    split_tiles = np.nonzero(n_chunks > 1)[0]
    slot0 = np.cumsum(n_chunks[split_tiles]) - n_chunks[split_tiles]
    return dict(
        pos=pos,
        item_tile=it_tile[order],
        item_lo=it_lo[order],
        item_hi=it_hi[order],
        item_slot=slot[order],
        tile_min=p_min,
        merge_tile=split_tiles,
        merge_slot0=slot0,
        merge_count=n_chunks[split_tiles],
        n_slots=int(split.sum()),
    )


@lru_cache(maxsize=64)
def _schedule(
    rows: RowSet,
    g: int,
    bm: int,
    bn: int,
    n_heads: int,
    n_sm: int,
    device: str,
    items_per_sm: int = ITEMS_PER_SM,
    max_chunk: int = MAX_CHUNK,
) -> _Schedule:
    plan = plan_items(rows.positions(), g, bm, bn, n_heads, n_sm, items_per_sm, max_chunk)
    keys = [
        "pos",
        "item_tile",
        "item_lo",
        "item_hi",
        "item_slot",
        "tile_min",
        "merge_tile",
        "merge_slot0",
        "merge_count",
    ]
    # One host->device copy, each array starting on a SEGMENT_ALIGN boundary: Triton specialises pointer
    # arguments on 16-byte alignment, so slices at offsets that depend on the row count would give the
    # kernels a new signature -- and a recompilation -- at almost every new prompt length.
    sizes = [-(-max(1, len(plan[k])) // SEGMENT_ALIGN) * SEGMENT_ALIGN for k in keys]
    flat = np.zeros(sum(sizes), dtype=np.int32)
    parts, o = {}, 0
    for k, size in zip(keys, sizes):
        flat[o : o + len(plan[k])] = plan[k]
        parts[k] = o
        o += size
    dev = torch.from_numpy(flat).to(device)
    parts = {k: dev[o : o + len(plan[k])] for k, o in parts.items()}
    return _Schedule(**parts, n_items=len(plan["item_tile"]), n_slots=plan["n_slots"], n_merge=len(plan["merge_tile"]))


@lru_cache(maxsize=32)
def stand_in(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A one-element tensor for a pointer argument a launch does not read or write, made once per device and dtype:
    fresh ones cost an allocation and a fill kernel of host time before every call, and a stand-in of the real
    argument's dtype keeps the kernel's signature (one compilation whatever the call has)."""
    return torch.zeros(1, device=device, dtype=dtype)


def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 8
    return torch.cuda.get_device_properties(device).multi_processor_count


def kernel_config(dtype: torch.dtype, table: dict) -> dict:
    return dict(table["float32" if dtype == torch.float32 else "half"])


def tma_ok(*tensors: torch.Tensor) -> bool:
    """TMA descriptors need 16-byte aligned bases and row strides, and last-dim stride 1."""
    for t in tensors:
        es = t.element_size()
        if t.stride(-1) != 1 or (t.data_ptr() % 16) or any((s * es) % 16 for s in t.stride()[:-1]):
            return False
    return True


def kv_descriptors(k: torch.Tensor, v: torch.Tensor, bn: int, bd: int, use_tma):
    """How the kernels read K/V: returns (desc_k, desc_v, mode), mode as in :func:`.core.make_kv_descriptors`.

    ``use_tma`` (the launch config's ``USE_TMA``): false → pointer loads (mode 0); true → host-made
    TMA descriptors: 2-D over (B·Hkv·Nk, D) for contiguous K/V (mode 2), else 4-D over (B, Hkv, Nk, D)
    with the tensors' own strides (mode 3: the transposed projections of a model's forward, the views
    of a longer buffer that ``PreallocatedCache`` hands over); ``"device"`` → like true, but strided
    K/V get descriptors made inside every program (mode 1, the slower path of BENCHMARKS.md's in-place
    cache numbers; kept to compare). Padded head dims and unaligned strides use pointer loads.
    Unused descriptor slots are passed as 0.
    """
    if not use_tma or not tma_ok(k, v) or k.shape[-1] != bd:
        return 0, 0, 0
    from triton.tools.tensor_descriptor import TensorDescriptor

    if k.is_contiguous() and v.is_contiguous():
        d = k.shape[-1]
        descs = [TensorDescriptor(t, [t.numel() // d, d], [d, 1], [bn, bd]) for t in (k, v)]
        return descs[0], descs[1], 2
    if use_tma == "device":
        return 0, 0, 1
    descs = [TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, bn, bd]) for t in (k, v)]
    return descs[0], descs[1], 3


def dense_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: RowSet | PositionList,
    *,
    scale: float,
    out: torch.Tensor | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """Dense causal attention of the query rows at absolute positions ``rows``.

    q: (B, Hq, Nq, D), the queries at positions ``[Nk - Nq, Nk)``; k, v: (B, Hkv, Nk, D), last
    dim contiguous; GQA by head index. Returns ``out`` (B, Hq, len(rows), D): float32 by default,
    or the given tensor (any float dtype / strides, e.g. the final output for ``mode="dense"``).
    """
    bsz, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = hq // hkv
    n_rows = len(rows)
    if out is None:
        out = torch.empty(bsz, hq, n_rows, d, device=q.device, dtype=torch.float32)
    if n_rows == 0:
        return out
    cfg = kernel_config(q.dtype, CONFIG) if config is None else dict(config)
    bm, bn = cfg.pop("BM"), cfg.pop("BN")
    # the split over keys (schedule options, not compile options): work items per SM, keys per item at most
    split = (int(cfg.pop("ITEMS_PER_SM", ITEMS_PER_SM)), int(cfg.pop("MAX_CHUNK", MAX_CHUNK)))
    bd = max(16, triton.next_power_of_2(d))
    sched = _schedule(rows, g, bm, bn, bsz * hkv, num_sms(q.device), str(q.device), *split)
    # float32 dummies when nothing is split: the same argument types as a split launch (one compiled kernel)
    part_o = part_l = stand_in(q.device, torch.float32)
    if sched.n_slots:
        part_o = torch.empty(bsz * hkv * sched.n_slots * bm, bd, device=q.device, dtype=torch.float32)
        part_l = torch.empty(bsz * hkv * sched.n_slots * bm, device=q.device, dtype=torch.float32)
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    grid = (sched.n_items * bsz * hkv,)
    desc_k, desc_v, tma_mode = kv_descriptors(k, v, bn, bd, cfg.pop("USE_TMA"))
    _dense_rows_kernel[grid](
        q,
        k,
        v,
        desc_k,
        desc_v,
        out,
        part_o,
        part_l,
        sched.pos,
        sched.item_tile,
        sched.item_lo,
        sched.item_hi,
        sched.item_slot,
        sched.tile_min,
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        *out.stride()[:3],
        n_rows,
        nk - nq,
        nk,
        hkv,
        g,
        max(1, sched.n_slots),
        sched.n_items,
        scale * LOG2E,
        D=d,
        BD=bd,
        BM=bm,
        BN=bn,
        USE_TMA=tma_mode,
        DOT_PREC=prec,
        **cfg,
    )
    merge_args = (
        out,
        part_o,
        part_l,
        sched.merge_tile,
        sched.merge_slot0,
        sched.merge_count,
        *out.stride()[:3],
        n_rows,
        hkv,
        g,
        max(1, sched.n_slots),
    )
    merge_options = dict(D=d, BD=bd, BM=bm, num_warps=8)
    if sched.n_merge:
        _merge_kernel[(sched.n_merge, bsz * hkv)](*merge_args, **merge_options)
    else:
        # Nothing split (a short prompt): compile the merge kernel anyway, with the argument types a split call
        # will have, so that the first longer prompt does not pay its compilation (a cache hit after this).
        _merge_kernel.warmup(*merge_args, grid=(1, 1), **merge_options)
    return out
