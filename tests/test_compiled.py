"""delta_attn.compiled: decoder layers under torch.compile with the attention call left eager. The compiled model gives
the eager model's outputs (Δ one-shot and chunked into the in-place cache, greedy decoding after it, dense through
EAGER_SDPA), and a new prompt length or chunk size compiles nothing. The tests compile with the "aot_eager" backend:
the same graphs, graph breaks and guards as inductor, without generating code (inductor's kernels are PyTorch's
business, not this package's)."""

from __future__ import annotations

import pytest
import torch

import delta_attn
from delta_attn import DeltaConfig
from delta_attn.compiled import EAGER_SDPA, compile_layers, decoder_layers, graphs_compiled, is_compiled
from tiny_models import rand_ids, tiny_llama


@pytest.mark.slow  # compiles the 9 layers of a tiny model for five call shapes: ~60 s
def test_compiled_layers_give_the_eager_outputs_and_compile_once(seed):
    torch._dynamo.reset()
    # more layers than dynamo's default 8 entries per code object, and an error (not a silent eager fallback) if a
    # layer runs out of them: compile_layers must make room for every layer. (config.patch, not monkeypatch, whose
    # undo deletes a dynamo config entry)
    limits = dict(fail_on_recompile_limit_hit=True, recompile_limit=8, accumulated_recompile_limit=256)
    with torch._dynamo.config.patch(**limits):
        _compile_and_compare(seed)


def _compile_and_compare(seed):
    model = tiny_llama(seed, num_hidden_layers=9)
    ids, other = rand_ids(1, 300, seed=seed), rand_ids(1, 333, seed=seed + 1)
    config = DeltaConfig(sink=4, window=32, gamma=16)
    with torch.no_grad():
        dense = model(input_ids=ids, logits_to_keep=1).logits
        delta_attn.enable(model, config)
        one_shot = model(input_ids=ids, logits_to_keep=1).logits
        chunked = delta_attn.chunked_prefill(model, ids, chunk_size=128, max_cache_len=400).logits
        reply = delta_attn.chunked_prefill(model, ids, chunk_size=128).generate(max_new_tokens=6).tokens
        assert not is_compiled(model)
        assert compile_layers(model, backend="aot_eager") is model and is_compiled(model)
        layers = list(decoder_layers(model))
        compile_layers(model, backend="aot_eager")  # again: a no-op
        assert list(decoder_layers(model)) == layers

        got = model(input_ids=ids, logits_to_keep=1).logits
        torch.testing.assert_close(got, one_shot, rtol=1e-5, atol=1e-6)
        graphs = graphs_compiled()
        assert graphs > 0  # the layers did compile
        model(input_ids=other, logits_to_keep=1)  # a new length: a symbolic one, nothing compiles
        assert graphs_compiled() == graphs

        got = delta_attn.chunked_prefill(model, ids, chunk_size=128, max_cache_len=400).logits
        torch.testing.assert_close(got, chunked, rtol=1e-5, atol=1e-6)
        graphs = graphs_compiled()
        delta_attn.chunked_prefill(model, other, chunk_size=100, max_cache_len=400)  # new chunk size and length
        assert graphs_compiled() == graphs
        # decoding from a compiled prefill (the layers compile once more, for one query over the cache)
        assert delta_attn.chunked_prefill(model, ids, chunk_size=128).generate(max_new_tokens=6).tokens == reply

        delta_attn.disable(model)
        model.set_attn_implementation(EAGER_SDPA)
        got = model(input_ids=ids, logits_to_keep=1).logits
        torch.testing.assert_close(got, dense, rtol=1e-5, atol=1e-6)
    assert (got - one_shot).abs().max() > 1e-4  # dense and Δ differ: the comparisons above can tell them apart


def test_compile_layers_refuses_a_model_without_a_layer_stack():
    class NoLayers(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="model.model.layers"):
        compile_layers(NoLayers())
    assert not is_compiled(NoLayers())


class _Buffer:
    """The two methods inductor's index-dtype choice asks of a buffer."""

    def __init__(self, size):
        self.size = size

    def has_tensor_output(self) -> bool:
        return True

    def get_layout(self):
        return self

    def storage_size(self):
        return self.size


