"""``delta-attn bench e2e`` on CPU (the tiny shape): the whole code path, its reports and its errors."""

from __future__ import annotations

import json

import pytest
import torch

from delta_attn.bench import e2e, e2e_options, e2e_report
from delta_attn.cli import main as cli_main

TINY = ["--device", "cpu", "--model-shape", "tiny", "--window", "32", "--sink", "4", "--gamma", "16"]


@pytest.mark.slow  # builds a model and runs 7 cells: ~10 s
def test_e2e_cpu_tiny_all_methods(tmp_path):
    out = tmp_path / "run"
    argv = [*TINY, "--lengths", "256", "--chunk-size", "0,64", "--warmup-length", "64", "--out", str(out)]
    assert cli_main(["bench", "e2e", *argv]) == 0
    res = json.loads((out / "results.json").read_text())
    assert (out / "results.md").exists() and (out / "plot.png").stat().st_size > 0
    meta = res["meta"]
    assert meta["warmup"]["done"] and meta["warmup"]["length"] == 64 and meta["layers"] == 2
    cells = {(c["method"], c["chunk"]): c for c in res["cells"]}
    assert set(cells) == {(m, c) for m in e2e_options.METHODS for c in (0, 64)} - {("dense", 64)}
    assert set(meta["warmup"]["cells_s"]) == {*e2e_options.METHODS, "sparse/c64", "delta/c64", "recompute/c64"}
    assert cells[("dense", 0)]["speedup_vs_dense"] == 1.0
    for m in ("sparse", "delta", "recompute"):
        one, chunked = cells[(m, 0)], cells[(m, 64)]
        assert one["ttft_s"] > 0 and one["tokens_per_s"] == pytest.approx(256 / one["ttft_s"])
        assert chunked["max_abs_diff_vs_one_shot"] < 1e-4 and chunked["first_token"] == one["first_token"]
        assert chunked["chunked_over_one_shot"] == pytest.approx(chunked["ttft_s"] / one["ttft_s"])
        assert one["finite"] and "speedup_vs_dense" in one
    md = (out / "results.md").read_text()
    assert "| 256 | delta | 64 |" in md and "Warm-up excluded" in md


def test_e2e_profile_splits_one_prefill_by_kernel_category(tmp_path):
    """--profile-length: one profiled one-shot prefill per method after the cells; the categories add up to the
    profiled device (here: CPU operator) time, and the report shows them."""
    out = tmp_path / "run"
    argv = [*TINY, "--lengths", "128", "--methods", "dense,delta", "--warmup-length", "32", "--profile-length", "96"]
    assert cli_main(["bench", "e2e", *argv, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["profiles"]) == {"dense", "delta"}
    for p in res["profiles"].values():
        assert p["n"] == 96 and p["device_ms"] > 0
        assert sum(p["categories_ms"].values()) == pytest.approx(p["device_ms"])
        assert p["categories_ms"]["matmul"] > 0  # the projections and the MLP
    assert res["profiles"]["dense"]["categories_ms"]["attention"] > 0  # SDPA (on CPU, Δ's reference path runs as
    # generic operators: matmul / index / elementwise)
    md = (out / "results.md").read_text()
    assert "Profile (torch.profiler, one one-shot prefill of 96 tokens" in md and "| delta |" in md


def test_kernel_category_names_real_kernels():
    from delta_attn.bench.profile import kernel_category

    assert kernel_category("_sparse_kernel") == "attention"
    assert kernel_category("_lambda_terms_kernel") == kernel_category("_lambda_scale_kernel") == "attention"  # λ=auto
    assert kernel_category("cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x128_4x1x1_kernel0_0") == "attention"
    assert kernel_category("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 64>>") == "attention"
    assert kernel_category("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1") == "matmul"
    assert kernel_category("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT") == "matmul"
    assert kernel_category("aten::addmm") == "matmul"
    assert kernel_category("Memcpy DtoD (Device -> Device)") == "copy"
    assert kernel_category("void at::native::elementwise_kernel<128, 4, direct_copy_kernel_cuda>") == "copy"
    assert kernel_category("void at::native::vectorized_elementwise_kernel<4, silu_kernel>") == "other"
    assert kernel_category("triton_red_fused__to_copy_mean_mul_pow_rsqrt_0") == "other"  # a fused RMSNorm


def test_profile_length_is_checked_before_any_model(monkeypatch, capsys):
    monkeypatch.setattr(e2e, "build_model", lambda *a, **k: pytest.fail("model built before the options were checked"))
    assert cli_main(["bench", "e2e", *TINY, "--profile-length", "lots"]) == 2
    assert "--profile-length" in capsys.readouterr().err


@pytest.mark.slow
def test_e2e_time_limit_oom_and_errors_are_recorded(tmp_path, monkeypatch):
    real = e2e.run_cell

    def fake(model, ids, method, chunk, *args):
        if method == "sparse" and ids.shape[1] >= 96:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        if (
            method == "delta" and chunk and args[-2] == "dynamic"
        ):  # (..., reps, cache, parallel)  # any other failure: recorded, the run goes on
            raise RuntimeError("no kernel for this shape")
        return real(model, ids, method, chunk, *args)

    monkeypatch.setattr(e2e, "run_cell", fake)
    out = tmp_path / "run"
    argv = [*TINY, "--lengths", "96,128", "--methods", "sparse,delta", "--layers", "1", "--out", str(out)]
    argv += ["--chunk-size", "0,32", "--chunk-methods", "delta", "--chunk-lengths", "128"]
    argv += ["--chunk-cache", "preallocated,dynamic"]
    assert e2e.main([*argv, "--no-warmup", "--warmup-length", "32"]) == 0
    cells = {(c["n"], *e2e_report.variant(c)): c for c in json.loads((out / "results.json").read_text())["cells"]}
    assert list(cells) == [
        (96, "sparse", 0, ""),
        (96, "delta", 0, ""),
        (128, "sparse", 0, ""),
        (128, "delta", 0, ""),
        (128, "delta", 32, "preallocated"),
        (128, "delta", 32, "dynamic"),
    ]
    assert cells[(96, "sparse", 0, "")]["error"].startswith("OOM")
    assert "shorter length" in cells[(128, "sparse", 0, "")]["skipped"]
    assert "ttft_s" in cells[(96, "delta", 0, "")] and "ttft_s" in cells[(128, "delta", 0, "")]
    assert cells[(128, "delta", 32, "preallocated")]["max_abs_diff_vs_one_shot"] < 1e-4
    assert cells[(128, "delta", 32, "dynamic")]["error"] == "error (RuntimeError): no kernel for this shape"
    assert "| 128 | delta | 32 (dynamic) |" in (out / "results.md").read_text()
    assert e2e.main([*argv, "--time-limit", "1e-9"]) == 0
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert all("time limit" in c["skipped"] for c in cells)


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--model-shape", "gpt-9"], "--model-shape"),
        (["--methods", "delta,flash"], "--methods"),
        (["--lengths", "12x"], "--lengths"),
        (["--chunk-size", "-1"], "--chunk-size"),
        (["--parallel", "tp"], "torchrun"),
        (["--parallel", "cp"], "torchrun"),
        (["--parallel", "pp"], "--parallel"),
        (["--layers", "3"], "has 2 layers"),
        (["--dense-backend", "math"], "--dense-backend"),
        (["--chunk-methods", "dense"], "--chunk-methods"),
        (["--chunk-cache", "static"], "--chunk-cache"),
    ],
)
def test_e2e_usage_errors_before_any_model(bad, message, monkeypatch, capsys):
    monkeypatch.setattr(e2e, "build_model", lambda *a, **k: pytest.fail("model built before the options were checked"))
    assert cli_main(["bench", "e2e", *TINY, *bad]) == 2
    assert message in capsys.readouterr().err


