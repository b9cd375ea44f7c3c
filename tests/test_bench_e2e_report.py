"""``delta-attn bench e2e-report`` on CPU: two real tiny ``bench e2e`` runs merged into one report, dense's fit and
Δ's floor line checked against the cost model, and the runs it must refuse."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from delta_attn.bench import e2e_report
from delta_attn.cli import main as cli_main
from delta_attn.config import DeltaConfig
from delta_attn.cost import prefill_cost

TINY = ["--device", "cpu", "--model-shape", "tiny", "--window", "32", "--sink", "4", "--gamma", "16"]
TINY_CONFIG = dict(window=32, sink=4, gamma=16, sparse="streaming")
TINY_HEADS, TINY_HEAD_DIM, TINY_LAYERS = 4, 16, 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real runs: dense + Δ one-shot at 128 and 256 tokens, and Δ chunked (64) alone at 512."""
    root = tmp_path_factory.mktemp("e2e")
    short, long_ = root / "short", root / "long"
    argv = [*TINY, "--warmup-length", "64", "--reps", "2"]
    both = ["--lengths", "128,256", "--methods", "dense,delta"]
    assert cli_main(["bench", "e2e", *argv, *both, "--out", str(short)]) == 0
    chunked = ["--lengths", "512", "--methods", "delta", "--chunk-size", "64", "--chunk-methods", "delta"]
    assert cli_main(["bench", "e2e", *argv, *chunked, "--out", str(long_)]) == 0
    return short, long_


def copy_run(src, dst, edit=None):
    """A copy of a run's directory, its results.json changed by ``edit(res)``."""
    shutil.copytree(src, dst)
    res = json.loads((dst / "results.json").read_text())
    if edit:
        edit(res)
    (dst / "results.json").write_text(json.dumps(res))
    return dst


def independent_floor(a: float, b: float, n: int) -> float:
    """a·N + b·N² · (Δ attention FLOPs / dense's), from the cost model, every layer's heads."""
    config = DeltaConfig(**TINY_CONFIG)
    dense = prefill_cost(config.replace(mode="dense"), n).flops(TINY_HEAD_DIM, TINY_HEADS) * TINY_LAYERS
    delta = prefill_cost(config.replace(mode="delta"), n).flops(TINY_HEAD_DIM, TINY_HEADS) * TINY_LAYERS
    return a * n + b * n * n * delta / dense


