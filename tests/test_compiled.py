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
from delta_attn.compiled import EAGER_SDPA, compile_layers, decoder_layers, is_compiled
from tiny_models import rand_ids, tiny_llama


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.mark.slow  # compiles the 9 layers of a tiny model for five call shapes: ~60 s
def test_compiled_layers_give_the_eager_outputs_and_compile_once(seed, monkeypatch):
    torch._dynamo.reset()
    # more layers than dynamo's default 8 entries per code object, and an error (not a silent eager fallback) if a
    # layer runs out of them: compile_layers must make room for every layer
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    monkeypatch.setattr(torch._dynamo.config, "accumulated_recompile_limit", 256)
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
        graphs = _graphs()
        assert graphs > 0  # the layers did compile
        model(input_ids=other, logits_to_keep=1)  # a new length: a symbolic one, nothing compiles
        assert _graphs() == graphs

        got = delta_attn.chunked_prefill(model, ids, chunk_size=128, max_cache_len=400).logits
        torch.testing.assert_close(got, chunked, rtol=1e-5, atol=1e-6)
        graphs = _graphs()
        delta_attn.chunked_prefill(model, other, chunk_size=100, max_cache_len=400)  # new chunk size and length
        assert _graphs() == graphs
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
