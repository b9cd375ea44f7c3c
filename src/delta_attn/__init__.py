"""delta-attn: fast *and* accurate long-context prefill with Δ attention.

Public API::

    from delta_attn import DeltaConfig, delta_attention
    out = delta_attention(q, k, v, DeltaConfig(sparse="streaming", window=2048, sink=128, gamma=64))

See :func:`delta_attention` for shapes and semantics and :class:`DeltaConfig` for every option.

With Hugging Face transformers (importing this package registers ``attn_implementation="delta"``)::

    model = delta_attn.enable(model, DeltaConfig(window=2048, sink=128, gamma=64))  # Δ prefill, dense decode
    out = delta_attn.chunked_prefill(model, input_ids, chunk_size=4096)            # long prompts in chunks
    delta_attn.disable(model)                                                        # stock attention again
"""

from __future__ import annotations

from .combine import DeltaState
from .config import DeltaConfig
from .hf import PrefillOutput, PrefillState, chunked_prefill, disable, enable
from .ops import delta_attention
from .sparse import SparseMethod, SparsePattern, available_sparse_methods, register_sparse_method

__version__ = "0.1.0"

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
