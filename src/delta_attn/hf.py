"""Hugging Face transformers integration: the attention implementation ``"delta"``.

Importing this module (``import delta_attn.hf``, or the first use of ``delta_attn.enable`` and the
other names below) registers :func:`delta_attention_forward` with transformers' ``AttentionInterface``
and :func:`delta_mask` with ``AttentionMaskInterface`` under the name ``"delta"``. Then::

    model = AutoModelForCausalLM.from_pretrained(...)   # or attn_implementation="delta" after this import
    delta_attn.enable(model, DeltaConfig(window=2048, sink=128, gamma=64))
    model.generate(**inputs)            # Δ prefill, dense decode
    delta_attn.disable(model)           # back to the stock attention

What runs where (docs/algorithm.md §3, §6, §8):
  * **prefill** — a forward whose queries are the whole prompt (no cached prefix), or any chunk of
    :func:`chunked_prefill` — runs :func:`delta_attn.delta_attention` with the model's
    :class:`~delta_attn.DeltaConfig` (``mode="dense"`` and the ``dense_layers`` run SDPA directly:
    the same math, faster);
  * **decode** — any forward over a cached prefix — runs dense SDPA over the whole KV cache,
    bottom-right aligned and honouring the attention mask, for every mode (also ``sparse``: the
    paper's protocol keeps the full cache and decodes densely).

Batches may be left-padded: the per-sequence padding is read from the attention mask (which must be
causal + left padding; anything else raises) and every sequence is processed at its own positions.
The config lives in a small :class:`_Binding` object set as an attribute on the model and on each
of its layers that has a ``layer_idx``; no model code is forked and no ``forward`` is rebound.
Sliding-window layers whose window is shorter than the context keep the model's own windowed
attention (they are already sparse; Δ corrects full-attention layers only). :func:`prefill_override`
routes every attention call through another function for a while (the context-parallel prefill of
:mod:`delta_attn.distributed` uses it: each rank forwards its shard of the prompt).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function, sdpa_mask

from .backend import DeltaState
from .compat import (
    attn_implementation,
    routes_attention_through_interface,
)
from .config import DEFAULT_CONFIG, DeltaConfig
from .ops import delta_attention

ATTN_NAME = "delta"
DECODE_ROOM = 1024  # a typical max_cache_len margin for decoding after chunked_prefill (prompt_len + DECODE_ROOM)
_BINDING_ATTR = "_delta_attn"
# kwargs some models pass to attention functions that change the math Δ implements
_UNSUPPORTED_KWARGS = {
    "softcap": "attention-logit soft-capping",
    "s_aux": "learned attention sinks (s_aux)",
    "position_bias": "additive position biases",
}


@dataclass
class PrefillState:
    """A prompt being prefilled by :func:`chunked_prefill`: what the attention function reads per chunk.

    Returned as ``PrefillOutput.state``; pass it back (``state=``) to continue the same prompt, or
    ``copy.deepcopy`` it first to continue one prefix with several different endings.
    """

    prompt_len: int  # key positions of the whole (padded) prompt: places the exact tail
    states: dict = field(default_factory=dict)  # layer_idx -> DeltaState


@dataclass
class _Binding:
    """Shared by a model and its layers: the config, how to go back, the chunk context."""

    config: DeltaConfig
    previous: str  # attention implementation restored by disable()
    chunk: PrefillState | None = None
    prefill_override: Callable | None = None  # set by prefill_override() (context-parallel prefill)


# ---------------------------------------------------------------------------------------------
# masks


def delta_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: Any = 0,
    kv_offset: int = 0,
    mask_function=causal_mask_function,
    attention_mask: Tensor | None = None,
    **kwargs,
) -> Tensor | None:
    """The ``AttentionMaskInterface`` entry for ``"delta"``.

    For a plain causal mask over a cache that ends at the last query (DynamicCache), returns
    ``None`` (no padding) or the 2D boolean key-padding mask (B, kv_length): "bottom-right causal
    with these keys valid" — O(B·K) memory instead of a (B, 1, Q, K) tensor. Everything else
    (sliding windows, packed sequences, static caches, model-specific overlays) gets the full
    SDPA boolean mask (B, 1, Q, K) or ``None``, exactly what ``attn_implementation="sdpa"`` builds.
    """
    q_off = int(q_offset)
    if mask_function is causal_mask_function and kv_offset == 0 and q_off + q_length == kv_length:
        if attention_mask is None:
            return None
        pad = attention_mask[:, :kv_length].to(torch.bool)
        if pad.shape[-1] < kv_length:  # positions beyond the 2D mask are padding, as in prepare_padding_mask
            pad = F.pad(pad, (0, kv_length - pad.shape[-1]), value=False)
        return None if bool(pad.all()) else pad
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        mask_function=mask_function,
        attention_mask=attention_mask,
        **kwargs,
    )


def _bottom_right_causal(nq: int, nk: int, device) -> Tensor:
    """(nq, nk) bool: query row r (absolute position nk - nq + r) sees keys 0..nk - nq + r."""
    return torch.arange(nk, device=device).view(1, -1) <= torch.arange(nk - nq, nk, device=device).view(-1, 1)


class _NotCausal(Exception):
    pass


_memo: list = [None]  # (weakref to the last mask checked, bsz, nq, nk, result): one check per forward, not per layer


def _left_padding(mask: Tensor | None, bsz: int, nq: int, nk: int, *, allow_empty: bool) -> list[int] | None:
    """Per-sequence left padding encoded by ``mask``; raises ``_NotCausal`` if the mask is something else.

    ``mask``: None (causal, no padding), a 2D key-padding mask (B, nk) from :func:`delta_mask`, or a
    4D (B, 1|H, nq, nk) boolean / additive float mask (built by the model or passed by the user).
    """
    if mask is None:
        return None
    memo = _memo[0]
    if memo is not None and memo[0]() is mask and memo[1:4] == (bsz, nq, nk):
        if isinstance(memo[4], str):
            raise _NotCausal(memo[4])
        return memo[4]
    try:
        result = derive_left_padding(mask, nq, nk, allow_empty, bsz)
    except _NotCausal as exc:  # keep the message only: a traceback would pin this layer's tensors
        _memo[0] = (weakref.ref(mask), bsz, nq, nk, str(exc))
        raise
    _memo[0] = (weakref.ref(mask), bsz, nq, nk, result)
    return result


def derive_left_padding(mask: Tensor, nq: int, nk: int, allow_empty: bool, bsz: int) -> list[int] | None:
    if mask.dim() == 2:
        if mask.shape[-1] != nk:
            raise _NotCausal(f"2D attention mask has {mask.shape[-1]} columns for {nk} keys")
        valid = mask.to(torch.bool)
        if bool((valid[:, 1:].int() < valid[:, :-1].int()).any()):
            raise ValueError(
                "delta attention needs left padding: the attention mask has a 0 after a 1 (right padding or holes). "
                "Set tokenizer.padding_side = 'left' before tokenizing the batch."
            )
        pads = (~valid).sum(-1)
    elif mask.dim() == 4:
        if mask.dtype == torch.bool:
            allowed = mask
        else:
            allowed = mask > torch.finfo(mask.dtype).min / 2
            if bool((mask[allowed] != 0).any()):
                raise _NotCausal("the float attention mask carries additive biases")
        allowed = allowed[:, 0] if allowed.shape[1] == 1 or bool((allowed == allowed[:, :1]).all()) else None
        if allowed is None:
            raise _NotCausal("the attention mask differs between heads")
        allowed = allowed.expand(bsz, nq, nk)
        pads = nk - allowed[:, -1].sum(-1)  # the last query sees every real key
        expected = _bottom_right_causal(nq, nk, mask.device).unsqueeze(0) & (
            torch.arange(nk, device=mask.device).view(1, 1, -1) >= pads.view(-1, 1, 1)
        )
        if not torch.equal(allowed, expected):
            raise _NotCausal("the attention mask is not causal + left padding")
    else:
        raise _NotCausal(f"attention mask of shape {tuple(mask.shape)}")
    pads = [int(p) for p in pads.tolist()]
    if not allow_empty and any(p >= nk for p in pads):
        raise ValueError(f"a sequence of the batch is all padding (left padding {pads} for {nk} tokens); drop it")
    return pads if any(pads) else None


# ---------------------------------------------------------------------------------------------
# attention


def dense_sdpa(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float | None) -> Tensor:
    """Dense attention, bottom-right causal, honouring ``mask`` (None, 2D key padding or 4D). (B, Hq, Nq, D)."""
    nq, nk = query.shape[2], key.shape[2]
    gqa = query.shape[1] != key.shape[1]
    causal = False
    if mask is None:
        if nq == nk:
            causal = True  # SDPA's top-left causal equals bottom-right when square
        elif nq > 1:
            mask = _bottom_right_causal(nq, nk, query.device)
    elif mask.dim() == 2:
        mask = mask.to(torch.bool)[:, None, None, :] & _bottom_right_causal(nq, nk, query.device)
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=gqa
    )


def _delta_prefill(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    config: DeltaConfig,
    scale: float | None,
    pads: list[int] | None,
    chunk: PrefillState | None,
    layer_idx: int | None,
) -> Tensor:
    scale = None if scale is None else float(scale)
    if chunk is None:  # one-shot prefill: the whole prompt is this call
        return delta_attention(query, key, value, config, scale=scale, left_pad=pads)
    # one DeltaState per layer; inside it delta_attention keeps each left-padding group's carry, and it
    # skips the sequences that are still all padding in this chunk
    state = chunk.states.setdefault(layer_idx, DeltaState())
    return delta_attention(
        query, key, value, config, scale=scale, prompt_len=chunk.prompt_len, state=state, left_pad=pads
    )


def delta_attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """The ``AttentionInterface`` function ``"delta"``.

    query: (B, Hq, Nq, D); key, value: (B, Hkv, Nk, D) — the whole cache so far (``Hq % Hkv == 0``).
    Returns ``(out, None)`` with ``out`` of shape (B, Nq, Hq, D), the layout transformers expects.
    The config is read from ``module._delta_attn`` (set by :func:`enable`; a model loaded with
    ``attn_implementation="delta"`` but never enabled uses ``DeltaConfig()``).
    """
    for name, what in _UNSUPPORTED_KWARGS.items():
        if kwargs.get(name) is not None:
            raise ValueError(f"delta attention does not support {what} ({name}=...); use the model's stock attention")
    if dropout:
        raise ValueError("delta attention is an inference method and got attention dropout > 0: call model.eval()")
    if is_causal is False or getattr(module, "is_causal", True) is False:
        raise ValueError("delta attention is causal-only; this layer asked for non-causal (bidirectional) attention")
    binding: _Binding | None = getattr(module, _BINDING_ATTR, None)
    config = binding.config if binding is not None else DEFAULT_CONFIG
    chunk = binding.chunk if binding is not None else None
    layer_idx = getattr(module, "layer_idx", None)
    nq, nk = query.shape[2], key.shape[2]

    override = binding.prefill_override if binding is not None else None
    if override is not None:
        if nq != nk or attention_mask is not None:
            raise ValueError(
                "a prefill override (context-parallel prefill) takes forwards without a cache or attention mask"
            )
        return override(module, query, key, value, scaling, **kwargs).transpose(1, 2).contiguous(), None

    if chunk is None and nq < nk:  # decode (or any forward over a cached prefix): dense, every mode
        out = dense_sdpa(query, key, value, attention_mask, scaling)
        return out.transpose(1, 2).contiguous(), None

    try:
        pads = _left_padding(attention_mask, query.shape[0], nq, nk, allow_empty=chunk is not None)
    except _NotCausal as exc:
        if kwargs.get("sliding_window") is not None:
            # a sliding-window layer whose window is shorter than the context: keep the model's own
            # (already sparse) windowed attention, exactly as its stock implementation computes it
            out = dense_sdpa(query, key, value, attention_mask, scaling)
            return out.transpose(1, 2).contiguous(), None
        raise ValueError(
            f"delta prefill needs a causal attention mask with (optional) left padding; got one where {exc}. "
            "Packed sequences, custom 4D masks, bidirectional overlays and static caches are not supported: "
            "use a DynamicCache (the default) and a left-padded 2D attention_mask"
        ) from None
    if config.mode == "dense" or config.is_dense_layer(layer_idx):
        mask = None
        if pads is not None:
            first_real = torch.tensor(pads, device=query.device).view(-1, 1)
            mask = torch.arange(nk, device=query.device).view(1, -1) >= first_real  # (B, nk) key padding
        out = dense_sdpa(query, key, value, mask, scaling)
    else:
        out = _delta_prefill(query, key, value, config, scaling, pads, chunk, layer_idx)
    return out.transpose(1, 2).contiguous(), None


# Registered as one opaque call for torch.compile (delta_attn.compiled): the kernels, the host-side plan and the
# per-shape caches run eagerly inside a compiled decoder layer (outside torch.compile the wrapper changes nothing).
AttentionInterface.register(
    ATTN_NAME, torch.compiler.disable(delta_attention_forward, reason="delta attention runs its own kernels")
)
AttentionMaskInterface.register(ATTN_NAME, delta_mask)


# ---------------------------------------------------------------------------------------------
# enable / disable


def _attention_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if m is not model and hasattr(m, "layer_idx")]


def _check_supported(model: Any) -> None:
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"enable() takes a transformers PreTrainedModel, got {type(model).__name__}")
    name, cfg = type(model).__name__, model.config
    if getattr(cfg, "is_encoder_decoder", False) or getattr(cfg, "add_cross_attention", False):
        raise ValueError(
            f"{name} is an encoder-decoder / cross-attention model; delta attention supports causal "
            "decoder-only language models (queries attend to their own causal prefix)"
        )
    if not routes_attention_through_interface(model):
        raise ValueError(
            f"{name} does not route its attention through transformers' AttentionInterface, so delta "
            "attention cannot be plugged in without forking its code; use a model that does "
            "(Llama, Qwen2/3, Mistral, Gemma, Phi-3, OLMo-2, ...)"
        )
    if getattr(cfg, "sub_configs", None):
        raise ValueError(
            f"{name} is a composite (e.g. multimodal) model with sub-configs {sorted(cfg.sub_configs)}; "
            "delta attention supports text-only causal LMs"
        )
    if getattr(cfg, "is_causal", True) is False:
        raise ValueError(f"{name} runs bidirectional (non-causal) attention; delta attention is causal-only")
    if getattr(cfg, "attn_logit_softcapping", None) is not None:
        raise ValueError(
            f"{name} soft-caps its attention logits (attn_logit_softcapping="
            f"{cfg.attn_logit_softcapping}); delta attention implements plain softmax attention"
        )
    layers = _attention_layers(model)
    if not layers:
        raise ValueError(f"{name}: found no attention layers (modules with a `layer_idx`) to configure")
    if not _causal_layers(model):
        raise ValueError(f"{name} has non-causal attention layers (is_causal=False); delta attention is causal-only")
    if any("cross" in type(m).__name__.lower() or getattr(m, "is_cross_attention", False) for m in layers):
        raise ValueError(f"{name} has cross-attention layers; delta attention supports self-attention only")
    check_tensor_parallel(model)


def tensor_parallel_size(model: Any) -> int:
    """Ranks a model loaded with transformers' tensor parallelism (``tp_plan="auto"``) is sharded over (1: none)."""
    return int(getattr(model, "tp_size", None) or 1)


