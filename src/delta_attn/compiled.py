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
size compiles nothing. Two defaults of torch.compile defeat that, and :func:`compile_layers` turns both off for its
layers:

* dynamo's duck sizing gives dimensions of equal size one symbol, so a first call with as many tokens as the model
  has hidden units pins the length to that value: the Llama-3-8B shape warmed up at 4,096 tokens compiled every layer
  again at its first 128K call on an H100 (14–22 s extra; BENCHMARKS.md, eleventh and twelfth sessions);
* inductor indexes a kernel with int32 when the sizes it sees at compile time fit, and guards that they keep fitting,
  so the first length where one activation passes 2³¹ elements (past 149,796 tokens for the 8B shape's MLP) would
  compile again; :class:`SymbolicInt64Inductor` indexes such kernels with int64 instead.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch.fx.experimental import _config as shape_settings
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
    """Compile each decoder layer of ``model`` in place (as ``nn.Module.compile`` does: the modules, their weights and
    their state dict stay the same objects); returns the model. The attention call of a model switched to Δ
    (:func:`delta_attn.enable`) or to :data:`EAGER_SDPA` runs eagerly inside the compiled layers. ``dynamic``,
    ``mode`` and ``backend`` are torch.compile's (the tests pass ``"aot_eager"``: the same graphs and guards without
    code generation), except that ``backend="inductor"`` with dynamic shapes means :class:`SymbolicInt64Inductor`,
    so that no prompt length recompiles; ``"inductor-stock"`` is inductor unchanged. Compiling twice is a no-op for
    layers already compiled."""
    if backend == "inductor-stock":
        backend = "inductor"
    elif backend == "inductor" and dynamic is not False:
        backend, mode = SymbolicInt64Inductor(mode, dynamic), None  # the mode travels inside the backend
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
            # what nn.Module.compile does, with the call wrapped: see _without_duck_sizing
            compiled = torch.compile(layer._call_impl, dynamic=dynamic, mode=mode, backend=backend)
            layer._compiled_call_impl = _without_duck_sizing(compiled) if dynamic is not False else compiled
    return model


def _without_duck_sizing(compiled):
    """``compiled`` called with dynamo's duck sizing off. Duck sizing gives input dimensions of equal size at compile
    time one symbol: a layer first called with as many tokens as the model has hidden units (4,096 tokens for the
    Llama-3-8B shape) ties the sequence length to the hidden size, whose matmul with the weights then pins it to that
    value, and the next length compiles again (seen on an H100: every layer recompiled at 128K after a 4K warm-up,
    "size mismatch at index 1. expected 4096"). The setting is read when dynamo creates a frame's shape environment,
    i.e. while it compiles at a call, so it is switched for the calls of these layers only."""

    @functools.wraps(compiled)
    def call(*args, **kwargs):
        before = shape_settings.use_duck_shape
        shape_settings.use_duck_shape = False
        try:
            return compiled(*args, **kwargs)
        finally:
            shape_settings.use_duck_shape = before

    return call


def graphs_compiled() -> int:
    """How many graphs torch.compile has compiled in this process so far (dynamo's own count, every backend): read
    it before and after a call to see whether the call compiled anything."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None  # what nn.Module.compile sets


def is_compiled(model: PreTrainedModel) -> bool:
    """Whether :func:`compile_layers` compiled ``model``'s decoder layers."""
    try:
        return all(_compiled(layer) for layer in decoder_layers(model))
    except ValueError:
        return False


class _NoOpPass(CustomGraphPass):
    """Changes nothing; its uuid keeps :class:`SymbolicInt64Inductor`'s graphs apart from stock inductor's in
    inductor's FX graph cache, whose entries carry the int32 guards with them."""

    def __call__(self, graph) -> None:
        return None

    def uuid(self) -> str:
        return "delta-attn:symbolic-sizes-index-with-int64:v1"


class SymbolicInt64Inductor(torch._TorchCompileInductorWrapper):
    """torch.compile's inductor backend, except that a generated kernel whose element count or buffer sizes depend on
    a symbolic size (the sequence length under ``dynamic=True``) indexes with int64 instead of guarding that they
    fit int32. Stock inductor picks int32 when the sizes at compile time fit and adds a guard that they keep fitting:
    correct, but the first call past 2³¹ elements in one activation compiles the layer again (for the Llama-3-8B
    shape's MLP, past 149,796 tokens; not yet seen on a GPU, where duck sizing recompiled first). int64 indexing is
    always correct; what it costs the memory-bound elementwise kernels is not measured yet. Kernels of static sizes
    (weights) are unchanged. Pass an instance as ``backend=`` to ``torch.compile``; ``mode`` as for inductor."""

    def __init__(self, mode: str | None = None, dynamic: bool | None = True):
        super().__init__(mode, None, dynamic)
        if self.config.get("post_grad_custom_post_pass") is None:
            self.config["post_grad_custom_post_pass"] = _NoOpPass()

    def __call__(self, model_, inputs_, **kwargs):
        with _int64_for_symbolic_sizes():
            return super().__call__(model_, inputs_, **kwargs)


def _is_symbolic(expr) -> bool:
    return bool(getattr(expr, "free_symbols", None))


@contextlib.contextmanager
def _int64_for_symbolic_sizes():
    """Inductor's int32-or-int64 choice (``SIMDScheduling.can_use_32bit_indexing``, used for generated and template
    kernels alike), answering int64 without a guard when a size is symbolic. Patched for the duration of one
    compilation, which runs on this thread; a torch without that hook compiles unchanged, with a warning."""
    try:
        from torch._inductor.codegen.simd import SIMDScheduling
    except ImportError:  # pragma: no cover - a torch without inductor's SIMD scheduling
        SIMDScheduling = None
    original = getattr(SIMDScheduling, "can_use_32bit_indexing", None)
    if original is None:
        warnings.warn(
            "this torch has no SIMDScheduling.can_use_32bit_indexing: compiled layers may compile again at the first "
            "prompt long enough to pass 2**31 elements in one activation",
            stacklevel=3,
        )
        yield
        return

    def can_use_32bit_indexing(numel, buffers):
        buffers = list(buffers)
        sizes = [numel] + [buf.get_layout().storage_size() for buf in buffers if buf.has_tensor_output()]
        if any(_is_symbolic(size) for size in sizes):
            return False
        return original(numel, buffers)

    stored = SIMDScheduling.__dict__["can_use_32bit_indexing"]
    SIMDScheduling.can_use_32bit_indexing = staticmethod(can_use_32bit_indexing)
    try:
        yield
    finally:
        SIMDScheduling.can_use_32bit_indexing = stored
