"""What a sparse base method is: a planner that, given the queries and keys, returns a pattern.

A :class:`SparsePattern` says which keys each query may see, as a FlexAttention-style ``mask_mod``
over *absolute* positions (the caller always intersects it with causality ``kv_idx <= q_idx``).
``mask_mod`` must be written with element-wise tensor ops and tensor indexing only, so the same
function works under broadcasting (the PyTorch reference) and under ``torch.vmap`` (FlexAttention).

Patterns may also describe themselves to kernels: :meth:`SparsePattern.key_ranges` lists the key
intervals a block of queries can touch (the reference skips everything else), and the built-in
patterns expose their parameters (sink/window, indices) as attributes that GPU kernels read.

To add a method: subclass :class:`SparseMethod` (or wrap a ``mask_mod`` in
:class:`MaskModMethod`) and call :func:`delta_attn.register_sparse_method`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from ..config import DeltaConfig

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


class SparsePattern(abc.ABC):
    """Key set S_i of every query i, before causality.

    Positions are absolute within the sequence: key ``kv_idx`` in ``[0, Nk)``; queries of a call
    sit at ``[q_start, Nk)``. ``b`` indexes the batch and ``h`` the *query* head.
    """

    name: str = "pattern"

    @abc.abstractmethod
    def mask_mod(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        """Boolean tensor: may query ``q_idx`` (head ``h``, batch ``b``) see key ``kv_idx``?"""

    def key_ranges(self, q_lo: int, q_hi: int) -> list[tuple[int, int]]:
        """Half-open key intervals that contain every key any query in ``[q_lo, q_hi)`` may see.

        A superset is always correct (the mask is applied on top); the default is the causal
        prefix ``[(0, q_hi)]``. Intervals are returned sorted and non-overlapping.
        """
        return [(0, q_hi)]


class SparseMethod(abc.ABC):
    """A sparse base: turns (q, k) into a :class:`SparsePattern` for one attention call.

    A method may also describe its cost (:mod:`delta_attn.cost`) by overriding
    :meth:`row_key_counts`; data-dependent methods give the budget they are configured with and set
    ``cost_is_exact = False`` (the count is then an upper bound).
    """

    name: str = "method"
    cost_is_exact: bool = True

    @abc.abstractmethod
    def plan(self, q: Tensor, k: Tensor, config: "DeltaConfig", *, q_start: int, scale: float) -> SparsePattern:
        """Build the pattern for queries at positions ``[q_start, q_start + Nq)``.

        ``q`` is (B, Hq, Nq, D) and ``k`` is (B, Hkv, Nk, D) with ``Nk = q_start + Nq``; ``scale``
        is the softmax scale. Static patterns ignore q and k; data-dependent ones estimate from them.
        """

    def row_key_counts(self, config: "DeltaConfig", positions: np.ndarray) -> np.ndarray | None:
        """Keys a query at each absolute position may see (causality included), int64; None if unknown.

        Exact when ``cost_is_exact``, an upper bound otherwise. The default knows nothing.
        """
        return None


class MaskModPattern(SparsePattern):
    """A pattern given by a user ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (attention-gym style)."""

    def __init__(self, mask_mod: MaskMod, name: str = "mask_mod") -> None:
        self._fn = mask_mod
        self.name = name

    def mask_mod(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return self._fn(b, h, q_idx, kv_idx)


class MaskModMethod(SparseMethod):
    """A static method from a ``mask_mod``; e.g. ``MaskModMethod(lambda b, h, q, kv: (q - kv) % 7 == 0)``."""

    def __init__(self, mask_mod: MaskMod, name: str = "mask_mod") -> None:
        self.pattern = MaskModPattern(mask_mod, name)
        self.name = name

    def plan(self, q: Tensor, k: Tensor, config: "DeltaConfig", *, q_start: int, scale: float) -> SparsePattern:
        return self.pattern


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort, drop empty and merge overlapping/adjacent half-open intervals."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def visible_keys(
    pattern: SparsePattern,
    b: Tensor,
    h: Tensor,
    q_idx: Tensor,
    kv_idx: Tensor,
    *,
    shape: tuple[int, int, int, int],
    method: str | None = None,
    require_keys: bool = True,
) -> Tensor:
    """The pattern's mask intersected with causality, checked: the one place a ``mask_mod`` is called.

    b, h, q_idx, kv_idx: index tensors broadcasting to ``shape`` = (batch, query heads, queries, keys).
    Returns a bool tensor that broadcasts to ``shape``. Raises ``TypeError``/``ValueError`` naming the
    method when ``mask_mod`` returns something else than such a tensor, and (``require_keys``) when a
    query row is left with no visible key (docs/algorithm.md §11): its output would be undefined.
    """
    name = method or getattr(pattern, "name", type(pattern).__name__)
    expected = f"a bool tensor broadcastable to (batch, heads, queries, keys) = {tuple(shape)}"
    m = pattern.mask_mod(b, h, q_idx, kv_idx)
    if not isinstance(m, Tensor):
        got = "None" if m is None else f"{type(m).__name__} {m!r}"[:60]
        raise TypeError(f"sparse method {name!r}: mask_mod returned {got}; expected {expected}")
    if m.dtype != torch.bool:
        raise TypeError(f"sparse method {name!r}: mask_mod returned a {m.dtype} tensor; expected {expected}")
    if m.dim() > 4 or any(size not in (1, want) for size, want in zip(m.shape[::-1], shape[::-1])):
        raise ValueError(f"sparse method {name!r}: mask_mod returned shape {tuple(m.shape)}; expected {expected}")
    if m.device != q_idx.device:
        raise ValueError(
            f"sparse method {name!r}: mask_mod returned a tensor on {m.device}; the queries are on {q_idx.device}"
        )
    allowed = m & (kv_idx <= q_idx)
    if require_keys:
        empty = ~allowed.any(dim=-1)  # (batch?, heads?, queries)
        if bool(empty.any()):
            bi, hi, ri = (int(i) for i in empty.nonzero()[0])
            raise ValueError(
                f"sparse method {name!r} leaves query row {int(q_idx.flatten()[ri])} (batch {bi}, head {hi}) with no "
                "visible key, so its attention output is undefined; every row must see at least one causal key "
                "(e.g. keep the diagonal kv_idx == q_idx in the mask_mod)"
            )
    return allowed


def dense_mask(pattern: SparsePattern, n: int, *, batch: int = 1, heads: int = 1, q_start: int = 0) -> Tensor:
    """The full causal boolean mask (batch, heads, n - q_start, n) of a pattern. For tests and pictures."""
    b = torch.arange(batch).view(-1, 1, 1, 1)
    h = torch.arange(heads).view(1, -1, 1, 1)
    qi = torch.arange(q_start, n).view(1, 1, -1, 1)
    kj = torch.arange(n).view(1, 1, 1, -1)
    m = visible_keys(pattern, b, h, qi, kj, shape=(batch, heads, n - q_start, n), require_keys=False)
    return m.expand(batch, heads, n - q_start, n)


def render_ascii(pattern: SparsePattern, n: int = 32) -> str:
    """A picture of the causal mask of head 0 for ``n`` tokens (``#`` kept, ``.`` dropped)."""
    m = dense_mask(pattern, n)[0, 0]
    return "\n".join("".join("#" if x else "." for x in row.tolist()) for row in m)
