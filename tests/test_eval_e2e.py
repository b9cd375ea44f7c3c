"""End-to-end smoke run of ``delta-attn eval ruler|ppl|analyze|report`` on the real SmolLM2 (CPU).

One test function on purpose: the model is parsed once per process (~20 s on 2 cores), and a single
function keeps every CLI run on one pytest-xdist worker.
"""

from __future__ import annotations

import json

import torch

from delta_attn.cli import main
from delta_attn.eval.records import read_records

COMMON = ["--window", "32", "--sink", "8", "--gamma", "16", "--threads", "1"]


def _ruler_argv(out, methods: str, *options: str) -> list[str]:
    """``eval ruler`` on three 512-token niah_single_1 samples into ``out``, without progress bars."""
    head = ["eval", "ruler", "--tasks", "niah_single_1", "--lengths", "512", "--samples", "3"]
    return [*head, "--methods", methods, "--out", str(out), "--no-progress", *options, *COMMON]


def _ruler(tmp_path):
    out = tmp_path / "ruler"
    argv = _ruler_argv(out, "dense,sparse,delta,delta_g1", "--workers", "1", "--resamples", "999", "--batch-size", "3")
    assert main(argv) == 0
    recs = list(read_records([out / "ruler.jsonl"], "sample"))
    assert len(recs) == 12
    for r in recs:
        assert set(r) >= {"task", "length", "method", "prompt_tokens", "prediction", "references", "score"}
        assert r["prompt_tokens"] == 384 and r["task"] == "niah_single_1" and r["length"] == 512
    by = {(r["method"], r["index"]): r for r in recs}
    # dense finds a single needle in a short noise haystack every time
    assert [by[("dense", i)]["score"] for i in range(3)] == [1.0] * 3, [
        by[("dense", i)]["prediction"] for i in range(3)
    ]
    # γ = 1 makes every row an anchor: Δ prefill is exact, so greedy decoding must match dense
    assert [by[("delta_g1", i)]["prediction"] for i in range(3)] == [by[("dense", i)]["prediction"] for i in range(3)]
    run = next(read_records([out / "ruler.jsonl"], "run"))
    assert run["options"]["window"] == 32 and run["methods"]["delta"]["gamma"] == 16
    summary = (out / "ruler_summary.md").read_text()
    assert "| dense | 100.0" in summary and "delta > sparse" in summary

    # resuming: everything done -> nothing new; a time limit too short for a batch -> nothing started
    assert main(_ruler_argv(out, "dense,delta", "--no-summary")) == 0
    assert main(_ruler_argv(out, "recompute", "--time-limit", "0")) == 0
    assert len(list(read_records([out / "ruler.jsonl"], "sample"))) == 12
    log = (out / "ruler.log").read_text()
    assert "nothing to do" in log and "too short" in log
    return out


def _ppl(tmp_path):
    out = tmp_path / "ppl"
    assert (
        main(
            [
                "eval",
                "ppl",
                "--lengths",
                "512",
                "--docs",
                "2",
                "--methods",
                "dense,sparse,delta_linear",
                "--out",
                str(out),
                "--no-progress",
                *COMMON,
            ]
        )
        == 0
    )
    recs = list(read_records([out / "ppl.jsonl"], "ppl"))
    assert len(recs) == 6
    for r in recs:
        assert r["edges"] == [0, 512] and r["tokens"] == [511]
    ppl = [float(torch.tensor(r["nll_sum"][0] / r["tokens"][0]).exp()) for r in recs if r["method"] == "dense"]
    assert all(1.5 < p < 200 for p in ppl), ppl
    assert all(r["causal"] is False for r in recs if r["method"] == "delta_linear")
    assert "non-causal" in (out / "ppl_summary.md").read_text()
    # continuation perplexity into the same file: the cache of a 448-token prefill, the last 64 scored densely
    argv = ["eval", "ppl", "--lengths", "512", "--docs", "2", "--methods", "dense,sparse,delta", "--out", str(out)]
    assert main([*argv, "--continuation", "64", "--no-progress", *COMMON]) == 0
    crecs = list(read_records([out / "ppl.jsonl"], "cppl"))
    assert len(crecs) == 6 and all(r["cont"] == 64 and r["tokens"] == 64 for r in crecs)
    by = {(r["doc"], r["method"]): r["nll_sum"] for r in crecs}
    assert any(by[d, "sparse"] != by[d, "dense"] for d, _ in by)  # the sparse cache differs from dense
    assert "last M = 64 tokens scored" in (out / "ppl_summary.md").read_text()
    return out


def _analysis(tmp_path):
    out = tmp_path / "analysis"
    assert (
        main(
            [
                "eval",
                "analyze",
                "--task",
                "niah_single_1",
                "--length",
                "512",
                "--samples",
                "2",
                "--methods",
                "sparse,delta",
                "--sweep",
                "sparse,delta,delta_g1,recompute",
                "--gammas",
                "2,8,32",
                "--out",
                str(out),
                *COMMON,
            ]
        )
        == 0
    )
    an = json.loads((out / "analysis.json").read_text())
    ds = an["delta_similarity"]
    assert ds["gammas"] == [2, 8, 32] and len(ds["delta_cos"]) == 30 and ds["first_row"] == 40
    assert all(-1.0 <= x <= 1.0 for x in ds["delta_cos_mean"] + ds["query_cos_mean"])
    assert ds["cross_cos_mean"] is not None
    for m in ("sparse", "delta"):
        dr = an["drift"][m]
        assert len(dr["out_cos"]) == 30 and all(-1 <= x <= 1.0 + 1e-6 for x in dr["spearman"])
        assert dr["scatter"]  # scatter data of a few layers (paper Fig. 3)
    sw = an["sweep"]["configs"]
    assert sw["delta_g1"]["rel_err_mean"] < 1e-4  # every row exact
    assert sw["delta"]["rel_err_mean"] < sw["sparse"]["rel_err_mean"]
    assert sw["recompute"]["rel_err_mean"] < sw["sparse"]["rel_err_mean"]
    return out


def test_eval_cli_end_to_end(tmp_path):
    ruler_dir = _ruler(tmp_path)
    ppl_dir = _ppl(tmp_path)
    analysis_dir = _analysis(tmp_path)
    out = tmp_path / "RESULTS.md"
    assert (
        main(
            [
                "eval",
                "report",
                "--inputs",
                str(ruler_dir),
                str(ppl_dir),
                str(analysis_dir),
                "--out",
                str(out),
                "--plots-dir",
                str(tmp_path / "plots"),
                "--resamples",
                "999",
            ]
        )
        == 0
    )
    text = out.read_text()
    for section in (
        "## Targets",
        "## RULER-style accuracy",
        "## Significance",
        "## Perplexity",
        "## Continuation perplexity",
        "## Analysis",
        "## Reproduce",
    ):
        assert section in text
    assert "| delta > sparse | non-QA |" in text and "non-causal" in text
    assert (tmp_path / "plots" / "ruler.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "analysis.png").is_file() and "](plots/ruler.png)" in text