def check_tensor_parallel(model: Any) -> None:
    """Δ on a tensor-parallel model runs on each rank's local heads (the attention function sees the
    rank's shards of q/k/v: every head count it uses comes from the tensors). That needs a plan that
    splits attention by heads, never by positions, and KV heads that split evenly over the ranks."""
    tp = tensor_parallel_size(model)
    if tp <= 1:
        return
    name, plan = type(model).__name__, dict(getattr(model, "tp_plan", None) or {})
    by_position = sorted(k for k, style in plan.items() if "sequence" in str(style))
    if by_position:
        raise ValueError(
            f"{name} is tensor-parallel with a plan that shards along the sequence ({by_position}); delta attention "
            "places sinks, windows and anchors at absolute positions and needs every position of a chunk on each "
            "rank: load it with the model's own head-sharding plan (tp_plan='auto')"
        )
    kv = getattr(model.config.get_text_config(decoder=True), "num_key_value_heads", None)
    kv_sharded = any("k_proj" in k and str(style).startswith("colwise") for k, style in plan.items())
    if kv is not None and kv_sharded and kv % tp:
        raise ValueError(
            f"{name} has {kv} key/value heads, which do not split evenly over tp_size={tp} ranks; delta attention "
            "runs grouped-query attention on each rank's local heads: use a tp_size that divides the KV head count"
        )


