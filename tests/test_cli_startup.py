"""The command line starts fast and documents itself (issue 12, reproduction 10 and the help-text rule)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from delta_attn.cli import build_parser, main

SRC = str(Path(__file__).resolve().parents[1] / "src")
HEAVY = ("torch", "transformers", "scipy", "matplotlib", "tqdm", "gguf", "safetensors", "tokenizers")


def _subparsers(parser: argparse.ArgumentParser, path: str = "delta-attn"):
    """(command path, parser) of every sub-command, recursively."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{path} {name}", sub
                yield from _subparsers(sub, f"{path} {name}")


def test_every_option_documents_its_default_and_every_command_is_described():
    commands = dict(_subparsers(build_parser()))
    assert {"delta-attn demo", "delta-attn generate", "delta-attn eval ruler", "delta-attn bench layer"} <= set(
        commands
    )
    undocumented = []
    for name, parser in commands.items():
        if not parser.description:
            undocumented.append(f"{name}: no description")
        for action in parser._actions:
            if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if action.help == argparse.SUPPRESS:  # a hidden alias (--gguf, the old name of --model)
                continue
            text = action.help or ""
            if "default" not in text and "required" not in text:
                undocumented.append(f"{name} {action.option_strings[0]}: {text!r}")
    assert not undocumented, "\n".join(undocumented)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("delta-attn 0.")


def _imported_by(code: str) -> list[str]:
    """Top-level packages among HEAVY that ``code`` imports beyond what ``import delta_attn`` already did."""
    script = (
        "import sys, delta_attn\n"
        "before = set(sys.modules)\n"
        f"{code}\n"
        f"print(sorted({{m.split('.')[0] for m in set(sys.modules) - before}} & set({HEAVY!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return eval(out.stdout.strip().splitlines()[-1])


def test_help_imports_nothing_heavy_beyond_the_package():
    assert _imported_by("from delta_attn.cli import build_parser; build_parser().format_help()") == []
    assert (
        _imported_by("from delta_attn.cli import main\ntry: main(['eval', 'ruler', '--help'])\nexcept SystemExit: pass")
        == []
    )


def test_help_does_not_import_torch_at_all():
    script = "import sys\nfrom delta_attn.cli import build_parser\nbuild_parser()\nprint('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
