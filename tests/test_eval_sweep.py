"""``delta-attn eval sweep``: cell order, the window × γ tables and heat maps, the report section, and (slow)
a CPU run on SmolLM2 stopped between cells by its time limit and resumed."""

from __future__ import annotations

import pytest

from delta_attn.eval.records import JsonlWriter, Records
from delta_attn.eval.sweep import SweepData, sweep_cells, sweep_markdown

DEFAULTS = {"sparse": "streaming", "window": 256, "sink": 64, "gamma": 64}


def test_cells_run_the_first_window_row_first_then_nearest_windows():
    cells = sweep_cells(["delta", "recompute"], [128, 256, 512, 1024], [8, 16, 32, 64], DEFAULTS, 256)
    names = [c.name for c in cells]
    assert names[:6] == ["dense", "w256", "w256/g8", "w256/g16", "w256/g32", "w256/g64"]
    assert names[6:] == [
        *["w128", "w128/g8", "w128/g16", "w128/g32", "w128/g64"],
        *["w512", "w512/g8", "w512/g16", "w512/g32", "w512/g64"],
        *["w1024", "w1024/g8", "w1024/g16", "w1024/g32", "w1024/g64"],
    ]
    cell = cells[3]
    assert [m.name for m in cell.methods] == ["delta@w256/g16", "recompute@w256/g16"]
    assert [(m.config.mode, m.config.window, m.config.gamma, m.config.sink) for m in cell.methods] == [
        ("delta", 256, 16, 64),
        ("recompute", 256, 16, 64),
    ]
    assert cells[1].methods[0].name == "sparse@w256" and cells[1].methods[0].config.mode == "sparse"
    assert cells[0].methods[0].is_dense
    # names are unique, so every (method, cell) has its own resume key
    all_names = [m.name for c in cells for m in c.methods]
    assert len(all_names) == len(set(all_names)) == 1 + 4 + 4 * 4 * 2
    # variants compose with the per-cell window and γ
    v = sweep_cells(["delta_auto"], [64], [8], DEFAULTS, 64)[-1].methods[0]
    assert (v.name, v.config.delta_scale, v.config.window, v.config.gamma) == ("delta_auto@w64/g8", "auto", 64, 8)
    with pytest.raises(ValueError):
        sweep_cells(["delta_q"], [64], [8], DEFAULTS)


def _records(cells) -> list[dict]:
    """Synthetic sample + cppl records for every method of ``cells``: Δ beats recompute only at window 128."""
    recs = [{"record": "run", "run_id": "s1", "kind": "sweep"}]
    for c in cells:
        for m in c.methods:
            root = m.name.partition("@")[0]
            win = c.window
            score = {"dense": 1.0, "sparse": 0.0}.get(root, 0.75 if (root == "delta") == (win == 128) else 0.5)
            nll = {"dense": 2.0, "sparse": 3.0}.get(root, 2.2 if (root == "delta") == (win == 128) else 2.4)
            cfg = {"method": m.canonical()}
            for task in ("niah_single_1", "vt"):
                for i in range(2):
                    recs.append(
                        {
                            "record": "sample",
                            "task": task,
                            "length": 1024,
                            "index": i,
                            "seed": 0,
                            "method": m.name,
                            "score": score,
                            "run_id": "s1",
                            "config": cfg,
                        }
                    )
            for doc in ("a", "b"):
                recs.append(
                    {
                        "record": "cppl",
                        "doc": doc,
                        "length": 1024,
                        "cont": 256,
                        "method": m.name,
                        "nll_sum": nll * 256,
                        "tokens": 256,
                        "run_id": "s1",
                        "config": cfg,
                    }
                )
    return recs


