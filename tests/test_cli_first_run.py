"""First-run polish of the command line (issue 18, reproductions 7 and 8): a usage error is one line (the
usage block only with --help), the cheap checks come before torch/transformers are imported, ``--tasks``
naming nothing is an error that creates no output folder, and ``generate`` strips a prompt file's
trailing whitespace (``--raw`` keeps it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from delta_attn.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
HEAVY = ("torch", "transformers", "tokenizers", "gguf", "fastapi", "uvicorn", "openai")


def _run_fresh(argv: list[str]) -> tuple[int, list[str], list[str]]:
    """(exit status, stderr lines, heavy packages imported) of ``delta-attn ARGV`` in a fresh interpreter."""
    script = (
        "import json, sys\n"
        "from delta_attn.cli import main\n"
        "try:\n"
        f"    rc = main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "print(json.dumps([rc, heavy]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    rc, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    return rc, out.stderr.strip().splitlines(), heavy


@pytest.fixture
def prompt_file(tmp_path) -> Path:
    path = tmp_path / "question.txt"
    path.write_text("What is the capital of France?\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "argv, words",
    [
        (["generate", "/nonexistent/prompt.txt"], "/nonexistent/prompt.txt does not exist"),
        (["generate", "{prompt}", "--sparse", "streamin"], "unknown sparse method 'streamin'"),
        (["generate", "{prompt}", "--gamma", "0"], "argument --gamma: must be >= 1"),
        (["generate", "{prompt}", "--windw", "8"], "unrecognized arguments: --windw 8"),
        (["demo", "--methods", "dense,fast"], "unknown method"),
        (["eval", "ruler", "--tasks", ",", "--out", "{out}"], "no task named in ','"),
        (["eval", "ruler", "--tasks", "niah_single_9", "--out", "{out}"], "unknown task 'niah_single_9'"),
        (["eval", "ppl", "--methods", "delta_zz", "--out", "{out}"], "method 'delta_zz': unknown option 'zz'"),
        (["serve", "--sparse", "nosuch"], "unknown sparse method 'nosuch'"),
        (["serve", "/nonexistent/model"], "/nonexistent/model does not exist"),
        (["bogus"], "invalid choice: 'bogus'"),
    ],
)
def test_a_usage_error_is_one_line_and_comes_before_the_heavy_imports(argv, words, prompt_file, tmp_path):
    out = tmp_path / "results"
    argv = [a.format(prompt=prompt_file, out=out) for a in argv]
    rc, lines, heavy = _run_fresh(argv)
    assert rc == 2
    assert len(lines) == 1, lines  # no usage block
    assert words in lines[0] and lines[0].startswith("delta-attn"), lines
    assert heavy == [], f"imported {heavy} before reporting: {lines[0]}"
    assert not out.exists()  # nothing written


def test_help_still_prints_the_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: delta-attn generate") and "--raw" in text


def test_an_empty_task_list_is_refused_in_process_too(tmp_path, capsys):
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as exc:
        main(["eval", "ruler", "--tasks", " , ,", "--out", str(out)])
    assert exc.value.code == 2 and not out.exists()
    assert "no task named" in capsys.readouterr().err


def test_generate_strips_a_prompt_files_trailing_whitespace_and_raw_keeps_it(tmp_path, monkeypatch, seed):
    """The ids that reach the model: "question\\n\\n  " gives exactly the ids of "question"; --raw keeps the rest."""
    import delta_attn.generation as generation
    import delta_attn.hf as hf
    from delta_attn import models

    tokenizer = models.load_tokenizer()
    seen: list[list[int]] = []

    def fake_generate(model, prompts, params, **kwargs):
        seen.append(list(prompts[0]))
        return generation.GenerationResult([[]], ["stop"], 0.0, 0.0, 0)

    monkeypatch.setattr(generation, "generate", fake_generate)
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: (object(), tokenizer))
    monkeypatch.setattr(hf, "enable", lambda model, config: model)
    question = "What is the capital of France?"
    tails = ["", "\n", "\r\n", "\n\n  \t", " \n"]
    for tail in tails:
        path = tmp_path / "q.txt"
        path.write_bytes((question + tail).encode("utf-8"))
        assert main(["generate", str(path)]) == 0
        assert main(["generate", str(path), "--raw"]) == 0
    stripped, raw = seen[0::2], seen[1::2]
    assert all(ids == stripped[0] for ids in stripped)  # every tail gives the plain question's ids
    assert len({tuple(ids) for ids in raw}) == len(tails)  # --raw keeps each tail
    assert tokenizer.decode(raw[1]).endswith(question + "\n")
