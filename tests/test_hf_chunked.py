"""`delta_attn.chunked_prefill`: chunk by chunk equals one shot (cache and logits); decoding from it:
tests/test_hf_continuation.py."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache

import delta_attn
from delta_attn import DeltaConfig
from delta_attn.compat import left_padding_position_ids
from tiny_models import VOCAB, rand_ids, tiny_llama


@pytest.fixture(scope="module")
def model():
    return tiny_llama(num_hidden_layers=3)


def one_shot(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=left_padding_position_ids(mask), use_cache=True)
    return out.past_key_values, out.logits[:, -1]


def assert_same_cache(a, b, n_layers, mask):
    real = mask.bool()[:, None, :, None]  # padding positions hold don't-care values in both
    for layer in range(n_layers):
        for x, y in ((a.layers[layer].keys, b.layers[layer].keys), (a.layers[layer].values, b.layers[layer].values)):
            torch.testing.assert_close(x * real, y * real, atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("chunk_size", [64, 50, 1000])
@pytest.mark.parametrize("interp", ["repeat", "ema"])
def test_chunked_equals_one_shot_streaming(model, chunk_size, interp):
    delta_attn.enable(model, DeltaConfig(sparse="streaming", window=24, sink=4, gamma=16, tail=16, interp=interp))
    ids = rand_ids(1, 301)
    mask = torch.ones_like(ids)
    cache, last = one_shot(model, ids, mask)
    out = delta_attn.chunked_prefill(model, ids, chunk_size=chunk_size)
    assert out.past_key_values.get_seq_length() == 301 and out.logits.shape == (1, VOCAB)
    torch.testing.assert_close(out.logits, last, atol=3e-5, rtol=1e-4)
    assert_same_cache(out.past_key_values, cache, model.config.num_hidden_layers, mask)
    # and it is not trivially dense: the sparse base alone gives a different cache
    delta_attn.enable(model, DeltaConfig(mode="sparse", window=24, sink=4))
    sparse_last = delta_attn.chunked_prefill(model, ids, chunk_size=chunk_size).logits
    assert (sparse_last - last).abs().max() > 1e-3


def test_chunked_auto_scale_equals_one_shot(model):
    """delta_scale="auto" carries its running sums through the model's chunked prefill (docs/algorithm.md §13).

    A window below γ gives every anchor but the first a real Δ (λ of rounding noise would be noise).
    """
    cfg = DeltaConfig(sparse="streaming", window=10, sink=2, gamma=16, tail=16, delta_scale="auto")
    delta_attn.enable(model, cfg)
    ids = rand_ids(1, 301, seed=3)
    mask = torch.ones_like(ids)
    cache, last = one_shot(model, ids, mask)
    out = delta_attn.chunked_prefill(model, ids, chunk_size=50)
    torch.testing.assert_close(out.logits, last, atol=3e-5, rtol=1e-4)
    assert_same_cache(out.past_key_values, cache, model.config.num_hidden_layers, mask)
    delta_attn.enable(model, cfg.replace(delta_scale=1.0))
    assert (delta_attn.chunked_prefill(model, ids, chunk_size=50).logits - last).abs().max() > 1e-4


def test_chunked_left_padded_batch(model):
    """Padding longer than a chunk: early chunks of the short sequence are all padding."""
    delta_attn.enable(model, DeltaConfig(window=24, sink=4, gamma=16, tail=16))
    a, b = rand_ids(1, 260, seed=4), rand_ids(1, 150, seed=5)
    ids = torch.cat([a, torch.cat([torch.zeros(1, 110, dtype=torch.long), b], 1)])
    mask = torch.ones_like(ids)
    mask[1, :110] = 0
    cache, last = one_shot(model, ids, mask)
    out = delta_attn.chunked_prefill(model, ids, mask, chunk_size=48, past_key_values=DynamicCache(config=model.config))
    torch.testing.assert_close(out.logits, last, atol=3e-5, rtol=1e-4)
    assert_same_cache(out.past_key_values, cache, model.config.num_hidden_layers, mask)
    _, alone = one_shot(model, b, torch.ones_like(b))
    torch.testing.assert_close(out.logits[1], alone[0], atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["delta", "sparse", "recompute"])
def test_prompt_in_pieces_and_forked_endings(model, mode):
    """A prefix prefilled once (knowing the final length), continued with two different endings,
    equals the one-shot prefill of each full prompt."""
    delta_attn.enable(model, DeltaConfig(mode=mode, window=24, sink=4, gamma=16, tail=16))
    prefix = rand_ids(1, 203, seed=11)
    endings = [rand_ids(1, 37, seed=12), rand_ids(1, 37, seed=13)]
    pre = delta_attn.chunked_prefill(model, prefix, chunk_size=64, prompt_len=240)
    assert pre.state.prompt_len == 240
    for ending in endings:
        full = torch.cat([prefix, ending], 1)
        cache, last = one_shot(model, full, torch.ones_like(full))
        out = delta_attn.chunked_prefill(
            model,
            ending,
            past_key_values=copy.deepcopy(pre.past_key_values),
            state=copy.deepcopy(pre.state),
            chunk_size=20,
        )
        torch.testing.assert_close(out.logits, last, atol=3e-5, rtol=1e-4)
        assert_same_cache(out.past_key_values, cache, model.config.num_hidden_layers, torch.ones_like(full))
    with pytest.raises(ValueError, match="differs from the prompt_len"):
        delta_attn.chunked_prefill(
            model,
            endings[0],
            past_key_values=copy.deepcopy(pre.past_key_values),
            state=copy.deepcopy(pre.state),
            prompt_len=300,
        )


def test_chunked_prefill_errors(model):
    delta_attn.disable(model)
    ids = rand_ids(1, 40)
    with pytest.raises(ValueError, match="delta_attn.enable"):
        delta_attn.chunked_prefill(model, ids)
    delta_attn.enable(model, DeltaConfig(window=8, sink=2, gamma=8))
    with pytest.raises(ValueError, match="chunk_size"):
        delta_attn.chunked_prefill(model, ids, chunk_size=0)
    right = torch.ones_like(ids)
    right[0, -3:] = 0
    with pytest.raises(ValueError, match="padding_side = 'left'"):
        delta_attn.chunked_prefill(model, ids, right)
    full = delta_attn.chunked_prefill(model, ids, chunk_size=16).past_key_values
    with pytest.raises(ValueError, match="already holds tokens"):
        delta_attn.chunked_prefill(model, ids, past_key_values=full)
    with pytest.raises(ValueError, match="shorter than"):
        delta_attn.chunked_prefill(model, ids, prompt_len=39)
    for noncausal in (dict(interp="linear"), dict(delta_scale="auto-global"), dict(extra_anchors=0.25)):
        delta_attn.enable(model, DeltaConfig(window=8, sink=2, gamma=8, **noncausal))
        with pytest.raises(ValueError, match="non-causal"):
            delta_attn.chunked_prefill(model, ids, chunk_size=16)
    delta_attn.disable(model)
