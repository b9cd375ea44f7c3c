"""Every probe of transformers' internals and private names, in one place.

transformers renames forward arguments and moves private attributes between releases (pyproject pins the
tested range). Each such dependency of delta-attn is one function here, so a new release is fixed in this
file: the forward's KV-cache argument, ``logits_to_keep``, the position ids of a left-padded batch,
``config._attn_implementation`` and the AttentionInterface switch, and the serving stack's private
response builders (``delta-attn serve``). Tests import these instead of copying the probes.

Nothing here imports transformers at module level (``delta-attn --help`` stays light); the serving names
are imported on first use (they need the ``[serve]`` extra).
"""

from __future__ import annotations

import inspect
from typing import Any


def forward_parameters(model: Any):
    """The parameters of ``model.forward`` (a class's or an instance's) by name."""
    return inspect.signature(model.forward).parameters


def cache_argument(model: Any) -> str:
    """The name ``model.forward`` takes the KV cache under: ``cache`` from transformers 5.24 on
    (``past_key_values``, the older name, still works there but warns on every call)."""
    return "cache" if "cache" in forward_parameters(model) else "past_key_values"


def last_logits_only(model: Any) -> dict:
    """Forward keyword arguments that keep only the last position's logits (``logits_to_keep=1``), or none
    for a model whose forward lacks the argument (it then returns every position's)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in forward_parameters(model) else {}


def left_padding_position_ids(attention_mask):
    """Position ids of a left-padded batch, as ``model.generate`` computes them: (B, N) long."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


#: buffers of transformers' rotary embeddings that must stay float32 (``from_pretrained(dtype=bf16)`` keeps them so)
ROTARY_BUFFERS = ("inv_freq", "original_inv_freq")


def cast_model(model: Any, device=None, dtype=None) -> Any:
    """``model.to(device=device, dtype=dtype)`` with the rotary inverse frequencies kept in float32.

    ``Module.to(dtype)`` casts every floating buffer, and transformers' rotary embeddings keep ``inv_freq`` as
    a buffer: in bfloat16 it is rounded to 8 bits of mantissa, a relative error of about 2⁻⁹ that grows into
    a phase error of more than 0.1 rad on half of Qwen2's frequencies at 32K tokens. ``from_pretrained`` with
    a half dtype leaves these buffers in float32, and the rotary forward computes in float32; this does the
    same for a model loaded in float32 and cast afterwards.
    """
    import torch

    keep = {}
    if dtype is not None:
        for module in model.modules():
            for name in ROTARY_BUFFERS:
                buf = module._buffers.get(name)
                if buf is not None and buf.dtype == torch.float32:
                    keep[(module, name)] = buf
    model = model.to(device=device, dtype=dtype)
    for (module, name), buf in keep.items():
        module._buffers[name] = buf.to(device=module._buffers[name].device)
    return model


def attn_implementation(model: Any) -> str | None:
    """The attention implementation ``model`` runs (``config._attn_implementation``: "sdpa", "delta", ...)."""
    return model.config._attn_implementation


def routes_attention_through_interface(model: Any) -> bool:
    """Whether ``model`` calls its attention through transformers' ``AttentionInterface`` (so that
    ``set_attn_implementation`` can plug in another function)."""
    return bool(getattr(model, "_supports_attention_backend", False)) and model._can_set_attn_implementation()


# ---------------------------------------------------------------------------------------------
# the serving stack (transformers.cli.serving, the [serve] extra)


def serving_handler_bases() -> tuple[type, type, Any]:
    """transformers' ``ChatCompletionHandler`` and ``CompletionHandler`` classes and the ``Modality`` enum."""
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.utils import Modality

    return ChatCompletionHandler, CompletionHandler, Modality


def serving_worker_thread() -> Any:
    """transformers' serving ``InferenceThread``: the one thread that runs the model, started."""
    from transformers.cli.serving.utils import InferenceThread

    return InferenceThread()


def request_fields(handler: Any) -> frozenset[str]:
    """The request fields a serving handler's schema accepts (its private ``_valid_params_class``)."""
    return frozenset(handler._valid_params_class.__mutable_keys__)


def stream_chunk(handler: Any, request_id: str, *args: Any, **kwargs: Any) -> str:
    """One SSE chunk of a streamed reply, built by the handler's private ``_build_chunk_sse``."""
    return handler._build_chunk_sse(request_id, *args, **kwargs)


def chat_completion(handler: Any, request_id: str, *args: Any) -> Any:
    """A whole chat reply (``ChatCompletion``), built by the chat handler's private ``_build_completion``."""
    return handler._build_completion(request_id, *args)
