"""From a sparse pattern to the :class:`~.sparse.SparseSpec` the sparse kernel reads.

Static patterns become a few numbers (sink, window, block size). The data-dependent ones become
per-(batch, head, query-tile) index lists, built here with tensor ops on the GPU, never as an N×N
mask: a tile-level table ``(B, Hq, n_tiles, n_key_tiles)`` computed from prefix sums of the
pattern's own lookup tables, compacted into sorted lists. The table is built a few heads at a time
to bound its memory.
"""

from __future__ import annotations

import torch

from ..sparse import AnchorBlockPattern, BlockTopKPattern, DensePattern, SinkWindowPattern, VerticalSlashPattern
from .sparse import PATTERN_RANGES, PATTERN_TOPK, PATTERN_VS, SparseSpec

TABLE_ELEMENTS = 1 << 26  # tile-table entries built at once


def tile_rows(q_start: int, row_end: int, bm: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last real query position of every kernel tile (tiles start at multiples of bm)."""
    tile0 = (q_start // bm) * bm
    n_tiles = -(-(row_end - tile0) // bm)
    t0 = tile0 + torch.arange(n_tiles, device=device) * bm
    return t0.clamp(min=q_start), (t0 + bm).clamp(max=row_end) - 1


def compact(mask: torch.Tensor, values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of the last axis: the positions (or ``values``) where mask is True, in order, left-packed.

    Returns (idx (..., max_count) int32, count (...) int32); max_count is at least 1.
    """
    count = mask.sum(-1, dtype=torch.int32)
    width = max(1, int(count.max().item())) if count.numel() else 1
    order = torch.sort(mask.to(torch.int8), dim=-1, descending=True, stable=True).indices[..., :width]
    idx = order if values is None else torch.gather(values.expand(*mask.shape[:-1], -1), -1, order)
    return idx.to(torch.int32).contiguous(), count


def _head_chunks(n_heads: int, per_head: int):
    step = max(1, TABLE_ELEMENTS // max(1, per_head))
    for h0 in range(0, n_heads, step):
        yield h0, min(n_heads, h0 + step)


def _lists_from_tables(tables: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [compact(t) for t in tables]
    width = max(p[0].shape[-1] for p in parts)
    idx = torch.cat([torch.nn.functional.pad(p[0], (0, width - p[0].shape[-1])) for p in parts], dim=1)
    return idx.contiguous(), torch.cat([p[1] for p in parts], dim=1).contiguous()


def _topk_spec(p: BlockTopKPattern, q_start: int, row_end: int, n_keys: int, bm: int, bn: int) -> SparseSpec:
    dev = p.block_mask.device
    sel = p.block_mask.contiguous()
    bsz, hq, nqb, nkb = sel.shape
    tb = p.block
    p_first, p_last = tile_rows(q_start, row_end, bm, dev)
    n_kt = -(-n_keys // bn)
    k0 = torch.arange(n_kt, device=dev) * bn
    q_lo = (p_first // tb - p.q_block_start).clamp(0, nqb - 1)
    q_hi = (p_last // tb - p.q_block_start).clamp(0, nqb - 1)
    k_lo = (k0 // tb).clamp(max=nkb - 1)
    k_hi = ((k0 + bn - 1) // tb).clamp(max=nkb - 1)
    causal = k0.view(1, -1) <= p_last.view(-1, 1)
    tables = []
    for h0, h1 in _head_chunks(hq, bsz * max(len(p_first) * n_kt, (nqb + 1) * (nkb + 1))):
        s = torch.zeros(bsz, h1 - h0, nqb + 1, nkb + 1, device=dev, dtype=torch.int32)
        s[:, :, 1:, 1:] = sel[:, h0:h1].to(torch.int32).cumsum(2).cumsum(3)
        qa, qb = q_lo.view(-1, 1), q_hi.view(-1, 1) + 1
        ka, kb = k_lo.view(1, -1), k_hi.view(1, -1) + 1
        rect = s[:, :, qb, kb] - s[:, :, qa, kb] - s[:, :, qb, ka] + s[:, :, qa, ka]
        tables.append((rect > 0) & causal)
    blk_idx, blk_cnt = _lists_from_tables(tables)
    return SparseSpec(
        kind=PATTERN_TOPK,
        sink=p.sink,
        window=p.window,
        sel=sel.view(torch.uint8),
        sel_block=tb,
        sel_q0=p.q_block_start,
        blk_idx=blk_idx,
        blk_cnt=blk_cnt,
        extra={"BM": bm, "BN": bn},
    )


def _vs_spec(p: VerticalSlashPattern, q_start: int, row_end: int, n_keys: int, bm: int, bn: int) -> SparseSpec:
    dev = p.columns.device
    col_mask = p.column_mask.contiguous()
    diag_mask = p.diagonal_mask.contiguous()
    bsz, hq, nk = diag_mask.shape
    p_first, p_last = tile_rows(q_start, row_end, bm, dev)
    n_kt = -(-n_keys // bn)
    k0 = torch.arange(n_kt, device=dev).view(1, -1) * bn
    # offsets i - j reachable from the tile pair: [p_first - (k0 + bn - 1), p_last - k0], clipped to [0, nk)
    lo = (p_first.view(-1, 1) - k0 - bn + 1).clamp(0, nk)
    hi = (p_last.view(-1, 1) - k0 + 1).clamp(0, nk)
    live = k0 <= p_last.view(-1, 1)
    cols = p.columns.to(torch.int64)
    col_tile = cols // bn
    blk_tables, col_parts = [], []
    for h0, h1 in _head_chunks(hq, bsz * len(p_first) * max(n_kt, cols.shape[-1])):
        cs = torch.zeros(bsz, h1 - h0, nk + 1, device=dev, dtype=torch.int32)
        cs[:, :, 1:] = diag_mask[:, h0:h1].to(torch.int32).cumsum(-1)
        table = ((cs[:, :, hi] - cs[:, :, lo]) > 0) & live & (hi > lo)
        blk_tables.append(table)
        # columns left for the gather loop: causal for the tile and not inside a visited key tile
        c = cols[:, h0:h1].unsqueeze(2)  # (B, h, 1, Kv)
        covered = torch.gather(table, 3, col_tile[:, h0:h1].unsqueeze(2).expand(-1, -1, table.shape[2], -1))
        col_parts.append(compact((c <= p_last.view(1, 1, -1, 1)) & ~covered, c))
    blk_idx, blk_cnt = _lists_from_tables(blk_tables)
    parts = col_parts
    width = max(x[0].shape[-1] for x in parts)
    col_idx = torch.cat([torch.nn.functional.pad(x[0], (0, width - x[0].shape[-1])) for x in parts], dim=1)
    col_cnt = torch.cat([x[1] for x in parts], dim=1)
    return SparseSpec(
        kind=PATTERN_VS,
        col_mask=col_mask.view(torch.uint8),
        diag_mask=diag_mask.view(torch.uint8),
        blk_idx=blk_idx,
        blk_cnt=blk_cnt,
        col_idx=col_idx.contiguous(),
        col_cnt=col_cnt.contiguous(),
        extra={"BM": bm, "BN": bn},
    )


def spec_for(pattern, *, q_start: int, row_end: int, n_keys: int, bm: int, bn: int) -> SparseSpec | None:
    """The kernel description of a built-in pattern, or None (the caller then uses the reference)."""
    kind = type(pattern)
    if kind is SinkWindowPattern:
        return SparseSpec(PATTERN_RANGES, sink=pattern.sink, window=pattern.window)
    if kind is AnchorBlockPattern:
        return SparseSpec(PATTERN_RANGES, sink=pattern.block_size, window=0, block_size=pattern.block_size)
    if kind is DensePattern:
        return SparseSpec(PATTERN_RANGES, sink=0, window=n_keys + 1)
    if kind is BlockTopKPattern:
        return _topk_spec(pattern, q_start, row_end, n_keys, bm, bn)
    if kind is VerticalSlashPattern:
        return _vs_spec(pattern, q_start, row_end, n_keys, bm, bn)
    return None
