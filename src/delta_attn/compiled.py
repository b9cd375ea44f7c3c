"""torch.compile for a model's decoder layers, with the attention call left as it is: :func:`compile_layers`.

Prefill of a long prompt spends what attention does not on the model's own code: the projections and the MLP
(matmuls), and a trail of elementwise kernels eager PyTorch runs one by one — RMSNorm in float32, RoPE, SiLU · up,
the residual adds, layout copies. On the Llama-3-8B shape at 128K that trail is 1.3 s of a 3.7 s non-attention
forward on an H100 (BENCHMARKS.md, eighth session), the same in the dense and the Δ column, so it caps Δ's end-to-end
speed-up. Compiling each decoder layer fuses it; the attention call stays one opaque, eager call
(:func:`delta_attn.hf.delta_attention_forward` is registered with ``torch.compiler.disable``, and so is the in-place
cache's update), so Δ's kernels, its host-side plan and its per-shape caches run exactly as without compilation.
Dense SDPA gets the same treatment through :data:`EAGER_SDPA` (``bench e2e --compile`` uses both), so the two
columns differ in attention only.

``dynamic=True`` (the default) compiles each layer with a symbolic sequence length, so a new prompt length or chunk
size should compile nothing; the CPU tests check that across a few hundred tokens. On an H100 the Llama-3-8B shape
warmed up at 4K still compiled again at its first 128K call (17–19 s; BENCHMARKS.md, eleventh session; the failing
guard is not known yet): warm a compiled model up at its longest expected length.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward

#: transformers' SDPA attention function under another name, excluded from torch.compile: a compiled layer then
#: calls SDPA eagerly, so the backend picked at run time (``torch.nn.attention.sdpa_kernel``) is the one that runs,
#: as in the uncompiled model.
EAGER_SDPA = "sdpa_eager_in_compiled"

AttentionInterface.register(
    EAGER_SDPA, torch.compiler.disable(sdpa_attention_forward, reason="SDPA runs eagerly in compiled layers")
)


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The model's stack of decoder layers (``model.model.layers`` for the causal LMs transformers ships)."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        raise ValueError(
            f"{type(model).__name__} has no decoder-layer stack at model.model.layers to compile; compile the model "
            "yourself, leaving the attention call out (torch.compiler.disable)"
        )
    return layers


def compile_layers(
    model: PreTrainedModel, *, dynamic: bool | None = True, mode: str | None = None, backend: str = "inductor"
):
    """Compile each decoder layer of ``model`` in place (``nn.Module.compile``: the modules, their weights and their
    state dict stay the same objects); returns the model. The attention call of a model switched to Δ
    (:func:`delta_attn.enable`) or to :data:`EAGER_SDPA` runs eagerly inside the compiled layers. ``dynamic``,
    ``mode`` and ``backend`` are torch.compile's (the tests pass ``"aot_eager"``: the same graphs and guards without
    code generation). Compiling twice is a no-op for layers already compiled."""
    layers = decoder_layers(model)
    # Each layer compiles its own entry: its layer_idx is a constant of the traced code, and the KV cache's update
    # indexes the cache's per-layer state with it. With the default limit of 8 entries per code object, the layers
    # past the eighth silently ran eager (Llama-3-8B shape on an H100, BENCHMARKS.md, eleventh session); room for every
    # layer under each attention function and cache type a process uses (the graphs are identical, so inductor's
    # graph cache compiles each once).
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 4 * len(layers))
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 8 * len(layers))
    for layer in layers:
        if not _compiled(layer):
            layer.compile(dynamic=dynamic, mode=mode, backend=backend)
    return model


def _compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None  # what nn.Module.compile sets


def is_compiled(model: PreTrainedModel) -> bool:
    """Whether :func:`compile_layers` compiled ``model``'s decoder layers."""
    try:
        return all(_compiled(layer) for layer in decoder_layers(model))
    except ValueError:
        return False
