"""Running kernel code in a fresh process under Triton's interpreter, for the CPU tests.

The interpreter must be on before triton is first imported, so each check runs ``python ARGS...`` with
``TRITON_INTERPRET=1`` and prints its results as JSON on a line of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_interpreted(args: list[str], marker: str, *, timeout: int = 900):
    """The JSON after ``marker`` on the last stdout line that starts with it (the marker kept as the JSON's first
    character when it is one, e.g. ``"["``); fails with the output's tail when no line has it."""
    proc = subprocess.run(
        [sys.executable, *args],
        env=dict(os.environ, TRITON_INTERPRET="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(marker)]
    assert lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    payload = lines[-1] if marker in "[{" else lines[-1][len(marker) :]
    return json.loads(payload)
