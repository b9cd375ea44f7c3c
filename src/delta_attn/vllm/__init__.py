"""Δ prefill inside vLLM 0.25.1: an attention backend registered as ``AttentionBackendEnum.CUSTOM``.

Install with ``pip install 'delta-attn[vllm]'``; the package's ``vllm.general_plugins`` entry point calls
:func:`register` in every vLLM process, so the backend is selected by name alone::

    vllm serve MODEL --attention-backend CUSTOM --additional-config '{"delta": {"window": 2048, "gamma": 64}}'
    LLM(model=MODEL, attention_backend="CUSTOM", additional_config={"delta": {"sink": 128}})

``additional_config["delta"]`` takes :class:`~delta_attn.DeltaConfig`'s fields and ``min_prompt`` (prompts
shorter than that run stock FlashAttention; default 2 × (sink + window)); :mod:`delta_attn.vllm.settings`
validates them. Decode tokens and short prompts run vLLM's FlashAttention unchanged; the prompt rows of long
prompts run Δ over the paged KV cache (:mod:`delta_attn.vllm.backend`), also in mixed batches and across
vLLM's chunked-prefill steps.

Importing this package does not import vLLM; :func:`register` and :mod:`delta_attn.vllm.backend` do.
"""

from __future__ import annotations

import logging

from .settings import VllmDeltaSettings, parse_settings

#: the class vLLM loads for ``AttentionBackendEnum.CUSTOM``
BACKEND_CLASS_PATH = "delta_attn.vllm.backend.DeltaAttentionBackend"
#: the vLLM version the backend is written against (its internal attention API changes between versions)
SUPPORTED_VLLM = "0.25.1"


def register() -> None:
    """Register the Δ backend as vLLM's ``CUSTOM`` attention backend (the ``vllm.general_plugins`` entry point).

    vLLM calls it in every process it starts (the registry is per process); calling it again is harmless.
    With another vLLM version it registers nothing and logs why (vLLM runs on, and ``CUSTOM`` is refused by
    vLLM as unregistered): a plugin error would stop every vLLM start, also those that never select ``CUSTOM``.
    """
    import vllm
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    version = getattr(vllm, "__version__", "unknown")
    if version.split("+")[0] != SUPPORTED_VLLM:
        logging.getLogger("delta_attn.vllm").warning(
            "delta_attn.vllm is written against vLLM %s (its attention-backend API is internal and changes between "
            "versions), but vLLM %s is installed, so the Δ backend is not registered: pip install 'vllm==%s'",
            SUPPORTED_VLLM,
            version,
            SUPPORTED_VLLM,
        )
        return
    register_backend(AttentionBackendEnum.CUSTOM, BACKEND_CLASS_PATH)


__all__ = ["BACKEND_CLASS_PATH", "SUPPORTED_VLLM", "VllmDeltaSettings", "parse_settings", "register"]
