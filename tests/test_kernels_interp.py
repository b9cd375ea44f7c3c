"""The Triton kernels' logic on CPU through Triton's interpreter (``TRITON_INTERPRET=1``).

Runs only where ``triton`` is importable and no CUDA device is present (CI has no triton, so these
skip there; the PyTorch reference is covered by the other test files). The interpreter must be on
before triton is first imported, so the checks run in a fresh process:
``TRITON_INTERPRET=1 python -m delta_attn.bench.check --tiny``. Tiny shapes and tiles, so every
path is exercised: several tiles per row block, split-K with merge, masked/unmasked loops, index
lists, fused and unfused Δ, chunked prefill with a carried state, TMA descriptors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: test_kernels_gpu runs instead")

QUICK = [
    "delta-stream-g4",
    "delta-d80-g8",
    "delta-gamma48-unfused",
    "delta-ema",
    "delta-topk",
    "delta-vs",
    "delta-maskmod",
    "dense-g4",
    "recompute-stream",
    "chunk-repeat",
    "chunk-ema",
    "prompt-longer",
    "unit",
]


def _run_tiny(names: list[str], extra: str = "") -> list[dict]:
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = "import sys; from delta_attn.bench import check; " + extra + "sys.exit(check.main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "--tiny", "--json", "--cases", ",".join(names)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(lines[-1])


def test_tiny_cases_in_interpreter():
    rows = _run_tiny(QUICK)
    assert len(rows) >= len(QUICK) - 1
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad


def test_tma_descriptors_in_interpreter():
    tma = (
        "from delta_attn.kernels import dense_rows, sparse; check.use_tiny_tiles(); "
        "[c.update(USE_TMA=True) for m in (dense_rows, sparse) for c in m.CONFIG.values()]; "
        "check.use_tiny_tiles = lambda: None; "
    )
    rows = _run_tiny(["delta-stream-g4", "delta-d80-g8", "delta-vs"], extra=tma)
    bad = [r for r in rows if not r["ok"]]
    assert rows and not bad, bad
