"""Every launch configuration the H100/H200 sweep (`python -m delta_attn.bench.launch`) times must compile for
sm_90 without register spills and within one SM's shared memory: a candidate that spills would be timed on its
slow path and lose for a reason the sweep does not show. Compiled ahead of time with the ptxas that ships with
Triton; no GPU needed."""

import pytest
import torch

pytest.importorskip("triton")

from delta_attn.bench.launch import DENSE_CANDIDATES, SPARSE_CANDIDATES, variants  # noqa: E402
from delta_attn.bench.sm90_report import capture_launches, report  # noqa: E402
from delta_attn.config import DeltaConfig  # noqa: E402
from delta_attn.kernels import prefill as pf  # noqa: E402

SM90_SHARED_PER_BLOCK = 227 * 1024  # the opt-in maximum of one thread block on H100 / H200


def test_variants_pair_every_candidate():
    names = [v[0].split("|") for v in variants()]
    assert {d for d, _ in names} == set(DENSE_CANDIDATES)
    assert {s for _, s in names} == set(SPARSE_CANDIDATES)
    for cfg in SPARSE_CANDIDATES.values():  # the fused Δ epilogue needs γ = 64 to divide a tile's positions
        assert (cfg["BM"] // cfg.get("HP", 1)) % 64 == 0


@pytest.mark.parametrize("name,dense,sparse", list(variants()), ids=[v[0] for v in variants()])
def test_candidate_compiles_for_sm90_without_spills(monkeypatch, name, dense, sparse):
    monkeypatch.setattr(pf, "_INTERPRET", True)  # host code takes CPU tensors; launches are only recorded
    n, d = 4096, 128
    q = torch.randn(1, 8, n, d, dtype=torch.bfloat16)
    k, v = (torch.randn(1, 2, n, d, dtype=torch.bfloat16) for _ in range(2))
    configs = {"dense": dict(dense), "sparse": dict(sparse)}
    cfg = DeltaConfig(window=1024)

    def calls():
        for mode in ("delta", "sparse"):
            pf.triton_prefill(q, k, v, cfg.replace(mode=mode), scale=d**-0.5, prompt_len=n, kernel_configs=configs)

    rows = [r for r in report(capture_launches(calls)) if r["kernel"] in ("_dense_rows_kernel", "_sparse_kernel")]
    assert {r["kernel"] for r in rows} == {"_dense_rows_kernel", "_sparse_kernel"}
    assert len([r for r in rows if r["kernel"] == "_sparse_kernel"]) == 2  # fused Δ and plain epilogues
    for r in rows:
        assert r["stack"] == 0, f"{name}: {r['kernel']} spills registers ({r})"
        assert r["smem_meta"] <= SM90_SHARED_PER_BLOCK, f"{name}: {r['kernel']} needs {r['smem_meta']} B of smem"
        assert r["wgmma"], f"{name}: {r['kernel']} does not use Hopper's warpgroup MMA"
