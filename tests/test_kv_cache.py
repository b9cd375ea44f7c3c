"""PreallocatedCache: chunks are written in place into one buffer, and chunked prefill through it equals one shot."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache

import delta_attn
from delta_attn import DeltaConfig
from delta_attn.hf import DECODE_ROOM
from delta_attn.kv_cache import PreallocatedCache, PreallocatedLayer
from tiny_models import continue_greedily, rand_ids, tiny_llama

DELTA = DeltaConfig(window=24, sink=4, gamma=16, tail=16)


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture
def buffer_pointers(monkeypatch):
    """Every PreallocatedLayer.update records (layer id, key data_ptr, value data_ptr, filled length)."""
    seen = []
    original = PreallocatedLayer.update

    def spy(self, k, v, *args, **kwargs):
        keys, values = original(self, k, v, *args, **kwargs)
        seen.append((id(self), keys.data_ptr(), values.data_ptr(), keys.shape[2]))
        return keys, values

    monkeypatch.setattr(PreallocatedLayer, "update", spy)
    return seen


def test_layer_writes_in_place_and_grows():
    layer = PreallocatedLayer(10)
    k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 5)  # key and value head dims may differ
    keys, values = layer.update(k, v)
    ptr = layer.key_buffer.data_ptr()
    assert layer.key_buffer.shape == (2, 3, 10, 8) and layer.value_buffer.shape == (2, 3, 10, 5)
    k2, v2 = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 5)
    keys, values = layer.update(k2, v2)
    assert layer.key_buffer.data_ptr() == ptr and keys.data_ptr() == ptr and layer.get_seq_length() == 10
    torch.testing.assert_close(keys, torch.cat([k, k2], 2), rtol=0, atol=0)
    torch.testing.assert_close(values, torch.cat([v, v2], 2), rtol=0, atol=0)
    k3, v3 = torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 5)
    keys, values = layer.update(k3, v3)  # past the capacity: one bigger buffer, contents kept
    assert layer.key_buffer.shape[2] == 12 and layer.get_seq_length() == 11
    torch.testing.assert_close(values, torch.cat([v, v2, v3], 2), rtol=0, atol=0)
    layer.crop(-3)  # crop keeps a view of the buffer: the next update writes in place after it
    ptr = layer.key_buffer.data_ptr()
    keys, _ = layer.update(k3, v3)
    assert keys.data_ptr() == ptr and layer.get_seq_length() == 9
    torch.testing.assert_close(keys, torch.cat([k, k2[:, :, :4], k3], 2), rtol=0, atol=0)
    layer.batch_select_indices(torch.tensor([1]))  # replaced by a new tensor: moved into a new buffer
    keys, _ = layer.update(k3[1:], v3[1:])
    assert keys.shape == (1, 3, 10, 8) and keys.data_ptr() == layer.key_buffer.data_ptr()
    assert layer.key_buffer.shape[2] == 10  # moved, not grown: max(capacity, filled)
    torch.testing.assert_close(keys, torch.cat([k[1:], k2[1:, :, :4], k3[1:], k3[1:]], 2), rtol=0, atol=0)
    with pytest.raises(ValueError, match="capacity"):
        PreallocatedLayer(0)


@pytest.mark.parametrize("chunk_size", [16, 37, 64, 500])
def test_chunked_prefill_in_place_equals_one_shot(model, chunk_size, buffer_pointers):
    delta_attn.enable(model, DELTA)
    ids = rand_ids(1, 203)
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=True)
        reference = model.generate(input_ids=ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    out = delta_attn.chunked_prefill(model, ids, chunk_size=chunk_size, max_cache_len=203 + delta_attn.hf.DECODE_ROOM)
    assert isinstance(out.past_key_values, PreallocatedCache)
    torch.testing.assert_close(out.logits, ref.logits[:, -1], atol=3e-5, rtol=1e-4)
    # one buffer per layer for the whole prompt: every chunk's keys are a view of the same memory
    n_chunks = -(-203 // chunk_size)
    assert len(buffer_pointers) == n_chunks * model.config.num_hidden_layers
    for layer in out.past_key_values.layers:
        mine = [p for p in buffer_pointers if p[0] == id(layer)]
        assert len(mine) == n_chunks and len({(p[1], p[2]) for p in mine}) == 1
        assert mine[-1][3] == 203 and layer.key_buffer.shape[2] == 203 + delta_attn.hf.DECODE_ROOM
        assert layer.keys.data_ptr() == layer.key_buffer.data_ptr()
    cont = continue_greedily(model, ids, out, 4)  # decoding continues in the same buffers
    assert torch.equal(cont, reference)
    assert len({(p[1], p[2]) for p in buffer_pointers if p[0] == id(out.past_key_values.layers[0])}) == 1


def test_small_max_cache_len_grows_while_decoding(model):
    delta_attn.enable(model, DELTA)
    ids = rand_ids(1, 100, seed=3)
    with torch.no_grad():
        reference = model.generate(input_ids=ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        out = delta_attn.chunked_prefill(model, ids, chunk_size=32, max_cache_len=101)
        nxt = out.logits.argmax(-1, keepdim=True)
        cont = model.generate(
            input_ids=torch.cat([ids, nxt], 1),
            past_key_values=out.past_key_values,
            max_new_tokens=5,
            min_new_tokens=5,
            do_sample=False,
        )
    assert torch.equal(cont, reference)
    assert out.past_key_values.layers[0].key_buffer.shape[2] >= 106
    with pytest.raises(ValueError, match="max_cache_len must be"):
        delta_attn.chunked_prefill(model, ids, max_cache_len=99)
    with pytest.raises(ValueError, match="without past_key_values"):
        delta_attn.chunked_prefill(model, ids, max_cache_len=200, past_key_values=DynamicCache(config=model.config))


def test_prompt_in_pieces_keeps_one_buffer_and_forks(model):
    """A prefix prefilled once (prompt_len known) keeps its buffer through the continuation; a deep
    copy forks it (its own buffer) and both endings equal their one-shot prefills."""
    delta_attn.enable(model, DELTA)
    prefix, endings = rand_ids(1, 120, seed=5), [rand_ids(1, 40, seed=6), rand_ids(1, 40, seed=7)]
    pre = delta_attn.chunked_prefill(model, prefix, chunk_size=48, prompt_len=160, max_cache_len=200)
    ptr = pre.past_key_values.layers[1].key_buffer.data_ptr()
    for i, ending in enumerate(endings):
        full = torch.cat([prefix, ending], 1)
        with torch.no_grad():
            last = model(input_ids=full).logits[:, -1]
        fork = i == 0
        cache = copy.deepcopy(pre.past_key_values) if fork else pre.past_key_values
        state = copy.deepcopy(pre.state) if fork else pre.state
        out = delta_attn.chunked_prefill(model, ending, past_key_values=cache, state=state, chunk_size=48)
        torch.testing.assert_close(out.logits, last, atol=3e-5, rtol=1e-4)
        assert (out.past_key_values.layers[1].key_buffer.data_ptr() == ptr) is not fork


def test_left_padded_batch_same_as_dynamic_cache(model):
    """Padding longer than a chunk: the in-place cache gives what DynamicCache gives, row by row."""
    delta_attn.enable(model, DELTA)
    a, b = rand_ids(1, 180, seed=8), rand_ids(1, 90, seed=9)
    ids = torch.cat([a, torch.cat([torch.zeros(1, 90, dtype=torch.long), b], 1)])
    mask = torch.ones_like(ids)
    mask[1, :90] = 0
    ref = delta_attn.chunked_prefill(model, ids, mask, chunk_size=40, past_key_values=DynamicCache(config=model.config))
    out = delta_attn.chunked_prefill(model, ids, mask, chunk_size=40, max_cache_len=180 + 8)
    assert isinstance(out.past_key_values, PreallocatedCache)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-6, rtol=1e-5)
    real = mask.bool()[:, None, :, None]
    for mine, theirs in zip(out.past_key_values.layers, ref.past_key_values.layers):
        torch.testing.assert_close(mine.keys * real, theirs.keys * real, atol=0, rtol=0)
        torch.testing.assert_close(mine.values * real, theirs.values * real, atol=0, rtol=0)


def test_the_default_cache_is_in_place_with_room_to_decode(model):
    delta_attn.enable(model, DELTA)
    ids = rand_ids(1, 100)
    out = delta_attn.chunked_prefill(model, ids, chunk_size=32)
    cache = out.past_key_values
    assert type(cache) is PreallocatedCache and cache.get_seq_length() == 100
    assert cache.layers[0].key_buffer.shape[2] >= 100 + DECODE_ROOM  # one buffer: decoding does not re-copy it
    ref = delta_attn.chunked_prefill(model, ids, chunk_size=32, past_key_values=DynamicCache(config=model.config))
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-6, rtol=1e-5)
