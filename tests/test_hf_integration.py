"""The transformers integration on tiny random-weight models (no downloads).

Equivalences checked: γ = 1 (every row an anchor ⇒ Δ is dense) reproduces the stock model's logits and
greedy generations on several architectures; decode is dense for every mode; a left-padded batch equals
each sequence alone; ``dense_layers`` and ``disable`` behave; unsupported models raise clear errors.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertForMaskedLM,
    BloomConfig,
    BloomForCausalLM,
    Gemma2Config,
    GemmaConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
    T5Config,
    T5ForConditionalGeneration,
)

import delta_attn
from delta_attn import DeltaConfig
from delta_attn.compat import attn_implementation, left_padding_position_ids
from delta_attn.hf import current_config
from tiny_models import VOCAB, rand_ids, tiny_llama_kwargs

_COMMON = tiny_llama_kwargs()
CONFIGS = {
    "llama": lambda: LlamaConfig(**_COMMON),
    "qwen2": lambda: Qwen2Config(**_COMMON),
    "qwen3": lambda: Qwen3Config(**_COMMON, head_dim=16),
    "mistral": lambda: MistralConfig(**_COMMON, sliding_window=None),
    "gemma": lambda: GemmaConfig(**_COMMON, head_dim=16),
    "phi3": lambda: Phi3Config(**_COMMON),
    "olmo2": lambda: Olmo2Config(**_COMMON),
}
# sparse enough that Δ / sparse really differ from dense on 200-token prompts
SPARSE = dict(window=8, sink=2)


def tiny(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(CONFIGS[arch](), attn_implementation="sdpa").eval()


def logits(model, ids, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, **kw).logits


def greedy(model, ids, n=8, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(input_ids=ids, max_new_tokens=n, do_sample=False, min_new_tokens=n, **kw)


def test_import_registers_delta():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    assert "delta" in AttentionInterface._global_mapping
    assert "delta" in AttentionMaskInterface._global_mapping
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS["llama"](), attn_implementation="delta").eval()
    assert attn_implementation(model) == "delta"
    ids = rand_ids(1, 40)
    out = logits(model, ids)  # never enabled: the default DeltaConfig (a 40-token prompt is all exact tail)
    model.set_attn_implementation("sdpa")
    torch.testing.assert_close(out, logits(model, ids), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_gamma1_equals_stock_logits_and_generation(arch):
    model = tiny(arch)
    ids = rand_ids(1, 200)
    ref_logits, ref_gen = logits(model, ids), greedy(model, ids)
    delta_attn.enable(model, DeltaConfig(gamma=1, tail=0, **SPARSE))
    assert attn_implementation(model) == "delta"
    torch.testing.assert_close(logits(model, ids), ref_logits, atol=2e-5, rtol=1e-4)
    assert torch.equal(greedy(model, ids), ref_gen)
    # the test can fail: the sparse base alone changes the logits by far more than the tolerance
    delta_attn.enable(model, DeltaConfig(mode="sparse", **SPARSE))
    assert (logits(model, ids) - ref_logits).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma"])
def test_left_padded_batch_equals_each_alone(arch):
    model = delta_attn.enable(tiny(arch), DeltaConfig(gamma=16, window=16, sink=4, tail=8))
    lens = (150, 97, 131)
    seqs = [rand_ids(1, n, seed=10 + i) for i, n in enumerate(lens)]
    width = max(lens)
    batch = torch.zeros(len(lens), width, dtype=torch.long)
    mask = torch.zeros(len(lens), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, width - s.shape[1] :] = s[0]
        mask[i, width - s.shape[1] :] = 1
    pos = left_padding_position_ids(mask)
    batch_logits = logits(model, batch, attention_mask=mask, position_ids=pos)
    batch_gen = greedy(model, batch, attention_mask=mask)
    for i, s in enumerate(seqs):
        n = s.shape[1]
        torch.testing.assert_close(batch_logits[i, width - n :], logits(model, s)[0], atol=2e-5, rtol=1e-4)
        assert torch.equal(batch_gen[i, width:], greedy(model, s)[0, n:])


@pytest.mark.parametrize("mode", ["sparse", "recompute", "delta", "dense"])
def test_decode_is_dense_for_every_mode(mode):
    """After any prefill, a decode step over the cache equals the stock SDPA step over that same cache."""
    model = delta_attn.enable(tiny("llama"), DeltaConfig(mode=mode, gamma=16, **SPARSE))
    ids = rand_ids(1, 180)
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
        nxt = rand_ids(1, 3, seed=7)  # several new tokens at once: bottom-right causal over the cache
        step = model(input_ids=nxt, past_key_values=copy.deepcopy(cache)).logits
        delta_attn.disable(model)
        stock = model(input_ids=nxt, past_key_values=copy.deepcopy(cache)).logits
    torch.testing.assert_close(step, stock, atol=2e-5, rtol=1e-4)


def test_decode_honours_padding_mask():
    model = delta_attn.enable(tiny("qwen2"), DeltaConfig(gamma=16, **SPARSE))
    ids = rand_ids(2, 120)
    mask = torch.ones_like(ids)
    mask[1, :30] = 0
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        step_mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
        nxt = rand_ids(2, 1, seed=3)
        pos = step_mask.sum(-1, keepdim=True) - 1

        def step():  # one decode step over a copy of the prefilled cache
            cache = copy.deepcopy(out.past_key_values)
            return model(input_ids=nxt, attention_mask=step_mask, position_ids=pos, past_key_values=cache).logits

        a = step()
        delta_attn.disable(model)
        b = step()
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_dense_mode_and_dense_layers():
    model = tiny("llama")
    ids = rand_ids(1, 200)
    ref = logits(model, ids)
    delta_attn.enable(model, DeltaConfig(mode="dense"))
    torch.testing.assert_close(logits(model, ids), ref, atol=2e-5, rtol=1e-4)
    for every_layer in (2, [0, 1]):  # the first k layers, or a list naming them all
        delta_attn.enable(model, DeltaConfig(mode="sparse", dense_layers=every_layer, **SPARSE))
        torch.testing.assert_close(logits(model, ids), ref, atol=2e-5, rtol=1e-4)
    delta_attn.enable(model, DeltaConfig(mode="sparse", **SPARSE))
    all_sparse = logits(model, ids)
    delta_attn.enable(model, DeltaConfig(mode="sparse", dense_layers=[0], **SPARSE))
    first_dense = logits(model, ids)
    assert (first_dense - all_sparse).abs().max() > 1e-3 and (first_dense - ref).abs().max() > 1e-3
    with pytest.raises(ValueError, match="beyond the model's 2 layers"):
        delta_attn.enable(model, DeltaConfig(dense_layers=[5]))


def test_enable_replaces_config_and_disable_restores_stock():
    model = tiny("llama")
    ids = rand_ids(1, 200)
    ref = logits(model, ids)
    a, b = DeltaConfig(mode="sparse", **SPARSE), DeltaConfig(mode="delta", gamma=16, **SPARSE)
    assert delta_attn.enable(model, a) is model and current_config(model) is a
    out_a = logits(model, ids)
    delta_attn.enable(model, b)
    assert current_config(model) is b
    assert all(m._delta_attn.config is b for m in model.modules() if hasattr(m, "layer_idx"))
    out_b = logits(model, ids)
    assert (out_a - out_b).abs().max() > 1e-4
    assert delta_attn.disable(model) is model
    assert attn_implementation(model) == "sdpa" and current_config(model) is None
    assert not any(hasattr(m, "_delta_attn") for m in model.modules())
    torch.testing.assert_close(logits(model, ids), ref, atol=0, rtol=0)


def test_sliding_window_layers_keep_their_windowed_attention():
    """Mistral with a 32-token window: its layers are already sparse, so any mode equals the stock model."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(MistralConfig(**_COMMON, sliding_window=32), attn_implementation="sdpa")
    model.eval()
    ids = rand_ids(1, 100)
    ref = logits(model, ids)
    delta_attn.enable(model, DeltaConfig(mode="sparse", **SPARSE))
    torch.testing.assert_close(logits(model, ids), ref, atol=2e-5, rtol=1e-4)


