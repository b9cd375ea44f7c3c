"""Sparse base methods, one file each, selectable by name.

Built in: ``streaming`` (sink + sliding window), ``vertical_slash`` (MInference), ``topk`` (block
top-k + sink + window), ``block`` (Star Attention anchor + own block), ``dense``.

Add your own::

    from delta_attn import register_sparse_method
    from delta_attn.sparse import MaskModMethod

    register_sparse_method("strided", MaskModMethod(lambda b, h, q, kv: (q - kv) % 8 == 0, "strided"))
    DeltaConfig(sparse="strided")            # or pass the method object directly: sparse=MaskModMethod(...)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from .base import MaskModMethod, MaskModPattern, SparseMethod, SparsePattern, dense_mask, render_ascii, visible_keys
from .block import AnchorBlockPattern, BlockMethod, generate_anchor_block
from .dense import DenseMethod, DensePattern
from .streaming import SinkWindowPattern, StreamingMethod, generate_sink_window
from .topk import BlockTopKMethod, BlockTopKPattern, estimate_block_topk
from .vertical_slash import VerticalSlashMethod, VerticalSlashPattern, estimate_vertical_slash

if TYPE_CHECKING:  # pragma: no cover
    from ..config import DeltaConfig

_REGISTRY: dict[str, SparseMethod] = {}


def register_sparse_method(name: str, method: SparseMethod, *, overwrite: bool = False) -> None:
    """Make ``method`` selectable as ``DeltaConfig(sparse=name)``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"sparse method name must be a non-empty string, got {name!r}")
    if not hasattr(method, "plan"):
        raise TypeError(f"{method!r} has no `plan(q, k, config, *, q_start, scale)` method; subclass SparseMethod")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"sparse method {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = method


def available_sparse_methods() -> list[str]:
    """Names accepted by ``DeltaConfig(sparse=...)``."""
    return sorted(_REGISTRY)


def resolve_sparse_method(sparse) -> SparseMethod:
    """The method object for a registered name, or ``sparse`` itself if it already is one."""
    if isinstance(sparse, str):
        try:
            return _REGISTRY[sparse]
        except KeyError:
            raise ValueError(
                f"unknown sparse method {sparse!r}; choose one of {available_sparse_methods()} "
                "or register your own with delta_attn.register_sparse_method(name, method)"
            ) from None
    return sparse


def _what(value) -> str:
    return "None" if value is None else f"a {type(value).__name__}"


def plan_pattern(config: "DeltaConfig", q: Tensor, k: Tensor, *, q_start: int, scale: float) -> SparsePattern:
    """The pattern ``config.sparse`` plans for queries at ``[q_start, Nk)``, checked.

    Raises ``TypeError`` naming the method when its ``plan`` returns something that is not a
    :class:`SparsePattern` (an object with ``mask_mod`` and ``key_ranges``).
    """
    pattern = resolve_sparse_method(config.sparse).plan(q, k, config, q_start=q_start, scale=scale)
    if not all(callable(getattr(pattern, attr, None)) for attr in ("mask_mod", "key_ranges")):
        raise TypeError(
            f"sparse method {config.method_name!r}: plan() returned {_what(pattern)}; expected "
            "a delta_attn.sparse.SparsePattern (mask_mod(b, h, q_idx, kv_idx) -> bool tensor, key_ranges(q_lo, q_hi))"
        )
    return pattern


for builtin in (StreamingMethod(), VerticalSlashMethod(), BlockTopKMethod(), BlockMethod(), DenseMethod()):
    register_sparse_method(builtin.name, builtin)
del builtin

__all__ = [
    "AnchorBlockPattern",
    "BlockMethod",
    "BlockTopKMethod",
    "BlockTopKPattern",
    "DenseMethod",
    "DensePattern",
    "MaskModMethod",
    "MaskModPattern",
    "SinkWindowPattern",
    "SparseMethod",
    "SparsePattern",
    "StreamingMethod",
    "VerticalSlashMethod",
    "VerticalSlashPattern",
    "available_sparse_methods",
    "dense_mask",
    "estimate_block_topk",
    "estimate_vertical_slash",
    "generate_anchor_block",
    "generate_sink_window",
    "plan_pattern",
    "register_sparse_method",
    "render_ascii",
    "resolve_sparse_method",
    "visible_keys",
]
