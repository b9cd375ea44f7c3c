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

The Δ combination (Δ_j = D_j − Õ_anchor, O = Õ + λΔ on the block's rows) is :mod:`delta_attn.kernels.fa4_prefill`'s;
FA4 has no epilogue hook, so the one thing of it done here is optional: the sparse base can add a given term per
γ-block to its rows before storing them (:class:`BlockAdd`, through a wrapper of FA4's sm_90 epilogue).

The tile lists are computed here from integers (:func:`tile_lists`), on any device, so the CPU tests check them
against an enumerated mask; only the attention calls need the GPU and the package.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import inspect
import math
from dataclasses import dataclass
from typing import NamedTuple

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


# ---- Wrappers of FA4's sm_90 kernel: the native local window, the Δ add in the epilogue ---------------------
# With a mask_mod, FA4 evaluates it element by element on every boundary tile. Its native causal / local masks cost
# a few instructions per tile (BENCHMARKS.md, one Llama-3-8B layer at 128K on an H100: Õ 8.78 ms with the sink +
# window mask_mod, 8.45 ms on the native masks through the wrapper below, 7.34 ms for FA4's plain window). They
# cannot express the sink, and FA4 applies them to the tiles listed as full too, which would mask the sink tiles
# (outside the window). So for the sparse base FA4's block-sparse consumer is wrapped, for our calls only, so that
# tiles listed full run with no mask beyond the key-length bound, and the boundary tiles keep FA4's native masks.
#
# FA4 has no epilogue hook either, and Δ's body rows are Õ + x_b (x_b = λ_bΔ_b of the row's γ-block): added after
# the kernel, that is one more read and write of the whole output (0.78 ms at 128K, ninth session's profile). The
# second wrapper adds x_b to the normalised accumulator just before FA4's epilogue stores it (:class:`BlockAdd`).

#: The FA4 release whose sm_90 internals the wrappers below were written against; with any other the sparse base
#: takes the mask_mod path and the Δ add runs after the kernel (both correct, slower).
WRAPPED_FA4 = "4.0.0b40"


class _BoundaryTile:
    """Passed as FA4's ``mask_mod`` into its block-sparse consumer, which hands it on to the boundary (partial) tiles
    only: the wrapped mask function below tells the two lists apart by it."""


@dataclass(frozen=True)
class BlockAdd:
    """What the sparse base's epilogue adds (:func:`sparse_base` ``add=``): row p of the call (absolute position, the
    last Nq of the Nk keys) gets ``given[b, h, (p − block0) // gamma]`` when ``p < row_end``; rows from ``row_end``
    on are stored as computed.

    given: (B, Hq, n_blocks, D) float32 with the last dim contiguous — λ_jΔ_j of each γ-block the call touches;
    block0: the position where ``given``'s first block starts (a multiple of γ, ≤ the call's first row)."""

    given: Tensor
    block0: int
    gamma: int
    row_end: int


def native_window(sink: int, window: int, device: torch.device | str | None = None) -> bool:
    """Whether Õ can run on FA4's native local window: every sink key must lie in tiles that are either wholly
    visible to a query tile (listed full, run unmasked) or visible through the window anyway. That holds when the
    sink is a multiple of the key tile (no tile straddles its edge) and the sink plus one query tile fits in the
    window (a sink tile is partial only for a query tile that starts inside it, causally; every row of such a tile
    lies within ``sink + TILE[0]`` positions of key 0, so the window keeps the sink for it). FA4 and ``device``
    (when given) as :func:`wrapped_kernel`."""
    return sink % TILE[1] == 0 and sink + TILE[0] <= window and wrapped_kernel(device)


def wrapped_kernel(device: torch.device | str | None = None) -> bool:
    """Whether the wrappers of FA4's sm_90 kernel apply: the installed FA4 is :data:`WRAPPED_FA4` and ``device``
    (when given) is an sm_90 GPU, whose kernel they patch (Blackwell runs FA4's sm_100 kernel, which would still mask
    the sink tiles and has no such epilogue)."""
    if device is not None and (torch.device(device).type != "cuda" or _major(torch.device(device)) != 9):
        return False
    return _hooks() is not None


def _major(device: torch.device) -> int:
    return torch.cuda.get_device_capability(device)[0]


class _Hooks(NamedTuple):
    consume: object  # replaces flash_fwd_sm90.consume_block_sparse_loads
    mma: object  # replaces FlashAttentionForwardSm90.mma: keeps the kernel's aux data for the epilogue
    epilogue: object  # replaces FlashAttentionForwardSm90.epilogue: the block add, then FA4's epilogue
    cache: object  # the compile cache of kernels traced with the wrappers


@functools.cache
def _hooks() -> _Hooks | None:
    """The wrappers of FA4's sm_90 kernel and their private compile cache, or None when FA4 is missing or not
    :data:`WRAPPED_FA4` (or its internals do not have the parameters the wrappers read)."""
    try:
        if importlib.metadata.version("flash-attn-4") != WRAPPED_FA4:
            return None
        from flash_attn.cute import flash_fwd_sm90
        from flash_attn.cute.cache_utils import JITCache
    except (importlib.metadata.PackageNotFoundError, ImportError):
        return None
    kernel_class = flash_fwd_sm90.FlashAttentionForwardSm90
    original = flash_fwd_sm90.consume_block_sparse_loads
    original_mma, original_epilogue = kernel_class.mma, kernel_class.epilogue
    signature = inspect.signature(original)
    mma_signature, epilogue_signature = inspect.signature(original_mma), inspect.signature(original_epilogue)
    if not (
        {"mask_fn", "mask_mod"} <= set(signature.parameters)
        and "aux_data" in mma_signature.parameters
        and {"acc_O", "tiled_mma", "tidx", "m_block", "head_idx", "batch_idx"} <= set(epilogue_signature.parameters)
    ):
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

    def mma(self, *args, **kwargs):  # runs while the kernel is traced: keep its aux data for the epilogue below
        self._delta_attn_aux = mma_signature.bind(self, *args, **kwargs).arguments.get("aux_data")
        return original_mma(self, *args, **kwargs)

    def epilogue(self, *args, **kwargs):
        aux = getattr(self, "_delta_attn_aux", None)
        if aux is not None and aux.tensors is not None:  # a BlockAdd: its tensor and its four scalars come last
            if self.pack_gqa:
                raise NotImplementedError("the Δ add in FA4's epilogue takes unpacked rows (pack_gqa=False)")
            a = epilogue_signature.bind(self, *args, **kwargs).arguments
            add = _block_add(self.tile_m, self.tile_hdimv, self.check_hdim_v_oob)
            q_offset, block0, gamma, row_end = aux.scalars[-4:]
            add(a["acc_O"], a["tiled_mma"], a["tidx"], a["m_block"], a["head_idx"], a["batch_idx"], aux.tensors[-1],
                q_offset, block0, gamma, row_end)  # fmt: skip
        return original_epilogue(self, *args, **kwargs)

    # Kernels traced with the wrappers live in their own cache: FA4's compile key does not know about them, so
    # sharing FA4's cache would hand them to (or take them from) other callers of FA4 in this process.
    return _Hooks(consume, mma, epilogue, JITCache())


@functools.cache
def _block_add(tile_m: int, tile_dv: int, padded: bool):
    """The add of :class:`BlockAdd` on one thread's part of the normalised output tile (FA4's sm_90 accumulator
    layout: the same partition of an identity tensor gives each element's row and column)."""
    import cutlass
    import cutlass.cute as cute
    from quack import layout_utils

    @cute.jit
    def add(acc_O, tiled_mma, tidx, m_block, head_idx, batch_idx, given, q_offset, block0, gamma, row_end):
        acc = layout_utils.reshape_acc_to_mn(acc_O)
        coord = layout_utils.reshape_acc_to_mn(
            tiled_mma.get_slice(tidx).partition_C(cute.make_identity_tensor((tile_m, tile_dv)))
        )
        for r in cutlass.range_constexpr(cute.size(acc.shape[0])):
            p = q_offset + m_block * tile_m + coord[r, 0][0]
            if p < row_end:  # rows past the call's queries are past row_end too: no load outside ``given``
                block = (p - block0) // gamma
                for c in cutlass.range_constexpr(cute.size(acc.shape[1])):
                    col = coord[r, c][1]
                    if cutlass.const_expr(not padded):
                        acc[r, c] = acc[r, c] + given[batch_idx, head_idx, block, col]
                    else:
                        if col < given.shape[3]:  # a padded head dim: FA4 drops those columns on the store
                            acc[r, c] = acc[r, c] + given[batch_idx, head_idx, block, col]

    return add


@contextlib.contextmanager
def _wrapped_kernel():
    from flash_attn.cute import flash_fwd_sm90
    from flash_attn.cute.interface import _flash_attn_fwd

    hooks, kernel_class = _hooks(), flash_fwd_sm90.FlashAttentionForwardSm90
    saved = (
        flash_fwd_sm90.consume_block_sparse_loads,
        kernel_class.__dict__.get("mma"),
        kernel_class.__dict__.get("epilogue"),  # inherited: absent from the class's own dict
        _flash_attn_fwd.compile_cache,
    )
    flash_fwd_sm90.consume_block_sparse_loads, _flash_attn_fwd.compile_cache = hooks.consume, hooks.cache
    kernel_class.mma, kernel_class.epilogue = hooks.mma, hooks.epilogue
    try:
        yield
    finally:
        flash_fwd_sm90.consume_block_sparse_loads, _flash_attn_fwd.compile_cache = saved[0], saved[3]
        for name, value in (("mma", saved[1]), ("epilogue", saved[2])):
            if value is None:
                delattr(kernel_class, name)
            else:
                setattr(kernel_class, name, value)


def _run(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lists,
    scale: float,
    pack_gqa: bool,
    *,
    mask_mod=None,
    scalars: tuple = (),
    window_left: int | None = None,
    add: BlockAdd | None = None,
) -> Tensor:
    """One FA4 forward call with block-sparse ``lists``: the ``mask_mod`` (with ``scalars``) on the boundary tiles,
    or, without one, FA4's native causal + local masks there (``window_left``) and none on the full tiles; ``add``
    in the epilogue. Whatever needs the wrappers runs under them, with their own compile cache."""
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch
    from flash_attn.cute.interface import _flash_attn_fwd

    pc, pi, fc, fi = lists
    tensors = BlockSparseTensorsTorch(
        mask_block_cnt=pc, mask_block_idx=pi, full_block_cnt=fc, full_block_idx=fi, block_size=TILE
    )
    kwargs = dict(softmax_scale=scale, block_sparse_tensors=tensors, tile_mn=TILE, pack_gqa=pack_gqa)
    if add is not None:  # the epilogue reads the tensor and the last four scalars (see _hooks)
        given = add.given.view_as(add.given)  # its own Python object: the attribute below stays on it
        given.__leading_dim__ = 3  # a static unit stride for the column, as FA4's aux tensors allow
        kwargs.update(aux_tensors=[given])
        scalars = (*scalars, *_int32s(k.shape[1] - q.shape[1], add.block0, add.gamma, add.row_end))
    if mask_mod is not None:
        kwargs.update(mask_mod=mask_mod)
    else:  # FA4 masks key k for row p when p - k > window_left (bottom-right aligned, like the offset)
        kwargs.update(window_size_left=window_left, window_size_right=0)
    if scalars:
        kwargs.update(aux_scalars=scalars)
    context = _wrapped_kernel() if mask_mod is None or add is not None else contextlib.nullcontext()
    with context:
        return _flash_attn_fwd(q, k, v, **kwargs)[0]


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
    add: BlockAdd | None = None,
) -> Tensor:
    """Õ: sink + window attention of every row of q over k/v, FA4 layout (B, N, H, D) (GQA: Hq a multiple of
    Hkv). q's rows are the last ``Nq`` positions of the ``Nk`` keys (a chunk continuing a cache). The tile lists
    are kept per shape (:func:`cached_tile_lists`), so every layer at one length shares them.

    ``native`` (default: :func:`native_window`) runs the boundary tiles on FA4's native causal + local masks and
    the full tiles unmasked; False uses the sink + window mask_mod everywhere FA4 masks. ``add``
    (:class:`BlockAdd`; needs :func:`wrapped_kernel` and ``pack_gqa=False``) adds each row's block term in the
    epilogue, so the returned rows are Õ + x (before the one rounding to q's dtype)."""
    n_q, n_k = q.shape[1], k.shape[1]
    offset = n_k - n_q
    lists = cached_tile_lists(n_q, n_k, start=offset, step=1, sink=sink, window=window, device=str(q.device))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    if native is None:
        native = native_window(sink, window, q.device)
    elif native and not native_window(sink, window, q.device):
        raise ValueError(
            f"the native window path needs an sm_90 GPU, flash-attn-4=={WRAPPED_FA4} and a sink that is a "
            f"multiple of {TILE[1]} with sink + {TILE[0]} ≤ window (got sink={sink}, window={window})"
        )
    if add is not None:
        _check_block_add(add, q, n_k, pack_gqa)
    if native:  # FA4 masks key k for row p when p - k > window_left (bottom-right aligned, like the offset)
        return _run(q, k, v, lists, scale, pack_gqa, window_left=min(window, n_k) - 1, add=add)
    mask = _sink_window_mask(sink, window)
    return _run(q, k, v, lists, scale, pack_gqa, mask_mod=mask, scalars=_int32s(offset), add=add)


def _check_block_add(add: BlockAdd, q: Tensor, n_k: int, pack_gqa: bool) -> None:
    """Clear errors for a :class:`BlockAdd` the epilogue cannot take (it reads ``given`` unchecked)."""
    if not wrapped_kernel(q.device):
        raise ValueError(
            f"the Δ add in FA4's epilogue needs an sm_90 GPU and flash-attn-4=={WRAPPED_FA4}; add x after the "
            "kernel instead (delta_attn.kernels.scan.repeat_add)"
        )
    if pack_gqa:
        raise ValueError("the Δ add in FA4's epilogue takes unpacked rows: pass pack_gqa=False")
    b, n_q, hq, d = q.shape
    g = add.given
    if g.dtype != torch.float32 or g.dim() != 4 or g.shape[:2] != (b, hq) or g.shape[3] != d or g.stride(3) != 1:
        raise ValueError(
            f"BlockAdd.given must be float32 (B, Hq, n_blocks, D) = ({b}, {hq}, n, {d}) with the last dim "
            f"contiguous, got {g.dtype} {tuple(g.shape)} strides {g.stride()}"
        )
    q_start, rows_end = n_k - n_q, min(add.row_end, n_k)
    if add.gamma < 1 or (
        rows_end > q_start and (add.block0 > q_start or (rows_end - 1 - add.block0) // add.gamma >= g.shape[2])
    ):
        raise ValueError(
            f"BlockAdd covers positions [{add.block0}, {add.block0 + add.gamma * g.shape[2]}) in blocks of "
            f"{add.gamma}; the rows to add are [{q_start}, {rows_end})"
        )


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
    4.43 ms for FA4's pack_gqa at 128K on an H100 (BENCHMARKS.md, tenth session; same output bit for bit). Not from
    the ``m_idx // group`` in the mask_mod: the group is a compile-time constant and the sm_90 PTX has no division
    (eleventh session). FA4's pack_gqa reads the lists of TILE[0] anchors for each packed tile, so it visits more
    tiles, and is still faster; why is open. Kept as an option; off by default."""
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