def _causal_layers(model) -> bool:
    return all(getattr(m, "is_causal", True) is not False for m in _attention_layers(model))


def enable(model: PreTrainedModel, config: DeltaConfig | None = None) -> PreTrainedModel:
    """Switch ``model`` to Δ attention with ``config`` (default ``DeltaConfig()``); returns the model.

    Calling it again replaces the config. Prefill uses :func:`delta_attn.delta_attention`, decode is
    dense (see the module docstring). Raises ``ValueError`` naming the reason for models Δ cannot
    serve: no AttentionInterface dispatch, encoder-decoder / cross-attention, non-causal attention,
    logit soft-capping, composite models, ``dense_layers`` beyond the model's depth, or a
    tensor-parallel plan Δ cannot run on (sequence sharding, KV heads not divisible by the ranks).

    Tensor parallelism: a model loaded under ``torchrun`` with ``tp_plan="auto"`` (transformers'
    head-sharding plan) works as is — each rank runs Δ on its local heads, decode stays dense, and
    :func:`chunked_prefill` works the same (every rank gets the same tokens).
    """
    config = DEFAULT_CONFIG if config is None else config
    if not isinstance(config, DeltaConfig):
        raise TypeError(f"config must be a delta_attn.DeltaConfig, got {type(config).__name__}")
    _check_supported(model)
    n_layers = getattr(model.config, "num_hidden_layers", None)
    dl = config.dense_layers
    if n_layers is not None and not isinstance(dl, int) and any(i >= n_layers for i in dl):
        raise ValueError(f"DeltaConfig.dense_layers {list(dl)} names layers beyond the model's {n_layers} layers")
    binding = getattr(model, _BINDING_ATTR, None)
    if binding is None:
        previous = attn_implementation(model)
        binding = _Binding(config=config, previous=previous if previous != ATTN_NAME else "sdpa")
        for m in [model, *_attention_layers(model)]:
            setattr(m, _BINDING_ATTR, binding)
    binding.config = config
    if attn_implementation(model) != ATTN_NAME:  # also if someone switched it back by hand
        model.set_attn_implementation(ATTN_NAME)
        if attn_implementation(model) != ATTN_NAME:
            disable(model)
            raise ValueError(f"transformers refused to switch {type(model).__name__} to attn_implementation='delta'")
    return model


