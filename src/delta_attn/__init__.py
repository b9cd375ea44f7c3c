"""delta-attn: fast *and* accurate long-context prefill with Δ attention.

The operator needs only torch and numpy::

    from delta_attn import DeltaConfig, delta_attention
    out = delta_attention(q, k, v, DeltaConfig(sparse="streaming", window=2048, sink=128, gamma=64))

See :func:`delta_attention` for shapes and semantics, :class:`DeltaConfig` for every option and
docs/algorithm.md for the method itself.

With Hugging Face transformers (``pip install 'delta-attn[hf]'``)::

    model = delta_attn.enable(model, DeltaConfig(window=2048, sink=128, gamma=64))  # Δ prefill, dense decode
    out = delta_attn.chunked_prefill(model, input_ids, chunk_size=4096)            # long prompts in chunks
    delta_attn.disable(model)                                                        # stock attention again

``enable``, ``disable``, ``chunked_prefill``, ``PrefillOutput`` and ``PrefillState`` live in
:mod:`delta_attn.hf` and are imported on first use, so ``import delta_attn`` does not import
transformers. Importing :mod:`delta_attn.hf` registers the attention implementation ``"delta"`` with
transformers; to load a model with ``attn_implementation="delta"`` in ``from_pretrained``, run
``import delta_attn.hf`` first (``delta_attn.enable`` does it for you).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backend import DeltaState
from .config import DeltaConfig
from .ops import delta_attention
from .sparse import SparseMethod, SparsePattern, available_sparse_methods, register_sparse_method

if TYPE_CHECKING:  # pragma: no cover
    from .hf import PrefillOutput, PrefillState, chunked_prefill, disable, enable

__version__ = "0.1.0"

_HF_NAMES = ("PrefillOutput", "PrefillState", "chunked_prefill", "disable", "enable")


def __getattr__(name: str):
    """The Hugging Face names, imported from :mod:`delta_attn.hf` (and "delta" registered) on first use."""
    if name in _HF_NAMES:
        from . import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'delta_attn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HF_NAMES))


__all__ = [
    "DeltaConfig",
    "DeltaState",
    "SparseMethod",
    "SparsePattern",
    "PrefillOutput",
    "PrefillState",
    "available_sparse_methods",
    "chunked_prefill",
    "disable",
    "enable",
    "delta_attention",
    "register_sparse_method",
    "__version__",
]
