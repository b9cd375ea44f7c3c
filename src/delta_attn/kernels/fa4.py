"""The sparse base and the anchor rows on FlashAttention 4's CuTe-DSL kernels (Hopper and newer), as an
alternative to this package's Triton kernels.

FlashAttention 4 (``pip install flash-attn-4``: CuTe DSL, compiled at first use, no build step) runs a
warp-specialised, TMA-fed forward kernel on sm_90 — the producer/consumer split and ping-pong scheduling that
Triton 3.6 does not give there (BENCHMARKS.md: the Triton kernels stop at ~0.8 of cuDNN's rate per FLOP at
128K). It takes a FlexAttention-style ``mask_mod`` plus block-sparse tile lists, which is exactly what the two
passes of Δ attention need:

* the **sparse base** Õ over every query row: sink + sliding window (docs/algorithm.md §2, ``streaming``), as
  ``mask_mod`` ``k < sink or q − k < window`` (and k ≤ q) with the tiles that lie wholly inside that set listed
  as *full* (no mask evaluated) and the few boundary tiles as *partial*;
* the **anchor rows** D: dense causal attention of the γ-strided anchor queries (row j at position
  ``start + j·step``) over every earlier key, as ``mask_mod`` ``k ≤ start + j·step``.

The Δ combination itself (Δ_j = D_j − Õ_anchor, O = Õ + λΔ on the block's rows) is not FA4's: see
:mod:`delta_attn.kernels.fa4_prefill`.

The tile lists are computed here from integers (:func:`tile_lists`), on any device, so the CPU tests check them
against an enumerated mask; only the attention calls need the GPU and the package.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

#: Tile shape the FA4 sm_90 forward kernel is asked for (head dim ≤ 128); the block-sparse lists use the same.
TILE = (128, 128)

_INF = 2**62  # "no upper bound" in the interval arithmetic below (int64)


def available() -> str | None:
    """None when FlashAttention 4's CuTe kernels can run here, else the reason (for a clear error or a skip)."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    major, _ = torch.cuda.get_device_capability()
    if major < 9:
        return f"FlashAttention 4 needs sm_90 or newer (this GPU is sm_{major}x)"
    try:
        import flash_attn.cute.interface  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the machine
        return f"flash-attn-4 is not installed ({e}); pip install flash-attn-4"
    return None