def disable(model: PreTrainedModel) -> PreTrainedModel:
    """Undo :func:`enable`: restore the attention implementation the model had before. Returns the model."""
    binding = getattr(model, _BINDING_ATTR, None)
    if binding is None:
        return model
    for m in [model, *_attention_layers(model)]:
        if getattr(m, _BINDING_ATTR, None) is binding:
            delattr(m, _BINDING_ATTR)
    model.set_attn_implementation(binding.previous)
    return model


@contextmanager
def prefill_override(model: PreTrainedModel, fn: Callable) -> Iterator[None]:
    """Route every attention call of ``model`` through ``fn`` while the context is open.

    ``fn(module, query, key, value, scaling, **kwargs)`` gets what the attention function gets (query
    (B, Hq, N, D), key/value (B, Hkv, N, D), the layer module with its ``layer_idx``) and returns
    (B, Hq, N, D). Used by :func:`delta_attn.distributed.cp_prefill`, whose ranks each forward their
    shard of the prompt (no cache, no attention mask). The model must be switched on with :func:`enable`.
    """
    binding = delta_binding(model)
    if binding is None:
        raise ValueError("prefill_override needs a model switched to delta attention: call delta_attn.enable first")
    if binding.prefill_override is not None:
        raise RuntimeError("a prefill override is already active on this model (nested prefills are not supported)")
    binding.prefill_override = fn
    try:
        yield
    finally:
        binding.prefill_override = None


def delta_binding(model: PreTrainedModel) -> _Binding | None:
    """What :func:`enable` attached to ``model`` (its config and the chunk context the attention function reads),
    or None unless the model is switched to delta attention now."""
    binding = getattr(model, _BINDING_ATTR, None)
    return binding if binding is not None and attn_implementation(model) == ATTN_NAME else None


def current_config(model: PreTrainedModel) -> DeltaConfig | None:
    """The :class:`DeltaConfig` a model runs with, or None if Δ is not enabled on it."""
    binding = getattr(model, _BINDING_ATTR, None)
    return binding.config if binding is not None else None