def test_symbolic_sizes_index_with_int64_and_static_ones_ask_inductor(monkeypatch):
    """Inside a SymbolicInt64Inductor compilation, a kernel with a size that depends on a symbol (the sequence length
    under dynamic=True) gets int64 and inductor's own choice (which guards that int32 keeps fitting) is not asked;
    a kernel of static sizes gets inductor's choice; afterwards inductor's own function is back."""
    import sympy
    from torch._inductor.codegen.simd import SIMDScheduling

    from delta_attn import compiled

    asked = []
    monkeypatch.setattr(SIMDScheduling, "can_use_32bit_indexing", staticmethod(lambda n, b: asked.append(n) or True))
    own = SIMDScheduling.__dict__["can_use_32bit_indexing"]
    tokens = sympy.Symbol("s0", integer=True, positive=True)
    with compiled._int64_for_symbolic_sizes():
        assert SIMDScheduling.can_use_32bit_indexing(tokens * 4096, [_Buffer(sympy.Integer(4096))]) is False
        assert SIMDScheduling.can_use_32bit_indexing(sympy.Integer(64), [_Buffer(tokens * 14336)]) is False
        assert asked == []
        assert SIMDScheduling.can_use_32bit_indexing(sympy.Integer(64), [_Buffer(sympy.Integer(4096))]) is True
        assert asked == [64]
    assert SIMDScheduling.__dict__["can_use_32bit_indexing"] is own
    with pytest.raises(RuntimeError), compiled._int64_for_symbolic_sizes():
        raise RuntimeError("a failed compilation")
    assert SIMDScheduling.__dict__["can_use_32bit_indexing"] is own


@pytest.mark.slow  # inductor generates and builds C++ for two tiny layers: ~15 s
def test_compile_layers_compiles_with_inductor_int64_for_symbolic_sizes(seed, monkeypatch):
    """compile_layers' default backend is SymbolicInt64Inductor (inductor generating code: C++ on this CPU, where
    the int32 choice does not arise; the GPU run in BENCHMARKS.md shows the recompile it removes); the compiled
    layers give the eager outputs, and a new length compiles nothing."""
    from delta_attn import compiled

    torch._dynamo.reset()
    calls = []
    own_call = compiled.SymbolicInt64Inductor.__call__
    spy = lambda *args, **kwargs: calls.append(1) or own_call(*args, **kwargs)  # noqa: E731
    monkeypatch.setattr(compiled.SymbolicInt64Inductor, "__call__", spy)
    model = tiny_llama(seed, num_hidden_layers=2)
    ids = rand_ids(1, 200, seed=seed)
    with torch.no_grad():
        delta_attn.enable(model, DeltaConfig(sink=4, window=32, gamma=16))
        eager = model(input_ids=ids, logits_to_keep=1).logits
        compile_layers(model)
        got = model(input_ids=ids, logits_to_keep=1).logits
        assert calls  # our backend compiled the layers
        torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-5)
        graphs = graphs_compiled()
        model(input_ids=rand_ids(1, 333, seed=seed + 1), logits_to_keep=1)
        assert graphs_compiled() == graphs


def test_a_first_call_as_long_as_the_hidden_size_does_not_pin_the_length(seed):
    """Dynamo's duck sizing would give a first call of hidden_size tokens one symbol for the length and the hidden
    size, which the weights then pin, so every later length compiled again (the Llama-3-8B shape warmed up at 4,096
    tokens, on an H100). compile_layers turns it off for its layers' calls, and only there."""
    from torch.fx.experimental import _config as shape_settings

    torch._dynamo.reset()
    model = tiny_llama(seed)  # hidden_size 64
    with torch.no_grad():
        delta_attn.enable(model, DeltaConfig(sink=4, window=16, gamma=8))
        compile_layers(model, backend="aot_eager")
        model(input_ids=rand_ids(1, model.config.hidden_size, seed=seed), logits_to_keep=1)
        graphs = graphs_compiled()
        for n in (100, 77):
            model(input_ids=rand_ids(1, n, seed=seed + n), logits_to_keep=1)
        assert graphs_compiled() == graphs
    assert shape_settings.use_duck_shape  # back to torch's default outside the layers' calls
