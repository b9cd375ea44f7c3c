"""Casting a model to half precision keeps the rotary inverse frequencies in float32.

``Module.to(bfloat16)`` would round transformers' ``inv_freq`` buffer to 8 mantissa bits (a phase error that
grows with the position: over 0.1 rad at 32K tokens on half of Qwen2's frequencies). ``compat.cast_model``
— used by every loader — keeps them float32, as ``from_pretrained(dtype=bfloat16)`` does; records of half-
precision runs say so (``rope_freqs``), so results from the old cast are never resumed into new ones.
"""

from __future__ import annotations

import random

import torch

from delta_attn.compat import cast_model
from delta_attn.eval.records import record_config
from delta_attn.models import load_model
from tiny_models import rand_ids, tiny_llama


def _float64_inv_freq(model) -> torch.Tensor:
    cfg = model.config
    d = cfg.hidden_size // cfg.num_attention_heads
    base = cfg.rope_parameters["rope_theta"] if getattr(cfg, "rope_parameters", None) else cfg.rope_theta
    return 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))


def _rotaries(model):
    return [m for m in model.modules() if "inv_freq" in m._buffers]


def test_cast_keeps_inv_freq_float32_and_exact():
    base = random.choice([10_000.0, 500_000.0, 1_000_000.0])
    model = tiny_llama(seed=random.randrange(1000), rope_theta=base)
    ref = _float64_inv_freq(model)
    assert ref[1:].sub(ref[1:].to(torch.bfloat16).double()).abs().max() > 0  # bf16 would round them
    cast = cast_model(model, "cpu", torch.bfloat16)
    assert next(cast.parameters()).dtype == torch.bfloat16
    rot = _rotaries(cast)
    assert rot, "the tiny Llama has a rotary embedding"
    for m in rot:
        assert m.inv_freq.dtype == torch.float32
        torch.testing.assert_close(m.inv_freq.double(), ref, rtol=2e-7, atol=0)
    ids = rand_ids(1, 40, seed=random.randrange(1000))
    with torch.no_grad():
        out = cast(input_ids=ids).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_plain_to_would_round_them():  # the defect cast_model exists for: proves the test above can fail
    model = tiny_llama().to(torch.bfloat16)
    assert all(m.inv_freq.dtype == torch.bfloat16 for m in _rotaries(model))


def test_load_model_of_a_folder_in_bf16(tmp_path):
    model = tiny_llama(seed=random.randrange(1000))
    model.save_pretrained(tmp_path / "m")
    _write_tokenizer(tmp_path / "m")
    loaded, _ = load_model(str(tmp_path / "m"), device="cpu", dtype=torch.bfloat16, use_cache=False)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    for m in _rotaries(loaded):
        assert m.inv_freq.dtype == torch.float32
        torch.testing.assert_close(m.inv_freq.double(), _float64_inv_freq(model), rtol=2e-7, atol=0)


def test_half_precision_records_say_so():
    cfg = dict(prompt={"format": 2}, model="m@sha256:0", seed=0)
    assert record_config({"mode": "dense"}, dtype="bfloat16", **cfg)["rope_freqs"] == "float32"
    assert "rope_freqs" not in record_config({"mode": "dense"}, dtype="float32", **cfg)


def _write_tokenizer(folder):
    from delta_attn.models import load_cpu_model

    _, tok = load_cpu_model()  # the bundled model's tokenizer: any real one will do for loading
    tok.save_pretrained(folder)
