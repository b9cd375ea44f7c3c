"""The sparse base and the anchor rows on FlashAttention 4's CuTe-DSL kernels (Hopper and newer), as an
alternative to this package's Triton kernels.

FlashAttention 4 (``pip install flash-attn-4``: CuTe DSL, compiled at first use, no build step) runs a
warp-specialised, TMA-fed forward kernel on sm_90 — the producer/consumer split and ping-pong scheduling that
Triton 3.6 does not give there (BENCHMARKS.md: the Triton kernels stop at ~0.8 of cuDNN's rate per FLOP at
128K). It takes a FlexAttention-style ``mask_mod`` plus block-sparse tile lists, which is exactly what the two
passes of Δ attention need:

* the **sparse base** Õ over every query row: sink + sliding window (docs/algorithm.md §2, ``streaming``), the
  tiles that lie wholly inside that set listed as *full* (no mask evaluated) and the few boundary tiles as
  *partial*. When the sink is a whole number of key tiles (the usual 128 is one) the boundary tiles run on FA4's
  native causal + local masks (:func:`native_window`); otherwise on the ``mask_mod``
  ``k < sink or q − k < window`` (and k ≤ q), which costs about twice an unmasked tile per boundary tile;
* the **anchor rows** D: dense causal attention of the γ-strided anchor queries (row j at position
  ``start + j·step``) over every earlier key, as ``mask_mod`` ``k ≤ start + j·step``, with a GQA group's query
  heads packed into one tile by FA4 (:func:`anchor_rows`).

The Δ combination itself (Δ_j = D_j − Õ_anchor, O = Õ + λΔ on the block's rows) is not FA4's: see
:mod:`delta_attn.kernels.fa4_prefill`.

The tile lists are computed here from integers (:func:`tile_lists`), on any device, so the CPU tests check them
against an enumerated mask; only the attention calls need the GPU and the package.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import inspect
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
    group: int = 1,
    tile: tuple[int, int] = TILE,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Block-sparse tile lists for FA4: per query tile, the key tiles to visit with the mask (partial) and without
    it (full), ascending, valid entries packed left.

    Query row j sits at absolute position ``start + (j // group)·step`` (j < n_rows; ``group`` > 1 when the rows
    are a GQA group's query heads interleaved, see :func:`anchor_rows`); n_k keys; ``tile`` = (rows, keys) per
    tile. sink/window: the pattern (window ≥ n_k → dense causal). Returns (partial_count, partial_index,
    full_count, full_index), int32, shapes (1, 1, n_tiles) and (1, 1, n_tiles, width).

    The sets of §2 are intervals in p (:func:`_intervals`), so a query tile is classified by its first and last
    row. Only the key tiles a query tile can touch are classified — the sink's, then those from its first row's
    oldest window key to its last row — so the work is n_tiles × (sink + window + tile rows·step)/tile_n, not
    n_tiles × n_k/tile_n, and every shape is known on the host (no device→host sync).
    """
    if window < 1:
        raise ValueError(f"window must be ≥ 1, got {window}")
    if group < 1:
        raise ValueError(f"group must be ≥ 1, got {group}")
    tile_m, tile_n = tile
    n_kt = -(-n_k // tile_n)
    row0 = torch.arange(0, n_rows, tile_m, device=device, dtype=torch.int64)
    first = start + row0 // group * step
    last = start + torch.clamp(row0 + tile_m - 1, max=n_rows - 1) // group * step
    p0, p1 = first[:, None], last[:, None]
    sink_tiles = min(n_kt, -(-min(sink, n_k) // tile_n))
    if window >= n_k:  # dense causal: every tile up to the last row's
        span, lo = n_kt, torch.zeros_like(p0)
    else:  # tiles from the one with the first row's oldest window key to the one with the last row
        span = min(n_kt, (window + ((tile_m - 1) // group + 1) * step) // tile_n + 2)
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
def cached_tile_lists(
    n_rows: int, n_k: int, *, start: int, step: int, sink: int, window: int, device: str, group: int = 1
):
    """:func:`tile_lists`, kept per shape: every layer of a forward pass at one length shares one set (a new
    length costs a few small device kernels, no host sync)."""
    return tile_lists(n_rows, n_k, start=start, step=step, sink=sink, window=window, group=group, device=device)


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
def _strided_causal_mask(group: int = 1):
    import cutlass
    import cutlass.cute as cute
    from flash_attn.cute import utils

    @cute.jit
    def mask(batch, head, m_idx, n_idx, seqlen_info, aux_tensors, aux_scalars):
        start = utils.scalar_to_ssa(aux_scalars[0], cutlass.Int32)
        step = utils.scalar_to_ssa(aux_scalars[1], cutlass.Int32)
        anchor = m_idx
        if cutlass.const_expr(group > 1):  # rows are (anchor, head of the group) pairs, see anchor_rows
            anchor = m_idx // utils.scalar_to_ssa(group, cutlass.Int32)
        return n_idx <= anchor * step + start

    return mask


# ---- The sparse base on FA4's native local window -------------------------------------------------------------
# With a mask_mod, FA4 evaluates it element by element on every boundary tile. Its native causal / local masks cost
# a few instructions per tile (BENCHMARKS.md, one Llama-3-8B layer at 128K on an H100: Õ 8.78 ms with the sink +
# window mask_mod, 8.45 ms on the native masks through the wrapper below, 7.34 ms for FA4's plain window). They
# cannot express the sink, and FA4 applies them to the tiles listed as full too, which would mask the sink tiles
# (outside the window). So for the sparse base FA4's block-sparse consumer is wrapped, for our calls only, so that
# tiles listed full run with no mask beyond the key-length bound, and the boundary tiles keep FA4's native masks.

#: The FA4 release whose sm_90 block-sparse consumer ``_full_tiles_unmasked`` wraps; any other falls back to the
#: mask_mod path (correct, slower).
NATIVE_WINDOW_FA4 = "4.0.0b40"


class _BoundaryTile:
    """Passed as FA4's ``mask_mod`` into its block-sparse consumer, which hands it on to the boundary (partial) tiles
    only: the wrapped mask function below tells the two lists apart by it."""


def native_window(sink: int, window: int, device: torch.device | str | None = None) -> bool:
    """Whether Õ can run on FA4's native local window: every sink key must lie in tiles that are either wholly
    visible to a query tile (listed full, run unmasked) or visible through the window anyway. That holds when the
    sink is a multiple of the key tile (no tile straddles its edge) and the sink plus one query tile fits in the
    window (a sink tile is partial only for a query tile that starts inside it, causally; every row of such a tile
    lies within ``sink + TILE[0]`` positions of key 0, so the window keeps the sink for it). The installed FA4
    must be the release the consumer wrapper was written against, and ``device`` (when given) sm_90, whose kernel
    the wrapper patches (Blackwell runs FA4's sm_100 kernel, which would still mask the sink tiles: there the
    mask_mod path runs)."""
    if device is not None and (torch.device(device).type != "cuda" or _major(torch.device(device)) != 9):
        return False
    return sink % TILE[1] == 0 and sink + TILE[0] <= window and _consumer_hook() is not None


def _major(device: torch.device) -> int:
    return torch.cuda.get_device_capability(device)[0]


@functools.cache
def _consumer_hook():
    """(wrapped consumer, private compile cache), or None when FA4 is missing or not :data:`NATIVE_WINDOW_FA4`."""
    try:
        if importlib.metadata.version("flash-attn-4") != NATIVE_WINDOW_FA4:
            return None
        from flash_attn.cute import flash_fwd_sm90
        from flash_attn.cute.cache_utils import JITCache
    except (importlib.metadata.PackageNotFoundError, ImportError):
        return None
    original = flash_fwd_sm90.consume_block_sparse_loads
    signature = inspect.signature(original)
    if not {"mask_fn", "mask_mod"} <= set(signature.parameters):
        return None

    def consume(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        if bound.arguments["mask_mod"] is not None:  # a real mask_mod: FA4's own behaviour
            return original(*args, **kwargs)
        mask_fn = bound.arguments["mask_fn"]

        def tile_mask(*a, mask_mod=None, **kw):
            if mask_mod is _BoundaryTile:  # a boundary tile: FA4's causal / local masks
                return mask_fn(*a, **kw)
            return mask_fn(*a, mask_causal=False, mask_local=False, **kw)  # listed full: the key-length bound only

        bound.arguments["mask_fn"] = tile_mask
        bound.arguments["mask_mod"] = _BoundaryTile
        return original(*bound.args, **bound.kwargs)

    # Kernels traced with the wrapper live in their own cache: FA4's compile key does not know about the wrapper,
    # so sharing FA4's cache would hand them to (or take them from) other callers of FA4 in this process.
    return consume, JITCache()


@contextlib.contextmanager
def _full_tiles_unmasked():
    from flash_attn.cute import flash_fwd_sm90
    from flash_attn.cute.interface import _flash_attn_fwd

    consume, cache = _consumer_hook()
    saved = flash_fwd_sm90.consume_block_sparse_loads, _flash_attn_fwd.compile_cache
    flash_fwd_sm90.consume_block_sparse_loads, _flash_attn_fwd.compile_cache = consume, cache
    try:
        yield
    finally:
        flash_fwd_sm90.consume_block_sparse_loads, _flash_attn_fwd.compile_cache = saved


def _run(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lists,
    scale: float,
    pack_gqa: bool,
    *,
    mask_mod=None,
    scalars: tuple | None = None,
    window_left: int | None = None,
) -> Tensor:
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch
    from flash_attn.cute.interface import _flash_attn_fwd

    pc, pi, fc, fi = lists
    tensors = BlockSparseTensorsTorch(
        mask_block_cnt=pc, mask_block_idx=pi, full_block_cnt=fc, full_block_idx=fi, block_size=TILE
    )
    kwargs = dict(softmax_scale=scale, block_sparse_tensors=tensors, tile_mn=TILE, pack_gqa=pack_gqa)
    if mask_mod is not None:
        return _flash_attn_fwd(q, k, v, mask_mod=mask_mod, aux_scalars=scalars, **kwargs)[0]
    with _full_tiles_unmasked():  # native causal + local masks on the boundary tiles, none on the full ones
        return _flash_attn_fwd(q, k, v, window_size_left=window_left, window_size_right=0, **kwargs)[0]


def sparse_base(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    sink: int,
    window: int,
    scale: float | None = None,
    pack_gqa: bool = False,
    native: bool | None = None,
) -> Tensor:
    """Õ: sink + window attention of every row of q over k/v, FA4 layout (B, N, H, D) (GQA: Hq a multiple of
    Hkv). q's rows are the last ``Nq`` positions of the ``Nk`` keys (a chunk continuing a cache). The tile lists
    are kept per shape (:func:`cached_tile_lists`), so every layer at one length shares them.

    ``native`` (default: :func:`native_window`) runs the boundary tiles on FA4's native causal + local masks and
    the full tiles unmasked; False uses the sink + window mask_mod everywhere FA4 masks."""
    n_q, n_k = q.shape[1], k.shape[1]
    offset = n_k - n_q
    lists = cached_tile_lists(n_q, n_k, start=offset, step=1, sink=sink, window=window, device=str(q.device))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    if native is None:
        native = native_window(sink, window, q.device)
    elif native and not native_window(sink, window, q.device):
        raise ValueError(
            f"the native window path needs an sm_90 GPU, flash-attn-4=={NATIVE_WINDOW_FA4} and a sink that is a "
            f"multiple of {TILE[1]} with sink + {TILE[0]} ≤ window (got sink={sink}, window={window})"
        )
    if native:  # FA4 masks key k for row p when p - k > window_left (bottom-right aligned, like the offset)
        return _run(q, k, v, lists, scale, pack_gqa, window_left=min(window, n_k) - 1)
    return _run(q, k, v, lists, scale, pack_gqa, mask_mod=_sink_window_mask(sink, window), scalars=_int32s(offset))


def anchor_rows(
    q_anchor: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    start: int,
    step: int,
    scale: float | None = None,
    pack_gqa: bool | None = None,
    pack_rows: bool = False,
) -> Tensor:
    """D: dense causal attention of anchor queries (row j at absolute position ``start + j·step``) over k/v,
    FA4 layout (B, N, H, D); returns (B, n_anchor, Hq, D).

    ``pack_gqa`` (default: Hq > Hkv) is FA4's: a GQA group's query heads share one tile, so K/V tiles are read
    once per group. FA4 indexes the block-sparse lists per TILE[0] *unpacked* rows, so each packed tile (TILE[0]/g
    anchors) walks the boundary tiles and keys of TILE[0] anchors.

    ``pack_rows`` packs the group here instead, as rows (anchor, head) of one KV head, with lists per TILE[0]/g
    anchors: a quarter of the boundary tiles on the Llama-3-8B shape, yet it measured slower — 5.74 ms against
    4.43 ms for FA4's pack_gqa at 128K on an H100 (BENCHMARKS.md, tenth session; same output bit for bit), most
    likely from the integer division in the mask_mod, which FA4's pack_gqa does once per row with a fast divmod.
    Kept as an option for that next step; off by default."""
    b, n_a, hq, d = q_anchor.shape
    n_k, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    if pack_gqa is None:
        pack_gqa = group > 1
    scale = 1 / math.sqrt(d) if scale is None else scale
    if not pack_rows or group == 1:
        lists = cached_tile_lists(n_a, n_k, start=start, step=step, sink=0, window=_INF, device=str(k.device))
        return _run(
            q_anchor, k, v, lists, scale, pack_gqa, mask_mod=_strided_causal_mask(), scalars=_int32s(start, step)
        )
    # (B, n_a, Hkv·g, D) -> (B, n_a·g, Hkv, D): row a·g + j of KV head h is anchor a of query head h·g + j
    packed = q_anchor.view(b, n_a, hkv, group, d).transpose(2, 3).reshape(b, n_a * group, hkv, d)
    lists = cached_tile_lists(
        n_a * group, n_k, start=start, step=step, sink=0, window=_INF, device=str(k.device), group=group
    )
    out = _run(packed, k, v, lists, scale, False, mask_mod=_strided_causal_mask(group), scalars=_int32s(start, step))
    return out.view(b, n_a, group, hkv, d).transpose(2, 3).reshape(b, n_a, hq, d)


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