def test_padding_errors():
    model = delta_attn.enable(tiny("llama"), DeltaConfig(**SPARSE))
    ids = rand_ids(2, 50)
    right = torch.ones_like(ids)
    right[0, 40:] = 0
    with pytest.raises(ValueError, match="left padding"):
        logits(model, ids, attention_mask=right)
    empty = torch.ones_like(ids)
    empty[1] = 0
    with pytest.raises(ValueError, match="all padding"):
        logits(model, ids, attention_mask=empty)
    bidirectional = torch.ones(2, 1, 50, 50, dtype=torch.bool)  # a custom 4D mask that is not causal
    with pytest.raises(ValueError, match="causal attention mask"):
        logits(model, ids, attention_mask=bidirectional)


def test_unsupported_models_raise():
    cfg = DeltaConfig()
    with pytest.raises(ValueError, match="AttentionInterface"):
        delta_attn.enable(BloomForCausalLM(BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=1, n_head=2)), cfg)
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2))
    with pytest.raises(ValueError, match="encoder-decoder"):
        delta_attn.enable(t5, cfg)
    bert = BertForMaskedLM(
        BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    )
    with pytest.raises(ValueError, match="non-causal"):
        delta_attn.enable(bert, cfg)
    torch.manual_seed(0)
    gemma2 = AutoModelForCausalLM.from_config(Gemma2Config(**_COMMON, head_dim=16))
    with pytest.raises(ValueError, match="soft-caps"):
        delta_attn.enable(gemma2, cfg)
    bidir = LlamaConfig(**_COMMON)
    bidir.is_causal = False
    with pytest.raises(ValueError, match="non-causal"):
        delta_attn.enable(AutoModelForCausalLM.from_config(bidir), cfg)
    with pytest.raises(TypeError, match="DeltaConfig"):
        delta_attn.enable(tiny("llama"), {"gamma": 64})
    with pytest.raises(TypeError, match="PreTrainedModel"):
        delta_attn.enable(torch.nn.Linear(2, 2), cfg)
    # nothing was switched on the models that were refused
    assert attn_implementation(bert) != "delta" and not hasattr(t5, "_delta_attn")


def test_training_dropout_raises():
    cfg = LlamaConfig(**_COMMON, attention_dropout=0.1)
    torch.manual_seed(0)
    model = delta_attn.enable(AutoModelForCausalLM.from_config(cfg), DeltaConfig(**SPARSE))
    model.train()
    with pytest.raises(ValueError, match="model.eval"):
        model(input_ids=rand_ids(1, 20))
