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
    assert all(c["graphs_compiled"] == 0 for c in cells.values())  # eager: torch.compile never runs
    assert all(c["triton_compiled"] == {} for c in cells.values())  # recorded per cell (no Triton on the CPU path)
    assert "compiled during the timed cells" not in (out / "results.md").read_text()
    for m in ("sparse", "delta", "recompute"):
        one, chunked = cells[(m, 0)], cells[(m, 64)]
        assert one["ttft_s"] > 0 and one["tokens_per_s"] == pytest.approx(256 / one["ttft_s"])
        assert chunked["max_abs_diff_vs_one_shot"] < 1e-4 and chunked["first_token"] == one["first_token"]
        assert chunked["chunked_over_one_shot"] == pytest.approx(chunked["ttft_s"] / one["ttft_s"])
        assert one["finite"] and "speedup_vs_dense" in one
    md = (out / "results.md").read_text()
    assert "| 256 | delta | 64 |" in md and "Warm-up excluded" in md


@pytest.mark.slow  # compiles the tiny model's layers: ~20 s
def test_e2e_compile_runs_every_column_with_compiled_layers(tmp_path, monkeypatch):
    """--compile: the decoder layers compiled (here with the "aot_eager" backend: no code generation on the CI
    machine), dense's SDPA and Δ's attention eager inside them; the results say so, and the cells agree with each
    other as without it (chunked = one-shot)."""
    from delta_attn import compiled

    asked = []

    def compile_layers(model, backend):
        asked.append(backend)
        return compiled.compile_layers(model, backend="aot_eager")

    monkeypatch.setattr(e2e, "compile_layers", compile_layers)
    torch._dynamo.reset()
    out = tmp_path / "run"
    argv = [*TINY, "--lengths", "200", "--methods", "dense,delta", "--chunk-size", "0,64", "--reps", "2"]
    assert cli_main(["bench", "e2e", *argv, "--warmup-length", "64", "--compile", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["compiled"] and res["meta"]["warmup"]["dense_pick_with_compile_s"] is not None
    assert asked == ["inductor"] and res["meta"]["compile_backend"] == "inductor"  # --compile alone: ours
    cells = {(c["method"], c["chunk"]): c for c in res["cells"]}
    assert set(cells) == {("dense", 0), ("delta", 0), ("delta", 64)}
    assert all(c["finite"] for c in cells.values())
    assert cells[("delta", 64)]["max_abs_diff_vs_one_shot"] < 1e-4
    # the warm-up (64 tokens = the tiny shape's hidden size: the duck-sizing case) compiled every length's graphs
    assert {key: c["graphs_compiled"] for key, c in cells.items()} == dict.fromkeys(cells, 0)
    md = (out / "results.md").read_text()
    assert "Decoder layers compiled" in md and "No graph compiled during the timed cells." in md


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
        (["--kernel-config", "/nonexistent/best_128K.json"], "--kernel-config"),
        (["--compile", "--parallel", "cp"], "--compile runs on one device"),
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


def parallel_rank_timing_backends(rank: int, world: int, mode: str, out: str, argv: list) -> dict:
    """parallel_rank with the per-length SDPA timing on (off CUDA it is off: here flash runs, cuDNN and efficient
    refuse)."""
    e2e.dense_backend_timer = e2e.attention_timer
    return parallel_rank(rank, world, mode, out, argv)


@pytest.mark.slow  # two processes: ~15 s
def test_e2e_tensor_parallel_two_gloo_ranks(tmp_path):
    from ranks import run_ranks

    argv = [*TINY, "--lengths", "256", "--methods", "dense,delta", "--chunk-size", "0,64", "--warmup-length", "64"]
    assert e2e.main([*argv, "--out", str(tmp_path / "one")]) == 0
    one = {e2e_report.variant(c): c for c in json.loads((tmp_path / "one" / "results.json").read_text())["cells"]}
    argv += ["--tp-dir", str(tmp_path / "model")]
    res = run_ranks(parallel_rank_timing_backends, 2, "tp", str(tmp_path / "tp"), argv, timeout=240)[0]
    assert res["meta"]["parallel"] == "tp" and res["meta"]["ranks"] == 2 and res["meta"]["tp_size"] == 2
    tp = {e2e_report.variant(c): c for c in res["cells"]}
    assert set(tp) == set(one) == {("dense", 0, ""), ("delta", 0, ""), ("delta", 64, "preallocated")}
    for key, cell in tp.items():  # sharded by heads: the same first tokens as one process
        assert cell["ttft_s"] > 0 and cell["first_token"] == one[key]["first_token"]
    assert tp[("delta", 64, "preallocated")]["max_abs_diff_vs_one_shot"] < 1e-4
    assert not (tmp_path / "model").exists()  # the saved copy is removed
    # dense picked its backend from one SDPA call on each rank's local heads (tiny: 4 query, 2 KV heads over 2 ranks)
    assert res["meta"]["dense_backend_timed_call"]["q_heads"] == 2
    assert res["meta"]["dense_backend_timed_call"]["kv_heads"] == 1
    timings = tp[("dense", 0, "")]["dense_backend_timings"]
    assert tp[("dense", 0, "")]["dense_backend"] == "flash" and timings["flash"] > 0
    assert timings["cudnn"].startswith("refused") and timings["efficient"].startswith("refused")
    assert "Tensor parallel over 2 ranks" in (tmp_path / "tp" / "results.md").read_text()


# ---- the dense baseline's SDPA backend, picked per length ----------------------------------------


def test_fastest_backend_records_refusals_and_raises_when_all_refuse():
    times = dict(zip(("cudnn", "flash"), torch.rand(2).add(0.01).tolist()))

    def time_call(be):
        if be == "efficient":
            raise RuntimeError("No available kernel.\nmore text")
        return times[be]

    best, timings = e2e.fastest_backend(time_call, ("cudnn", "flash", "efficient"))
    assert best == min(times, key=times.get)
    assert timings["cudnn"] == times["cudnn"] and timings["flash"] == times["flash"]
    assert timings["efficient"] == "refused: No available kernel."
    with pytest.raises(RuntimeError, match="no SDPA backend runs"):
        e2e.fastest_backend(time_call, ("efficient",))


def test_attention_timer_makes_the_models_own_sdpa_call(monkeypatch):
    """The timed call reaches torch's SDPA with what the model's forward passes it at the same length: the shapes
    (GQA: 4 query heads, 2 KV heads), the memory layout (q a transposed view), scale, causality and enable_gqa; a
    backend that refuses raises (the picker records it as refused)."""
    model = e2e.build_model("tiny", 1, 512, "cpu", torch.float32, int(torch.randint(0, 1000, ()).item()))
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def spy(q, k, v, **kwargs):
        calls.append(([t.shape for t in (q, k, v)], [t.stride() for t in (q, k, v)], kwargs))
        return real_sdpa(q, k, v, **kwargs)

    timer = e2e.attention_timer(model, torch.device("cpu"))
    n = int(torch.randint(40, 200, ()).item())
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        model(input_ids=torch.randint(0, 256, (1, n)), use_cache=True, logits_to_keep=1)
    assert len(calls) == 1  # one layer
    forward_call = calls.pop()
    assert forward_call[0] == [(1, 4, n, 16), (1, 2, n, 16), (1, 2, n, 16)]
    assert timer("flash", n) > 0 and timer("math", n) > 0
    assert len(calls) == 4  # an untimed and a timed call per backend
    for call in calls:
        assert call == forward_call
    assert forward_call[2]["is_causal"] is True and forward_call[2]["enable_gqa"] is True
    with pytest.raises(RuntimeError):  # no efficient-attention kernel on the CPU
        timer("efficient", n)


def _traced_prefill(monkeypatch, run_backend):
    """Replace e2e.prefill by one that records (method, tokens, SDPA backend) and runs the real prefill with
    ``run_backend(backend)`` (the CPU has no cuDNN or efficient kernels)."""
    real, seen = e2e.prefill, []

    def traced(model, ids, method, chunk, delta_config, sdpa_backend, *args):
        seen.append((method, ids.shape[1], sdpa_backend))
        return real(model, ids, method, chunk, delta_config, run_backend(sdpa_backend), *args)

    monkeypatch.setattr(e2e, "prefill", traced)
    return seen


def test_dense_runs_on_the_fastest_backend_at_each_length(tmp_path, monkeypatch, capsys):
    """flash is the fastest at 64 tokens but slower than cuDNN at 128: 128's dense cell must not run on flash;
    efficient refuses everywhere: recorded, never used. The cells, meta, Markdown and summary carry the backends."""
    short, long_ = torch.rand(2).add(0.1).tolist()
    at = {  # seconds of one attention call, (backend, length) -> time; the order flips between the lengths
        ("flash", 64): short,
        ("cudnn", 64): short * 1.5,
        ("flash", 128): long_ * 1.5,
        ("cudnn", 128): long_,
    }
    asked = []

    def fake_timer(backend, n):
        asked.append((backend, n))
        if backend == "efficient":
            raise RuntimeError("No available kernel. Aborting execution.")
        return at[(backend, n)]

    monkeypatch.setattr(e2e, "dense_backend_timer", lambda model, device, parallel: fake_timer)
    seen = _traced_prefill(monkeypatch, lambda backend: None)
    out = tmp_path / "run"
    argv = [*TINY, "--layers", "1", "--lengths", "64,128", "--methods", "dense,delta", "--warmup-length", "32"]
    assert e2e.main([*argv, "--out", str(out)]) == 0
    assert sorted(asked) == sorted((be, n) for be in ("cudnn", "flash", "efficient") for n in (64, 128))
    dense_runs = {n: be for m, n, be in seen if m == "dense" and n != 32}
    assert dense_runs == {64: "flash", 128: "cudnn"}
    res = json.loads((out / "results.json").read_text())
    cells = {(c["n"], c["method"]): c for c in res["cells"]}
    for n, best in dense_runs.items():
        cell = cells[(n, "dense")]
        assert cell["dense_backend"] == best and "ttft_s" in cell
        assert cell["dense_backend_timings"]["flash"] == at[("flash", n)]
        assert cell["dense_backend_timings"]["cudnn"] == at[("cudnn", n)]
        assert cell["dense_backend_timings"]["efficient"].startswith("refused: No available kernel")
        assert "dense_backend" not in cells[(n, "delta")]
    meta = res["meta"]
    assert meta["dense_backend_choice"] == "auto" and meta["dense_backend_by_length"] == {"64": "flash", "128": "cudnn"}
    assert meta["dense_backend"].startswith("the fastest SDPA backend at each length")
    assert meta["dense_backend"].endswith("64 flash, 128 cudnn")
    md = (out / "results.md").read_text()
    assert "Dense (SDPA): the fastest SDPA backend at each length (one attention call" in md
    assert f"| 128 | dense | one-shot | {cells[(128, 'dense')]['ttft_s']:.3f} |" in md
    assert f"cudnn (attention alone: cudnn {long_:.4g} s, flash {long_ * 1.5:.4g} s, efficient refused) |" in md
    printed = capsys.readouterr().out
    assert "dense SDPA backend: 64 flash, 128 cudnn" in printed  # the summary
    assert any(line.strip().startswith("128 dense") and "on cudnn" in line for line in printed.splitlines())


def test_forced_dense_backend_runs_at_every_length_untimed(tmp_path, monkeypatch):
    monkeypatch.setattr(e2e, "dense_backend_timer", lambda *a: pytest.fail("--dense-backend flash timed backends"))
    seen = _traced_prefill(monkeypatch, lambda backend: backend)  # the CPU runs flash
    out = tmp_path / "run"
    argv = [*TINY, "--layers", "1", "--lengths", "48,96,128", "--methods", "dense,delta", "--warmup-length", "32"]
    assert e2e.main([*argv, "--dense-backend", "flash", "--out", str(out)]) == 0
    dense = [(n, be) for m, n, be in seen if m == "dense"]
    assert [n for n, _ in dense] == [32, 48, 96, 128] and {be for _, be in dense} == {"flash"}
    res = json.loads((out / "results.json").read_text())
    for c in res["cells"]:
        if c["method"] == "dense":
            assert c["dense_backend"] == "flash" and "dense_backend_timings" not in c and c["ttft_s"] > 0
    forced = "flash at every length (--dense-backend flash): 48 flash, 96 flash, 128 flash"
    assert res["meta"]["dense_backend"] == forced
    assert res["meta"]["dense_backend_choice"] == "flash"


def test_e2e_times_the_real_attention_call_per_length_on_cpu(tmp_path, monkeypatch):
    """The per-length timing through the whole run, the real timer (on CPU flash runs, cuDNN and efficient refuse):
    the dense cells run on flash and record the refusals; meta records the call it timed."""
    monkeypatch.setattr(e2e, "dense_backend_timer", e2e.attention_timer)
    out = tmp_path / "run"
    argv = [*TINY, "--layers", "1", "--lengths", "48,80", "--methods", "dense", "--warmup-length", "32"]
    assert e2e.main([*argv, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    for c in res["cells"]:
        assert c["dense_backend"] == "flash" and c["ttft_s"] > 0 and c["dense_backend_timings"]["flash"] > 0
        assert c["dense_backend_timings"]["cudnn"].startswith("refused")
        assert c["dense_backend_timings"]["efficient"].startswith("refused")
    call = res["meta"]["dense_backend_timed_call"]
    assert (call["q_heads"], call["kv_heads"], call["head_dim"]) == (4, 2, 16)
    assert call["layouts"]["q"] == [0, 2, 1, 3]  # q: a transposed view of the projection (B, N, H, d)
    assert res["meta"]["dense_backend_by_length"] == {"48": "flash", "80": "flash"}


def test_per_length_timer_unavailable_falls_back_to_the_warm_up_pick_and_says_so(tmp_path, monkeypatch):
    def refuse(*a):
        raise ValueError("the dense model passes SDPA an attention mask")

    monkeypatch.setattr(e2e, "dense_backend_timer", refuse)
    monkeypatch.setattr(e2e, "pick_dense_backend", lambda *a: ("efficient", {"efficient": 0.5}))
    seen = _traced_prefill(monkeypatch, lambda backend: None)
    out = tmp_path / "run"
    argv = [*TINY, "--layers", "1", "--lengths", "64", "--methods", "dense", "--warmup-length", "32"]
    assert e2e.main([*argv, "--out", str(out)]) == 0
    assert [be for m, n, be in seen if m == "dense"] == ["efficient", "efficient"]
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert "whole-model forward at the warm-up length for every length" in meta["dense_backend"]
    assert "attention mask" in meta["dense_backend"] and meta["warmup"]["dense_backend"] == "efficient"


def _dense_cell(n, t, backend=None, **extra):
    cell = dict(n=n, label=e2e.fmt_length(n), method="dense", chunk=0, cache="", ttft_s=t, **extra)
    if backend:
        cell["dense_backend"] = backend
    return cell


def test_dense_fit_uses_dense_cells_only_and_names_their_backends():
    a, b = (torch.rand(2) + 0.5).tolist()
    a, b = a * 1e-5, b * 1e-10
    lengths = [32768, 65536, 131072]
    backends = ["cudnn", "flash", "cudnn"]
    cells = [_dense_cell(n, a * n + b * n * n, be) for n, be in zip(lengths, backends)]
    cells += [
        dict(n=131072, label="128K", method="delta", chunk=0, cache="", ttft_s=0.1),  # not a dense point
        dict(n=262144, label="256K", method="dense", chunk=0, cache="", error="OOM: …"),  # not measured
        dict(n=65536, label="64K", method="delta", chunk=16384, cache="preallocated", ttft_s=9.0),
    ]
    fit = e2e_report.dense_fit(cells)
    assert fit["lengths"] == lengths and fit["backends"] == backends
    assert fit["a"] == pytest.approx(a, rel=1e-6) and fit["b"] == pytest.approx(b, rel=1e-6)
    assert e2e_report.dense_fit_at(fit, 2**20) == pytest.approx(a * 2**20 + b * 2**40, rel=1e-6)
    assert fit["note"] == (
        "N² fit of 3 measured dense lengths, on different SDPA backends (the fastest at each length): "
        "32K cudnn, 64K flash, 128K cudnn"
    )
    same = e2e_report.dense_fit([_dense_cell(n, a * n + b * n * n, "cudnn") for n in lengths])
    assert same["note"] == "N² fit of 3 measured dense lengths, all on cudnn"
    assert e2e_report.dense_fit([_dense_cell(n, 1.0) for n in lengths])["note"] == "N² fit of 3 measured dense lengths"
    assert e2e_report.dense_fit(cells[:1] + cells[3:]) is None  # one measured dense length


def test_kernel_config_file_runs_the_model_with_those_launch_configs_then_restores_them(tmp_path, monkeypatch):
    """--kernel-config: the whole model's forward runs with the file's launch configs (the model passes none
    itself); the tables are back to the shipped ones afterwards, and the results record the file's contents."""
    pytest.importorskip("triton")
    from delta_attn.kernels import dense_rows, sparse

    shipped = (dict(dense_rows.CONFIG["half"]), dict(sparse.CONFIG["half"]))
    wanted = {"dense": dict(shipped[0], num_stages=2), "sparse": dict(shipped[1], BM=128, num_warps=8)}
    path = tmp_path / "best_128K.json"
    path.write_text(json.dumps(wanted))
    seen = []
    real_run = e2e.run_e2e

    def spy(args, opts):
        seen.append((dict(dense_rows.CONFIG["half"]), dict(sparse.CONFIG["half"])))
        return real_run(args, opts)

    monkeypatch.setattr(e2e, "run_e2e", spy)
    out = tmp_path / "run"
    argv = [*TINY, "--lengths", "128", "--methods", "delta", "--warmup-length", "64", "--reps", "1"]
    assert cli_main(["bench", "e2e", *argv, "--kernel-config", str(path), "--out", str(out)]) == 0
    assert seen == [(wanted["dense"], wanted["sparse"])]
    assert (dense_rows.CONFIG["half"], sparse.CONFIG["half"]) == shipped
    assert json.loads((out / "results.json").read_text())["meta"]["kernel_config"] == wanted


def test_launch_configs_restore_after_an_error_and_refuse_unknown_keys():
    pytest.importorskip("triton")
    from delta_attn.kernels import dense_rows, sparse
    from delta_attn.kernels.prefill import launch_configs

    shipped = (dict(dense_rows.CONFIG["half"]), dict(sparse.CONFIG["half"]))
    with pytest.raises(RuntimeError, match="inside"):
        with launch_configs({"sparse": dict(shipped[1], num_stages=2)}):
            assert sparse.CONFIG["half"]["num_stages"] == 2 and dense_rows.CONFIG["half"] == shipped[0]
            raise RuntimeError("inside")
    assert (dense_rows.CONFIG["half"], sparse.CONFIG["half"]) == shipped
    with pytest.raises(ValueError, match="unknown keys"):
        with launch_configs({"rows": {}}):
            pass