def _intervals(k0: Tensor, k1: Tensor, sink: int, window: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For key tiles [k0, k1]: the query positions p that keep the whole tile, [s_lo, s_hi], and those that keep
    any key of it, [n_lo, n_hi], under "k ≤ p and (k < sink or p − k < window)" (window ≥ 1; a huge window is
    dense causal). Both sets are intervals of p (one case per tile: inside the sink columns, past them, or
    straddling their edge), which is why a query tile is classified by its first and last row alone."""
    s_lo = k1
    in_sink = k1 < sink
    past_sink = k0 >= sink
    s_hi = torch.where(in_sink, _INF, torch.where(past_sink, k0 + window - 1, sink + window - 1))
    n_lo = k0
    n_hi = torch.where(k0 < sink, _INF, k1 + window - 1)
    return s_lo, s_hi, n_lo, n_hi


def tile_lists(
    n_rows: int,
    n_k: int,
    *,
    start: int = 0,
    step: int = 1,
    sink: int = 0,
    window: int = _INF,
    tile: tuple[int, int] = TILE,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Block-sparse tile lists for FA4: per query tile, the key tiles to visit with the mask (partial) and without
    it (full), ascending, valid entries packed left.

    Query row j sits at absolute position ``start + j·step`` (j < n_rows); n_k keys; ``tile`` = (rows, keys) per
    tile. sink/window: the pattern (window ≥ n_k → dense causal). Returns (partial_count, partial_index,
    full_count, full_index), int32, shapes (1, 1, n_tiles) and (1, 1, n_tiles, width).

    The sets of §2 are intervals in p (:func:`_intervals`), so a query tile is classified by its first and last
    row. Only the key tiles a query tile can touch are classified — the sink's, then those from its first row's
    oldest window key to its last row — so the work is n_tiles × (sink + window + tile rows·step)/tile_n, not
    n_tiles × n_k/tile_n, and every shape is known on the host (no device→host sync).
    """
    if window < 1:
        raise ValueError(f"window must be ≥ 1, got {window}")
    tile_m, tile_n = tile
    n_kt = -(-n_k // tile_n)
    first = start + torch.arange(0, n_rows, tile_m, device=device, dtype=torch.int64) * step
    last = start + torch.clamp(torch.arange(0, n_rows, tile_m, device=device) + tile_m - 1, max=n_rows - 1) * step
    p0, p1 = first[:, None], last[:, None]
    sink_tiles = min(n_kt, -(-min(sink, n_k) // tile_n))
    if window >= n_k:  # dense causal: every tile up to the last row's
        span, lo = n_kt, torch.zeros_like(p0)
    else:  # tiles from the one with the first row's oldest window key to the one with the last row
        span = min(n_kt, (window + (tile_m - 1) * step) // tile_n + 2)
        lo = torch.clamp(p0 - window + 1, min=0) // tile_n
    kt = lo + torch.arange(span, device=device)
    kt = torch.where(kt < sink_tiles, -1, kt)  # those are listed once, among the sink tiles
    kt = torch.cat([torch.arange(sink_tiles, device=device).expand(p0.shape[0], sink_tiles), kt], dim=1)
    valid = (kt >= 0) & (kt < n_kt)
    k0 = kt * tile_n
    k1 = torch.clamp(k0 + tile_n - 1, max=n_k - 1)  # keys past the end are FA4's own bounds mask
    s_lo, s_hi, n_lo, n_hi = _intervals(k0, k1, sink, window)
    full = valid & (p0 >= s_lo) & (p1 <= s_hi)
    partial = valid & (p1 >= n_lo) & (p0 <= n_hi) & ~full
    return (*_packed(partial, kt, n_kt), *_packed(full, kt, n_kt))


@functools.lru_cache(maxsize=64)
def cached_tile_lists(n_rows: int, n_k: int, *, start: int, step: int, sink: int, window: int, device: str):
    """:func:`tile_lists`, kept per shape: every layer of a forward pass at one length shares one set (a new
    length costs a few small device kernels, no host sync)."""
    return tile_lists(n_rows, n_k, start=start, step=step, sink=sink, window=window, device=device)


def _packed(keep: Tensor, kt: Tensor, n_kt: int) -> tuple[Tensor, Tensor]:
    count = keep.sum(-1)
    key = torch.where(keep, kt, n_kt + kt.clamp(min=0))  # kept tiles first, each group ascending
    order = torch.sort(key, dim=-1).values
    index = torch.where(order < n_kt, order, 0)
    return count.to(torch.int32)[None, None], index.to(torch.int32)[None, None].contiguous()


# The masks take the chunk offset and the anchor start/step as runtime scalars (FA4's ``aux_scalars``: part of the
# compiled signature by type, not value), so a new prompt length or chunk compiles nothing; sink and window are a
# model's constants and are compiled in.
@functools.cache
def _sink_window_mask(sink: int, window: int):
    import cutlass
    import cutlass.cute as cute
    from flash_attn.cute import utils

    @cute.jit
    def mask(batch, head, m_idx, n_idx, seqlen_info, aux_tensors, aux_scalars):
        p = m_idx + utils.scalar_to_ssa(aux_scalars[0], cutlass.Int32)  # q's rows are the last of the keys
        causal = n_idx <= p
        local = (p - n_idx) < utils.scalar_to_ssa(window, cutlass.Int32)
        sinks = n_idx < utils.scalar_to_ssa(sink, cutlass.Int32)
        return causal & (local | sinks)

    return mask


@functools.cache
def _strided_causal_mask():
    import cutlass
    import cutlass.cute as cute
    from flash_attn.cute import utils

    @cute.jit
    def mask(batch, head, m_idx, n_idx, seqlen_info, aux_tensors, aux_scalars):
        start = utils.scalar_to_ssa(aux_scalars[0], cutlass.Int32)
        step = utils.scalar_to_ssa(aux_scalars[1], cutlass.Int32)
        return n_idx <= m_idx * step + start

    return mask


def _run(
    q: Tensor, k: Tensor, v: Tensor, mask_mod, scalars: tuple, lists, scale: float, pack_gqa: bool | None
) -> Tensor:
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch
    from flash_attn.cute.interface import _flash_attn_fwd

    pc, pi, fc, fi = lists
    tensors = BlockSparseTensorsTorch(
        mask_block_cnt=pc, mask_block_idx=pi, full_block_cnt=fc, full_block_idx=fi, block_size=TILE
    )
    out = _flash_attn_fwd(
        q,
        k,
        v,
        softmax_scale=scale,
        mask_mod=mask_mod,
        aux_scalars=scalars,
        block_sparse_tensors=tensors,
        tile_mn=TILE,
        pack_gqa=pack_gqa,
    )
    return out[0]


def sparse_base(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    sink: int,
    window: int,
    scale: float | None = None,
    pack_gqa: bool | None = False,
) -> Tensor:
    """Õ: sink + window attention of every row of q over k/v, FA4 layout (B, N, H, D) (GQA: Hq a multiple of
    Hkv). q's rows are the last ``Nq`` positions of the ``Nk`` keys (a chunk continuing a cache). The tile lists
    are kept per shape (:func:`cached_tile_lists`), so every layer at one length shares them."""
    n_q, n_k = q.shape[1], k.shape[1]
    offset = n_k - n_q
    lists = cached_tile_lists(n_q, n_k, start=offset, step=1, sink=sink, window=window, device=str(q.device))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return _run(q, k, v, _sink_window_mask(sink, window), _int32s(offset), lists, scale, pack_gqa)


def anchor_rows(
    q_anchor: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    start: int,
    step: int,
    scale: float | None = None,
    pack_gqa: bool | None = None,
) -> Tensor:
    """D: dense causal attention of anchor queries (row j at absolute position ``start + j·step``) over k/v,
    FA4 layout (B, N, H, D)."""
    n_a, n_k = q_anchor.shape[1], k.shape[1]
    if pack_gqa is None:  # the GQA group's query heads in one tile: the anchors are few rows over many keys
        pack_gqa = q_anchor.shape[2] > k.shape[2]
    lists = cached_tile_lists(n_a, n_k, start=start, step=step, sink=0, window=_INF, device=str(k.device))
    scale = 1 / math.sqrt(q_anchor.shape[-1]) if scale is None else scale
    return _run(q_anchor, k, v, _strided_causal_mask(), _int32s(start, step), lists, scale, pack_gqa)


def plain_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, *, causal: bool = False, window=None) -> Tensor:
    """FA4 without a mask_mod, for comparisons (the probe in scripts/gpu_calls): dense causal, or its native local
    window ``(left, right)``, which has no sink."""
    from flash_attn.cute.interface import _flash_attn_fwd

    left, right = window if window is not None else (None, None)
    return _flash_attn_fwd(q, k, v, softmax_scale=scale, causal=causal, window_size_left=left, window_size_right=right)[
        0
    ]


def _int32s(*values: int) -> tuple:
    import cutlass

    return tuple(cutlass.Int32(x) for x in values)
