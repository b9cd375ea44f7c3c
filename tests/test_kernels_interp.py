"""The Triton kernels' logic on CPU through Triton's interpreter (``TRITON_INTERPRET=1``).

Runs where ``triton`` is importable and no CUDA device is present: the CI machine too (the ``[dev]`` extra pins
triton 3.6.0), where a GPU would run ``test_kernels_gpu`` instead. The interpreter must be on
before triton is first imported, so the checks run in a fresh process:
``TRITON_INTERPRET=1 python -m delta_attn.bench.check --tiny --seed N`` (N from the ``seed`` fixture).
Tiny shapes and tiles, so every path is exercised: several tiles per row block, split-K with merge,
masked/unmasked loops, index lists, fused and unfused Δ, chunked prefill with a carried state, TMA
descriptors. Tested with triton 3.6.0 (the GPU image's); triton 3.9's interpreter rejects the kernels'
masks ("mask has unsupported dtype").
"""

from __future__ import annotations

import json

import pytest
import torch

from interpreted import run_interpreted

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
    "chunk-gqa-strided",
    "delta-hf-layout",
    "prompt-longer",
    "unit",
]


def _run_tiny(names: list[str], seed: int, kernel_config: str | None = None) -> list[dict]:
    args = ["--tiny", "--json", "--seed", str(seed), "--cases", ",".join(names)]
    if kernel_config:
        args += ["--kernel-config", kernel_config]
    return run_interpreted(["-m", "delta_attn.bench.check", *args], "[")


def test_tiny_cases_in_interpreter(seed):
    rows = _run_tiny(QUICK, seed)
    assert len(rows) >= len(QUICK) - 1
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad


VARIANTS = [  # Δ variants (docs/algorithm.md §13): λ fused (float, auto), unfused (filters, top-k: λ by the λ kernels
    # too), extra anchors
    "delta-scale0.5",
    "delta-scale0.5-abg",
    "delta-auto-global",
    "delta-auto-ema",
    "delta-extra0.25",
    "delta-extra0.25-linear-auto",
    "chunk-auto",
    "chunk-scale0.3-gqa",
    "delta-auto-d80-g8",
    "delta-auto-b2-gqa",
    "delta-auto-block",
    "delta-auto-topk",
    "chunk-auto-gqa",
    "chunk-auto-decay-gqa",
]


def test_delta_variants_in_interpreter(seed):
    rows = _run_tiny(VARIANTS, seed)
    assert sorted(r["name"] for r in rows if not r["name"].startswith("unit")) == sorted(VARIANTS)
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad


def test_tma_descriptors_in_interpreter(seed, tmp_path):
    from delta_attn.bench.check import TINY_TILES

    tma = {name: dict(cfg, USE_TMA=True) for name, cfg in TINY_TILES.items()}
    path = tmp_path / "tma.json"
    path.write_text(json.dumps(tma))
    rows = _run_tiny(
        ["delta-stream-g4", "delta-d80-g8", "delta-vs", "chunk-gqa-strided", "delta-hf-layout", "chunk-hf-layout-auto"],
        seed,
        kernel_config=str(path),
    )
    bad = [r for r in rows if not r["ok"]]
    assert rows and not bad, bad


def test_dense_rows_split_options_in_interpreter(seed, tmp_path):
    """The dense-rows schedule options (work items per SM, key chunk cap) split every tile into many
    chunks merged by log-sum-exp: the same results (GQA 4:1 and 2:1, head dim 24, strided chunked K/V, auto λ)."""
    from delta_attn.bench.check import TINY_TILES

    split = dict(TINY_TILES, dense=dict(TINY_TILES["dense"], ITEMS_PER_SM=64, MAX_CHUNK=32))
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split))
    rows = _run_tiny(["delta-d80-g8", "chunk-gqa-strided", "delta-auto-b2-gqa", "dense-g4"], seed, str(path))
    bad = [r for r in rows if not r["ok"]]
    assert rows and not bad, bad


def test_run_all_reports_each_case_as_it_ends(monkeypatch):
    """run_all hands each case's row to on_row in case order as it comes in (the GPU run prints it at once, so a
    call cut by its time limit still shows the finished cases), and returns the same rows."""
    import random

    from delta_attn.bench import check

    names = [f"case-{i}-{random.randrange(10**6)}" for i in range(random.randint(3, 7))]
    cases = [type("Case", (), {"name": n, "dtype": "bf16"})() for n in names]
    monkeypatch.setattr(check, "tiny_cases", lambda: cases)
    monkeypatch.setattr(check, "_worker", lambda job: {"name": job[0].name, "seed": job[3], "ok": True})
    seen = []
    rows = check.run_all("cpu", tiny=True, names=names, seed=5, on_row=seen.append)
    assert [r["name"] for r in seen] == names and seen == rows
    assert [r["seed"] for r in rows] == list(range(5, 5 + len(names)))