def test_sweep_tables_heat_maps_and_report_section(tmp_path):
    import math

    from delta_attn.eval import plots
    from delta_attn.eval.document import Inputs, results_document

    cells = sweep_cells(["delta", "recompute"], [128, 256], [8, 64], DEFAULTS, 256)
    d = SweepData.from_records(_records(cells))
    assert (d.windows, d.gammas, d.roots, d.conts) == ([128, 256], [8, 64], ["delta", "recompute"], [256])
    assert d.grid("ruler", "delta", "recompute") == [[25.0, 25.0], [-25.0, -25.0]]
    g = d.grid("cppl256", "delta", "recompute")
    assert g[0][0] == pytest.approx(math.exp(2.2) - math.exp(2.4)) and g[1][1] == pytest.approx(-g[0][0])
    assert d.value("ruler", "dense", None, None) == 100.0 and d.value("ruler", "sparse", 128, None) == 0.0
    # other runs' records (plain method names, e.g. from a --resume-from folder), other lengths and records
    # read twice do not change the map
    recs = _records(cells)
    cfg = {"method": sweep_cells(["delta"], [128], [8], DEFAULTS)[-1].methods[0].canonical()}
    other = [
        {
            "record": "sample",
            "task": "qa_1",
            "length": 1024,
            "index": 0,
            "method": "delta",
            "score": 0.0,
            "config": cfg,
        },
        {**recs[1], "length": 512, "score": 0.0},
    ]
    again = SweepData.from_records(recs + recs + other)
    assert again.tasks == d.tasks and again.grid("ruler", "delta", "recompute") == d.grid("ruler", "delta", "recompute")
    assert again.ruler == d.ruler and again.length == {1024}
    text = sweep_markdown(d, {"ruler": "sweep_ruler.png"})
    assert "| 128 | 75.0 / 50.0 (+25.0) | 75.0 / 50.0 (+25.0) | 0.0 |" in text
    assert "dense: 100.0" in text and "](sweep_ruler.png)" in text and "last 256 tokens" in text
    for measure in ("ruler", "cppl256"):
        png = plots.plot_sweep_map(d, measure, tmp_path / f"{measure}.png")
        assert png is not None and png.stat().st_size > 5000
    assert plots.plot_sweep_map(SweepData.from_records([]), "ruler", tmp_path / "none.png") is None
    # the report picks sweep*.jsonl up into its own section, with the heat maps linked
    path = tmp_path / "runs" / "sweep.jsonl"
    with JsonlWriter(path) as w:
        w.write(_records(cells))
    inputs = Inputs.find([tmp_path / "runs"])
    assert inputs.sweep == [path] and inputs.count == 1
    doc = results_document(
        inputs,
        Records(),
        Records(),
        sweep_records=Records.load(inputs.sweep),
        plots_dir=tmp_path / "plots",
        rel_to=tmp_path,
        n_resamples=99,
    )
    assert "## Where Δ wins: window × γ map" in doc and "](plots/sweep_ruler.png)" in doc
    assert "](plots/sweep_cppl256.png)" in doc and (tmp_path / "plots" / "sweep_cppl256.png").is_file()


@pytest.mark.slow
def test_sweep_cli_stops_between_cells_and_resumes(tmp_path, monkeypatch):
    from delta_attn.cli import main
    from delta_attn.eval import runner

    out = tmp_path / "sw"
    argv = [
        "eval",
        "sweep",
        "--windows",
        "32",
        "--gammas",
        "8",
        "--first-window",
        "32",
        "--length",
        "384",
        "--tasks",
        "niah_single_1",
        "--samples",
        "1",
        "--continuation",
        "64",
        "--ppl-docs",
        "1",
        "--sink",
        "8",
        "--threads",
        "2",
        "--workers",
        "1",
        "--no-progress",
        "--out",
        str(out),
    ]
    # a deterministic time limit: every cell, RULER batch and perplexity batch asks the deadline once, so
    # 3 answers "yes" run the dense cell and stop before the sparse one
    calls = []
    monkeypatch.setattr(runner.Deadline, "allows", lambda self, s: calls.append(s) or len(calls) <= 3)
    assert main([*argv, "--time-limit", "1000"]) == 0
    first = Records.load([out / "sweep.jsonl"])
    assert sorted({r["method"] for r in first.items if r["record"] != "run"}) == ["dense@sweep"]
    assert "stopping before cell w32;" in (out / "sweep.log").read_text()
    monkeypatch.undo()
    assert main(argv) == 0
    recs = Records.load([out / "sweep.jsonl"])
    log = (out / "sweep.log").read_text()
    assert "RULER: reusing 1 earlier" in log and "continuation ppl: reusing 1 earlier" in log
    done = [r for r in recs.items if r["record"] in ("sample", "cppl")]
    assert len(done) == 2 * 4 and len({(r["record"], r["method"]) for r in done}) == 8  # nothing ran twice
    assert {r["config"]["method"].get("gamma") for r in done if r["method"].startswith("delta")} == {8}
    assert "| 32 |" in (out / "sweep.md").read_text() and (out / "sweep_cppl64.png").is_file()
    assert main(argv) == 0 and "nothing to do" in (out / "sweep.log").read_text()
