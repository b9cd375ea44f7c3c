"""The ``delta-attn serve`` command: its mistakes are one-line errors before the model loads, and the real
command (a subprocess on a free port) answers HTTP, logs one line per request and stops on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from delta_attn import models
from delta_attn.cli_options import delta_scale


@pytest.fixture
def busy_port():
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--gamma", "0"], "argument --gamma: must be >= 1"),
        (["--mode", "fast"], "invalid choice: 'fast'"),
        (["--port", "70000"], "must be <= 65535"),
        (["--max-tokens", "0"], "must be >= 1"),
        (["--chunk-size", "-1"], "must be >= 0"),
        (["/nonexistent/model"], "/nonexistent/model does not exist"),
        (["{text}"], "not a GGUF file"),
        (["{folder}"], "no config.json in this folder"),
        (["{gguf}", "--gguf", "{gguf}"], "either as MODEL or with --model/--gguf, not both"),
        (["--interp", "linear"], "not causal"),
        (["--dense-layers", "31"], "dense_layers 31: the model has 30 layers"),
        (["--window", "16", "--sparse", "nosuch"], "prefill method: "),
        (["--delta-scale", "7"], "argument --delta-scale: must lie in [0, 1]"),
        (["--device", "cuda:7"], "--device cuda:7"),
        (["--port", "{busy_port}"], "cannot listen on 127.0.0.1:{busy_port}"),
    ],
)
def test_mistakes_are_one_line_errors_before_the_model_loads(
    argv, message, run_cli, tmp_path, busy_port, no_model_load
):
    (tmp_path / "notes.txt").write_text("not a model", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    fill = {"text": tmp_path / "notes.txt", "folder": tmp_path / "empty", "busy_port": busy_port}
    fill["gguf"] = models.smollm2_gguf_path()
    rc, err = run_cli(["serve", *(a.format(**fill) for a in argv)])
    last = err.strip().splitlines()[-1]
    assert rc == 2
    assert message.format(**fill) in last, last
    if argv == ["--interp", "linear"]:
        assert "--chunk-size 0" in last  # says how to run it


def test_a_gguf_file_and_an_hf_folder_load_the_same_model():
    from delta_attn.generation import SamplingParams, generate
    from delta_attn.serve.loading import inspect_model, load_model

    gguf = models.smollm2_gguf_path()
    models.load_cpu_model(gguf)  # writes the de-quantised model as a Hugging Face folder (if not there yet)
    folder = models.cache_root() / "models" / models.file_sha256(gguf)[:16]
    from_gguf, from_folder = inspect_model(gguf), inspect_model(folder, name="smol")
    assert from_gguf.is_gguf and not from_folder.is_gguf
    assert (from_gguf.name, from_folder.name) == ("SmolLM2-135M-Instruct.Q4_1", "smol")
    assert (from_folder.context_length, from_folder.num_layers) == (from_gguf.context_length, from_gguf.num_layers)
    assert (from_gguf.context_length, from_gguf.num_layers) == (8192, 30)
    answers = []
    for source in (from_gguf, from_folder):
        model, tokenizer = load_model(source, device="cpu", dtype=None)
        ids = tokenizer("The capital of France is")["input_ids"]
        answers.append(generate(model, [ids], SamplingParams(4)).tokens[0])
    assert answers[0] == answers[1]


def test_delta_scale_takes_numbers_and_names():
    assert delta_scale("0.25") == 0.25 and delta_scale("1") == 1.0
    assert delta_scale("auto") == "auto" and delta_scale("auto-global") == "auto-global"
    for bad in ("1.5", "-0.1", "automatic", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            delta_scale(bad)


def _lines(stream, into: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        into.put(line)


def _wait_for(lines: queue.Queue, pattern: str, seen: list[str], timeout: float = 120.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"no line matching {pattern!r}; stderr so far:\n{''.join(seen)}")


def test_the_command_serves_logs_and_stops_on_ctrl_c():
    argv = [
        "--port",
        "0",
        "--served-model-name",
        "smol",
        "--window",
        "16",
        "--sink",
        "4",
        "--gamma",
        "8",
        "--tail",
        "8",
        "--chunk-size",
        "32",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "delta_attn.cli", "serve", *argv, "--max-tokens", "3"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True).start()
    seen: list[str] = []
    try:
        url = _wait_for(lines, r"smol at (http://127\.0\.0\.1:\d+/v1) \(Δ: delta streaming, sink 4, window 16", seen)[1]
        with urllib.request.urlopen(url + "/models", timeout=30) as response:
            assert [m["id"] for m in json.load(response)["data"]] == ["smol"]
        body = {"messages": [{"role": "user", "content": "Hi!"}], "temperature": 0}
        request = urllib.request.Request(
            url + "/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:  # what curl does
            answer = json.load(response)
        usage = answer["usage"]
        assert answer["object"] == "chat.completion" and 1 <= usage["completion_tokens"] <= 3  # --max-tokens 3
        log = _wait_for(lines, rf"{answer['id']} chat: (\d+) prompt tokens, prefill \d+ ms, (\d+) tokens decoded", seen)
        assert (int(log[1]), int(log[2])) == (usage["prompt_tokens"], usage["completion_tokens"])
        assert "tokens/s" in seen[-1] and "Δ: delta streaming, sink 4, window 16, gamma 8" in seen[-1]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, "".join(seen)
        _wait_for(lines, r"^delta-attn serve: stopped$", seen, timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