def parallel_rank(rank: int, world: int, mode: str, out: str, argv: list) -> dict:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    assert e2e.main([*argv, "--parallel", mode, "--out", out]) == 0
    return json.loads(open(os.path.join(out, "results.json")).read()) if rank == 0 else {}


@pytest.mark.slow  # two processes: ~15 s
def test_e2e_context_parallel_two_gloo_ranks(tmp_path):
    from ranks import run_ranks

    argv = [*TINY, "--lengths", "256", "--methods", "dense,delta", "--warmup-length", "64"]
    assert e2e.main([*argv, "--out", str(tmp_path / "one")]) == 0
    one = {c["method"]: c for c in json.loads((tmp_path / "one" / "results.json").read_text())["cells"]}
    res = run_ranks(parallel_rank, 2, "cp", str(tmp_path / "cp"), argv, timeout=240)[0]
    assert res["meta"]["parallel"] == "cp" and res["meta"]["ranks"] == 2
    cp = {c["method"]: c for c in res["cells"]}
    for m in ("dense", "delta"):  # the same model and prompt on every rank: the same first token as one process
        assert cp[m]["ttft_s"] > 0 and cp[m]["first_token"] == one[m]["first_token"]
    assert "Context parallel over 2 ranks" in (tmp_path / "cp" / "results.md").read_text()


@pytest.mark.slow  # two processes: ~15 s
def test_e2e_tensor_parallel_two_gloo_ranks(tmp_path):
    from ranks import run_ranks

    argv = [*TINY, "--lengths", "256", "--methods", "dense,delta", "--chunk-size", "0,64", "--warmup-length", "64"]
    assert e2e.main([*argv, "--out", str(tmp_path / "one")]) == 0
    one = {e2e_report.variant(c): c for c in json.loads((tmp_path / "one" / "results.json").read_text())["cells"]}
    argv += ["--tp-dir", str(tmp_path / "model")]
    res = run_ranks(parallel_rank, 2, "tp", str(tmp_path / "tp"), argv, timeout=240)[0]
    assert res["meta"]["parallel"] == "tp" and res["meta"]["ranks"] == 2 and res["meta"]["tp_size"] == 2
    tp = {e2e_report.variant(c): c for c in res["cells"]}
    assert set(tp) == set(one) == {("dense", 0, ""), ("delta", 0, ""), ("delta", 64, "preallocated")}
    for key, cell in tp.items():  # sharded by heads: the same first tokens as one process
        assert cell["ttft_s"] > 0 and cell["first_token"] == one[key]["first_token"]
    assert tp[("delta", 64, "preallocated")]["max_abs_diff_vs_one_shot"] < 1e-4
    assert not (tmp_path / "model").exists()  # the saved copy is removed
    assert "Tensor parallel over 2 ranks" in (tmp_path / "tp" / "results.md").read_text()
