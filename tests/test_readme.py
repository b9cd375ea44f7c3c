"""Every ```python block of README.md runs as written (issue 18: the HF snippet used an undefined ``prompt``
and no chat template, and continued a chunked prefill the wrong way).

The blocks run in order in one fresh interpreter, as a reader would paste them one after the other (a
later block may use an earlier one's imports), on CPU with the bundled SmolLM2. A block is left out only
when its first line says it needs a GPU, a running server or torchrun, and that it is not run here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"^# needs (a GPU|a running server|torchrun)\b.*: not run by tests/test_readme\.py$")


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_readme_has_python_blocks_and_marks_the_ones_not_run():
    blocks = python_blocks()
    skipped = [b.splitlines()[0] for b in blocks if SKIP.match(b.splitlines()[0])]
    assert len(blocks) >= 5 and len(skipped) == 2, skipped  # the torchrun and the openai-client blocks
    for block in blocks:  # the old continuation (it prefills the prompt again on top of the cache) is gone
        assert "past_key_values" not in block, block


def test_every_python_block_runs_as_written(tmp_path):
    blocks = [b for b in python_blocks() if not SKIP.match(b.splitlines()[0])]
    script = "".join(f"print('--- README block {i}', flush=True)\n{b}\n" for i, b in enumerate(blocks))
    (tmp_path / "readme_blocks.py").write_text(script, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, str(tmp_path / "readme_blocks.py")],
        cwd=tmp_path,
        env={
            "OMP_WAIT_POLICY": "PASSIVE",  # as the delta-attn command sets it: no spinning on shared cores
            **os.environ,
            "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert out.stdout.count("--- README block") == len(blocks)
    # the HF block: the chat template makes the instruct model answer, and the continuation of the chunked
    # prefill gives the same reply as one-shot generate
    hf = out.stdout.split("--- README block")[-1].splitlines()[1:]
    replies = [line for line in hf if line.strip()]
    assert len(replies) == 2 and "Paris" in replies[0] and replies[0] == replies[1], out.stdout[-2000:]
