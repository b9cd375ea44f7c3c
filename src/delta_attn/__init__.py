"""delta-attn: fast *and* accurate long-context prefill with Δ attention.

The operator needs only torch and numpy::

    from delta_attn import DeltaConfig, delta_attention
    out = delta_attention(q, k, v, DeltaConfig(sparse="streaming", window=2048, sink=128, gamma=64))

See :func:`delta_attention` for shapes and semantics, :class:`DeltaConfig` for every option and
docs/algorithm.md for the method itself.

With Hugging Face transformers (``pip install 'delta-attn[hf]'``)::

    model = delta_attn.enable(model, DeltaConfig(window=2048, sink=128, gamma=64))  # Δ prefill, dense decode
    out = delta_attn.chunked_prefill(model, input_ids, chunk_size=4096)            # long prompts in chunks
    reply = out.generate(max_new_tokens=64)        # decodes from out's cache (never prefills the prompt again)
    delta_attn.disable(model)                                                        # stock attention again

Every public name except :class:`DeltaConfig` is imported from its submodule on first use, so
``import delta_attn`` imports neither torch nor transformers (``delta_attention`` then needs torch and
numpy only; ``enable``, ``disable``, ``chunked_prefill``, ``PrefillOutput`` and ``PrefillState`` live in
:mod:`delta_attn.hf`). Importing :mod:`delta_attn.hf` registers the attention implementation ``"delta"`` with
transformers; to load a model with ``attn_implementation="delta"`` in ``from_pretrained``, run
``import delta_attn.hf`` first (``delta_attn.enable`` does it for you).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .config import DeltaConfig  # plain dataclass: importing it loads nothing heavy

if TYPE_CHECKING:  # pragma: no cover
    from .backend import DeltaState
    from .chunked import PrefillOutput, chunked_prefill
    from .compiled import compile_layers
    from .hf import PrefillState, disable, enable
    from .ops import delta_attention
    from .sparse import SparseMethod, SparsePattern, available_sparse_methods, register_sparse_method

__version__ = "0.1.0"

# name -> submodule that defines it. Everything but DeltaConfig is imported on first use, so
# `import delta_attn` (and `delta-attn --help`) costs no torch / transformers import.
_LAZY = {
    "DeltaState": "backend",
    "delta_attention": "ops",
    "SparseMethod": "sparse",
    "SparsePattern": "sparse",
    "available_sparse_methods": "sparse",
    "register_sparse_method": "sparse",
    "PrefillOutput": "chunked",
    "PrefillState": "hf",
    "chunked_prefill": "chunked",
    "compile_layers": "compiled",
    "disable": "hf",
    "enable": "hf",
}


def __getattr__(name: str):
    """The public names, imported from their submodule on first use (``hf`` also registers "delta")."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'delta_attn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [  # a literal list (linters read it); equal to DeltaConfig + _LAZY (tests/test_package.py)
    "DeltaConfig",
    "DeltaState",
    "PrefillOutput",
    "PrefillState",
    "SparseMethod",
    "SparsePattern",
    "available_sparse_methods",
    "chunked_prefill",
    "compile_layers",
    "delta_attention",
    "disable",
    "enable",
    "register_sparse_method",
    "__version__",
]
