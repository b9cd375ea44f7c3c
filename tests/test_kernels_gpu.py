"""Triton backend on a CUDA GPU against the float64 oracle (skipped without CUDA).

The cases live in :mod:`delta_attn.bench.check` (also run by ``python -m delta_attn.bench.check`` on
the GPU machine): every mode × base × interp, head dims 64/80/128, GQA 1:1…8:1, batch 2, lengths
that are not multiples of the tile or γ, chunked prefill with q_start > 0 and a 1-row chunk.
Rule: kernel error ≤ 2 × the error of the PyTorch reference computing in the same dtype.
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="interpreter mode: see test_kernels_interp"),
]

from delta_attn.bench.check import gpu_cases  # noqa: E402  (no triton import here)

CASES = {c.name: c for c in gpu_cases()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_against_oracle(name, seed):
    from delta_attn.bench.check import run_case

    r = run_case(CASES[name], "cuda", seed=seed)
    assert r["finite"], f"{name}: non-finite output (unwritten rows?)"
    assert r["ok"], f"{name}: kernel error {r['err_kernel']:.3e} > 2 × reference error {r['err_ref']:.3e}"


def test_each_kernel_alone(seed):
    from delta_attn.bench.check import kernel_unit_checks

    for r in kernel_unit_checks("cuda", torch.bfloat16, seed=seed):
        assert r["ok"], f"{r['name']}: error {r['err_kernel']:.3e} vs reference {r['err_ref']:.3e}"


def test_dispatch_and_left_pad(seed):
    """delta_attention(backend='triton') with per-sequence left padding matches the reference backend."""
    from delta_attn import DeltaConfig, delta_attention

    q = torch.randn(2, 8, 700, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 2, 700, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(2, 2, 700, 64, device="cuda", dtype=torch.bfloat16)
    cfg = DeltaConfig(sink=4, window=128, gamma=32)
    out = delta_attention(q, k, v, cfg.replace(backend="triton"), left_pad=[0, 37])
    ref = delta_attention(q.double(), k.double(), v.double(), cfg.replace(backend="reference"), left_pad=[0, 37])
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert torch.isfinite(out).all() and err < 1e-2


def test_no_kv_expansion_in_memory(seed):
    """Peak memory of a Δ call stays below what repeating K/V per query head would need."""
    from delta_attn import DeltaConfig
    from delta_attn.kernels import triton_prefill

    n, hq, hkv, d = 65536, 32, 8, 128
    q = torch.randn(1, hq, n, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, hkv, n, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, hkv, n, d, device="cuda", dtype=torch.bfloat16)
    cfg = DeltaConfig()
    triton_prefill(q, k, v, cfg, scale=d**-0.5, prompt_len=n)  # compile
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = triton_prefill(q, k, v, cfg, scale=d**-0.5, prompt_len=n)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    expanded = 2 * (hq - hkv) * n * d * 2
    assert extra < out.numel() * out.element_size() + expanded // 4
    assert torch.isfinite(out).all()