@pytest.mark.slow  # two tiny bench e2e runs (module fixture): ~15 s
def test_two_runs_merge_into_one_report_over_every_length(runs, tmp_path, capsys):
    short, long_ = runs
    out = tmp_path / "merged"
    # the long run by its results.json file, the short one by its directory
    inputs = [str(short), str(long_ / "results.json")]
    assert cli_main(["bench", "e2e-report", "--inputs", *inputs, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    ran = [json.loads((d / "results.json").read_text()) for d in (short, long_)]
    keys = [(c["n"], *e2e_report.variant(c)) for c in res["cells"]]
    assert keys == [
        (128, "dense", 0, ""),
        (128, "delta", 0, ""),
        (256, "dense", 0, ""),
        (256, "delta", 0, ""),
        (512, "delta", 64, "preallocated"),
    ]
    by_key = dict(zip(keys, res["cells"]))
    for run_no, run in enumerate(ran, 1):  # every cell comes back with its times, tagged with its run
        for c in run["cells"]:
            merged = by_key[(c["n"], *e2e_report.variant(c))]
            assert merged["ttft_s"] == c["ttft_s"] and merged["times_s"] == c["times_s"] and merged["run"] == run_no
    for n in (128, 256):  # measured ratios, as in the run itself
        assert by_key[(n, "delta", 0, "")]["speedup_vs_dense"] == pytest.approx(
            by_key[(n, "dense", 0, "")]["ttft_s"] / by_key[(n, "delta", 0, "")]["ttft_s"]
        )
    fit = res["dense_fit"]
    assert fit["lengths"] == [128, 256]
    for n in (128, 256):  # two lengths, two coefficients: the fit goes through both points
        assert e2e_report.dense_fit_at(fit, n) == pytest.approx(by_key[(n, "dense", 0, "")]["ttft_s"], rel=1e-6)
    assert "speedup_vs_dense" not in by_key[(512, "delta", 64, "preallocated")]  # no dense ran at 512
    meta = res["meta"]
    assert [i["command"] for i in meta["inputs"]] == [r["meta"]["command"] for r in ran]
    assert meta["inputs"][1]["path"] == str(long_ / "results.json") and meta["merge_notes"] == []
    assert meta["attention"] == dict(heads=TINY_HEADS, kv_heads=2, head_dim=TINY_HEAD_DIM)
    assert (out / "plot.png").stat().st_size > 0
    md = (out / "results.md").read_text()
    assert "| 512 | delta | 64 |" in md and "| 256 | dense | one-shot |" in md
    assert "Run 1: Warm-up excluded" in md and "Run 2: Warm-up excluded" in md
    # the floor curve the plot draws, at lengths the runs never measured too
    ns = [128, 200, 256, 384, 512]
    got = e2e_report.floor_curve(fit, meta, ns)
    assert got == pytest.approx([independent_floor(fit["a"], fit["b"], n) for n in ns], rel=1e-12)
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow
def test_floor_line_equals_the_formula_from_the_fit_and_the_cost_model(runs, tmp_path):
    """Dense times set to a·N + b·N² with fresh random positive a, b (the tiny CPU model's own times are overhead, a
    fit of them may have a negative term): the fit recovers a and b, and the floor in results.json and results.md is
    a·N + b·N² · (Δ FLOPs / dense FLOPs) from the cost model at every length."""
    a, b = (torch.rand(2, dtype=torch.float64) + 0.5).tolist()
    a, b = a * 1e-4, b * 1e-6

    def set_dense(res):
        for c in res["cells"]:
            if c["method"] == "dense":
                c["ttft_s"] = a * c["n"] + b * c["n"] ** 2

    short = copy_run(runs[0], tmp_path / "short", set_dense)
    out = tmp_path / "merged"
    assert cli_main(["bench", "e2e-report", "--inputs", str(short), str(runs[1]), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["dense_fit"]["a"] == pytest.approx(a, rel=1e-9) and res["dense_fit"]["b"] == pytest.approx(b, rel=1e-9)
    assert [row["n"] for row in res["floor"]] == [128, 256, 512]
    for row in res["floor"]:
        n = row["n"]
        assert row["floor_s"] == pytest.approx(independent_floor(a, b, n), rel=1e-9)
        assert row["dense_fit_s"] == pytest.approx(a * n + b * n * n, rel=1e-9)
        assert 0 < row["delta_flops"] <= row["dense_flops"]
    assert res["floor"][-1]["delta_flops"] < res["floor"][-1]["dense_flops"]  # 512 tokens: beyond Δ's exact tail
    at_512 = next(c for c in res["cells"] if c["n"] == 512)
    # no dense ran at 512: only the fit's ratio, under its own name
    assert "speedup_vs_dense" not in at_512
    assert at_512["speedup_vs_dense_fit"] == pytest.approx((a * 512 + b * 512**2) / at_512["ttft_s"], rel=1e-9)
    md = (out / "results.md").read_text()
    assert f"| 512 | {a * 512 + b * 512**2:.3f} |" in md and f"{independent_floor(a, b, 512):.3f} |" in md
    assert f"| 512 | dense | one-shot | {a * 512 + b * 512**2:.3f} **extrapolated** |" in md
    assert f"| {at_512['speedup_vs_dense_fit']:.2f} (extrapolated) |" in md


@pytest.mark.slow
def test_a_later_run_replaces_an_identical_cell_and_says_so(runs, tmp_path, capsys):
    def faster(res):
        for c in res["cells"]:
            c["ttft_s"] = c["ttft_s"] / 2

    again = copy_run(runs[0], tmp_path / "again", faster)
    out = tmp_path / "merged"
    assert cli_main(["bench", "e2e-report", "--inputs", str(runs[0]), str(again), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    first = json.loads((runs[0] / "results.json").read_text())["cells"]
    assert [c["ttft_s"] for c in res["cells"]] == [c["ttft_s"] / 2 for c in first]
    assert {c["run"] for c in res["cells"]} == {2}
    printed = capsys.readouterr().out
    assert "note: 128 dense: run 2 (" in printed and "replaces run 1's cell" in printed
    assert "run 2" in (out / "results.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "field, value",
    [("device", "NVIDIA H200"), ("layers", 3), ("delta", dict(TINY_CONFIG, gamma=64)), ("kernel_config", {"x": 1})],
)
def test_runs_of_another_device_model_or_config_are_refused(runs, tmp_path, capsys, field, value):
    other = copy_run(runs[1], tmp_path / "other", lambda res: res["meta"].__setitem__(field, value))
    out = tmp_path / "merged"
    assert cli_main(["bench", "e2e-report", "--inputs", str(runs[0]), str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"meta field {field!r} differs" in err and repr(value) in err
    assert not out.exists()  # nothing written


def test_a_missing_input_is_a_usage_error(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert cli_main(["bench", "e2e-report", "--inputs", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"--inputs {missing}: no such file or directory" in err
    (tmp_path / "empty").mkdir()
    assert cli_main(["bench", "e2e-report", "--inputs", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "no results.json in it" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


TINY_REPORT_META = dict(  # what markdown() reads of a run's meta
    model_shape="tiny shape",
    layers=TINY_LAYERS,
    layers_cut=False,
    params_b=0.0,
    real_weights=False,
    dtype="float32",
    device="cpu",
    gpus=0,
    torch="2",
    date="today",
    dense_backend="PyTorch's own SDPA choice",
    delta=TINY_CONFIG,
    warmup=dict(done=True, length=64, seconds=0.1),
    reps=2,
    command="delta-attn bench e2e",
)


def _results(dense_times: dict[int, float], delta_times: dict[int, float], **meta) -> dict:
    cells = [
        dict(n=n, label=str(n), method=m, chunk=0, cache="", ttft_s=t, tokens_per_s=n / t)
        for m, times in (("dense", dense_times), ("delta", delta_times))
        for n, t in times.items()
    ]
    meta = {**dict(model_shape="tiny shape", real_weights=False, layers=TINY_LAYERS, delta=TINY_CONFIG), **meta}
    return dict(meta=meta, cells=cells)


def test_floor_needs_the_delta_config_and_a_fit_without_negative_terms():
    n1 = int(torch.randint(64, 1024, ()))
    n2 = n1 * int(torch.randint(2, 5, ()))
    t1 = float(torch.rand(()) + 1.0)
    near, far = n2 + n1 // 2, n2 * 10
    res = _results({n1: t1, n2: t1 * 1.2}, {near: 0.1, far: 0.2})  # dense grows slower than N: b < 0
    e2e_report.extrapolate(res)
    assert res["dense_fit"]["b"] < 0 and "negative term" in res["floor_error"] and "floor" not in res
    by_n = {c["n"]: c for c in res["cells"] if c["method"] == "delta"}
    assert by_n[near]["speedup_vs_dense_fit"] == pytest.approx(e2e_report.dense_fit_at(res["dense_fit"], near) / 0.1)
    assert e2e_report.dense_fit_at(res["dense_fit"], far) < 0 and "speedup_vs_dense_fit" not in by_n[far]
    md = e2e_report.markdown(dict(res, meta=TINY_REPORT_META))
    near_row, far_row = (f"| {e2e_report.fmt_length(n)} | dense |" for n in (near, far))
    assert near_row in md and far_row not in md and "No floor line" in md
    old = _results({n1: t1, n2: t1 * (n2 / n1) ** 1.5}, {})
    old["meta"]["delta"] = dict(window=32, sink=4)  # an older or hand-edited file
    with pytest.raises(e2e_report.ReportInputError, match="meta.delta lacks gamma, sparse"):
        e2e_report.extrapolate(old)
    e2e_report.extrapolate(old, strict=False)  # what a bench e2e run's own report does: says so, writes the rest
    assert "meta.delta lacks" in old["floor_error"]
    real = _results({n1: t1, n2: t1 * (n2 / n1) ** 1.5}, {}, model_shape="/models/qwen", real_weights=True)
    with pytest.raises(e2e_report.ReportInputError, match="records no meta.attention"):
        e2e_report.extrapolate(real)
    # an older run of a random shape: its heads come from the shape's table
    e2e_report.extrapolate(shape := _results({n1: t1, n2: t1 * (n2 / n1) ** 1.5}, {}))
    assert (
        shape["floor"][0]["dense_flops"]
        == prefill_cost(DeltaConfig(**TINY_CONFIG, mode="dense"), n1).flops(TINY_HEAD_DIM, TINY_HEADS) * TINY_LAYERS
    )


def test_cells_that_compiled_are_marked_and_counted_in_a_compiled_run():
    """A compiled run's report says whether torch.compile compiled during the timed cells, and marks the cells that
    did (their first call paid for it); a run without the count (older files) says nothing about it."""
    n = int(torch.randint(64, 1024, ()))
    graphs = int(torch.randint(1, 9, ()))
    res = _results({n: 1.0}, {n: 0.5})
    res["cells"][0]["graphs_compiled"], res["cells"][1]["graphs_compiled"] = 0, graphs
    md = e2e_report.markdown(dict(res, meta=dict(TINY_REPORT_META, compiled=True)))
    assert f"**{graphs} graph(s) compiled during the timed cells**" in md
    assert sum(f"**compiled {graphs} graph(s)**" in line for line in md.splitlines()) == 1
    res["cells"][1]["graphs_compiled"] = 0
    md = e2e_report.markdown(dict(res, meta=dict(TINY_REPORT_META, compiled=True)))
    assert "No graph compiled during the timed cells." in md and "**compiled" not in md
    for c in res["cells"]:
        del c["graphs_compiled"]
    md = e2e_report.markdown(dict(res, meta=dict(TINY_REPORT_META, compiled=True)))
    assert "Decoder layers compiled" in md and "compiled during the timed cells" not in md
