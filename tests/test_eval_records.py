"""Result records that cannot be silently wrong: configs, resume matching, torn lines, report prose.

No model is loaded here: the records are written by the same functions the commands use, and the
command-line runs stop before the model would load (``--time-limit 0``).
"""

from __future__ import annotations

import gzip
import json

import pytest

from delta_attn.cli import main
from delta_attn.eval.document import Inputs, results_document
from delta_attn.eval.records import JsonlWriter, Records, config_of, record_config, sample_key
from delta_attn.eval.resume import plan_resume
from delta_attn.eval.ruler import PROMPT_FORMAT
from delta_attn.eval.tables import RulerData
from delta_attn.methods import canonical_config, parse_method
from delta_attn.models import model_info

DEFAULTS = {"sparse": "streaming", "window": 64, "sink": 16, "gamma": 8}
PROMPT = {"reserve": 128, "chat": True, "format": PROMPT_FORMAT}  # what `eval ruler` records today
# the records' model, in their configs and their run header alike (the report splits records by model)
MODEL_ID = "SmolLM2-135M-Instruct.Q4_1.gguf@sha256:b179c9523d0e"


def _config(spec: str, model: str = MODEL_ID, dtype: str = "float32", **defaults) -> dict:
    method = parse_method(spec, {**DEFAULTS, **defaults})
    return record_config(method.canonical(), model=model, dtype=dtype, prompt=PROMPT, seed=0)


def _samples(method: str, config: dict, *, tasks=("niah_single_1", "vt"), length=512, n=3, score=1.0, run_id="r1"):
    return [
        {
            "record": "sample",
            "task": t,
            "length": length,
            "index": i,
            "method": method,
            "seed": 0,
            "score": score,
            "run_id": run_id,
            "config": config,
        }
        for t in tasks
        for i in range(n)
    ]


def _write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    with JsonlWriter(path) as w:
        w.write(records)


# ---------------------------------------------------------------------------------------------
# canonical configs


def test_canonical_config_keeps_only_what_decides_the_result():
    a = parse_method("delta", {**DEFAULTS, "block_size": 512}).config
    b = parse_method("delta", {**DEFAULTS, "block_size": 4096, "backend": "reference"}).config
    assert canonical_config(a) == canonical_config(b)  # the block size is not read by a streaming base
    assert canonical_config(a) == {
        "gamma": 8,
        "interp": "repeat",
        "mode": "delta",
        "sink": 16,
        "sparse": "streaming",
        "tail": 128,  # the effective tail: max(128, γ)
        "window": 64,
    }
    assert canonical_config(a.replace(tail=128)) == canonical_config(a)  # tail None means max(128, γ)
    assert canonical_config(a.replace(dense_layers=2)) == canonical_config(a.replace(dense_layers=(1, 0)))
    assert canonical_config(a.replace(window=65)) != canonical_config(a)
    sparse = parse_method("sparse", DEFAULTS).config
    assert "gamma" not in canonical_config(sparse)  # sparse-only never reads γ
    assert canonical_config(None) == canonical_config(sparse.replace(mode="dense")) == {"mode": "dense"}


# ---------------------------------------------------------------------------------------------
# resume matching (issue 12, reproduction 1)


def test_resume_reuses_only_records_with_the_same_settings():
    old = _config("delta", window=64)
    new = _config("delta", window=2000)
    recs = Records(items=_samples("delta", old) + _samples("dense", _config("dense")))
    wanted = {"delta": new, "dense": _config("dense")}
    plan = plan_resume(recs, "sample", sample_key, wanted)
    assert {k[3] for k in plan.done} == {"dense"} and len(plan.done) == 6
    assert plan.lines() == [
        "reusing 6 earlier record(s) whose settings match",
        "not reusing 6 record(s) of method 'delta': they differ in window (64 vs 2000)",
    ]
    # the same records with matching settings are all reused
    assert len(plan_resume(recs, "sample", sample_key, {"delta": old}).done) == 6


def test_resume_compares_model_dtype_and_prompt_too():
    base = _config("delta")
    recs = Records(items=_samples("delta", _config("delta", dtype="bfloat16", model="other@sha256:1")))
    plan = plan_resume(recs, "sample", sample_key, {"delta": base})
    assert not plan.done
    (line,) = plan.lines()[1:]
    assert "dtype (bfloat16 vs float32)" in line and f"model (other@sha256:1 vs {MODEL_ID})" in line


def test_records_without_config_get_it_back_from_their_run_header():
    method = parse_method("delta", DEFAULTS)
    run = {"record": "run", "run_id": "r0", "dtype": "float32", "options": {"reserve": 128}}
    run["methods"] = {"delta": method.config_dict()}
    rec = {"record": "sample", "task": "vt", "length": 512, "index": 0, "method": "delta", "seed": 0, "run_id": "r0"}
    recovered = config_of(rec, {"r0": run})
    assert recovered["method"] == method.canonical() and recovered["dtype"] == "float32"
    assert recovered["model"].startswith("unknown")  # old runs did not record the model's hash
    assert config_of({**rec, "run_id": "gone"}, {"r0": run}) is None


def test_cli_resume_with_other_settings_under_the_same_method_name(tmp_path, capsys):
    """Issue 12, reproduction 1: r1 ran --window 64 --sink 16; a sweep to --window 2000 must not reuse it."""
    info = model_info()
    r1 = tmp_path / "r1" / "ruler.jsonl"
    methods = "dense,sparse,delta"
    old = {
        m: record_config(
            parse_method(m, {**DEFAULTS, "gamma": 8}).canonical(),
            model=info.model_id,
            dtype="float32",
            prompt=PROMPT,
            seed=0,
        )
        for m in methods.split(",")
    }
    _write(r1, [r for m in old for r in _samples(m, old[m], tasks=("niah_single_1",), n=2)])
    argv = ["eval", "ruler", "--tasks", "niah_single_1", "--lengths", "512", "--samples", "2", "--methods", methods]
    argv += ["--device", "cpu", "--dtype", "float32", "--resume-from", str(tmp_path / "r1"), "--time-limit", "0"]
    assert main([*argv, "--window", "2000", "--sink", "0", "--gamma", "8", "--out", str(tmp_path / "r2")]) == 0
    log = capsys.readouterr().err
    assert "nothing to do" not in log
    assert "reusing 2 earlier record(s)" in log  # dense does not depend on the window
    assert "not reusing 2 record(s) of method 'delta': they differ in sink (16 vs 0), window (64 vs 2000)" in log
    assert "not reusing 2 record(s) of method 'sparse'" in log
    # the same settings as r1: everything is reused
    assert main([*argv, "--window", "64", "--sink", "16", "--gamma", "8", "--out", str(tmp_path / "r3")]) == 0
    assert "nothing to do: all 6 generations are done" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# torn lines (reproduction 5)


def test_writer_never_appends_to_a_torn_line(tmp_path):
    path = tmp_path / "ruler.jsonl"
    good = _samples("dense", _config("dense"), n=1)
    _write(path, good)
    with path.open("a", encoding="utf-8") as f:
        f.write('{"record": "sample", "task": "vt", "len')  # a run killed mid-line
    warnings = []
    with JsonlWriter(path, warn=warnings.append) as w:
        w.write([{"record": "run", "run_id": "r2"}])
    assert len(warnings) == 1 and "cut off" in warnings[0]
    recs = Records.load([path])
    assert recs.items == [*good, {"record": "run", "run_id": "r2"}]  # the new header survived intact
    assert recs.skipped == [f"{path}:3"] and "skipped 1 unreadable line" in recs.skipped_note()
    with JsonlWriter(path, warn=warnings.append):  # a clean file: no repair, no warning
        pass
    assert len(warnings) == 1


def test_readers_report_skipped_lines_in_gzip_files_too(tmp_path):
    path = tmp_path / "ppl.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"record": "run", "run_id": "a"}\nnot json\n[1, 2]\n\n')
    recs = Records.load([tmp_path])
    assert recs.runs == {"a": {"record": "run", "run_id": "a"}} and len(recs.skipped) == 2


# ---------------------------------------------------------------------------------------------
# the report (reproduction 2)


def _run_header(run_id: str, dtype: str = "float32") -> dict:
    return {
        "record": "run",
        "run_id": run_id,
        "argv": ["/x/cli.py", "eval", "ruler", "--window", "64"],
        "dtype": dtype,
        "device": "cpu",
        "device_name": "x86_64",
        "model_id": MODEL_ID,
        "model_layers": 30,
        "options": {},
    }


def test_report_prose_comes_from_the_records(tmp_path):
    cfgs = {m: _config(m) for m in ("dense", "sparse", "delta")}
    recs = [_run_header("r1")] + [r for m, c in cfgs.items() for r in _samples(m, c, score=float(m == "dense"))]
    _write(tmp_path / "run" / "ruler.jsonl", recs)
    inputs = Inputs.find([tmp_path / "run"])
    text = results_document(inputs, Records.load(inputs.ruler), Records.load(inputs.ppl), n_resamples=99)
    setup = text[text.index("## Setup") : text.index("## How it is measured")]
    assert "sink 16 + window 64" in setup and "γ=8" in setup and "dtype float32" in setup
    assert "2 task(s) (niah_single_1, vt) × lengths 512" in setup and "L − 128 tokens" in setup
    assert "samples per (task, length, method): 3 (18 generations)" in setup
    assert "SmolLM2-135M-Instruct" in text
    for claim in ("bfloat16", "13 tasks", "sink 64", "window 256", "γ = 16", "8K"):
        assert claim not in text, claim
    assert "`delta-attn eval ruler --window 64`" in text  # the run's own command, in the runs list


def test_report_never_merges_two_settings_under_one_name(tmp_path):
    recs = [_run_header("r1")]
    recs += _samples("dense", _config("dense"), score=1.0)
    recs += _samples("delta", _config("delta", window=64), score=1.0)
    recs += _samples("delta", _config("delta", window=2000), score=0.0, run_id="r2")
    d = RulerData.from_records(recs)
    assert set(d.methods) == {"dense", "delta (window 64)", "delta (window 2000)"}
    assert d.avg(512, "delta (window 64)") == 100.0 and d.avg(512, "delta (window 2000)") == 0.0


def test_an_exploratory_scaled_run_leaves_the_default_rows_and_targets_alone():
    """A YaRN run beside unscaled ones: only its rows carry the setting, and the targets stay at the longest
    length where dense, sparse, recompute and Δ all have averages (not at the scaled run's longer length)."""
    import random

    from delta_attn.eval.tables import targets_table

    rng = random.Random()
    recs = [_run_header("r1")]
    for m in ("dense", "sparse", "recompute", "delta"):
        for r in _samples(m, _config(m)):
            recs.append({**r, "score": float(rng.random() < 0.5)})
    for m in ("dense", "sparse"):  # the scaled run: two methods at a longer length
        cfg = {**_config(m), "rope_scaling": "yarn:2:3000"}
        recs += _samples(m, cfg, length=1024, run_id="r2", score=float(rng.random() < 0.5))
    d = RulerData.from_records(recs)
    assert set(d.methods) == {
        "dense",
        "sparse",
        "recompute",
        "delta",
        "dense (rope_scaling yarn:2:3000)",
        "sparse (rope_scaling yarn:2:3000)",
    }
    assert d.avg(1024, "dense") is None and d.avg(1024, "dense (rope_scaling yarn:2:3000)") is not None
    assert d.lengths == [512, 1024]
    assert d.headline_length() == 512 and d.headline_length(["dense (rope_scaling yarn:2:3000)"]) == 1024
    table = targets_table(d, n_resamples=99)
    assert table.startswith("| target (at 512) |"), table
    assert "| delta − recompute | – | – |" not in table  # the comparison ran at 512
    assert targets_table(d, length=1024, n_resamples=99).startswith("| target (at 1K) |")


def test_the_gamma_plot_has_no_empty_panel(tmp_path):
    """Accuracy at two γ and no perplexity records: one panel (the report's plot had an empty second one)."""
    import random

    from matplotlib.image import imread

    from delta_attn.eval.plots import plot_gamma
    from delta_attn.eval.tables import PplData

    rng = random.Random()
    recs = [_run_header("r1")]
    for m in ("dense", "sparse", "delta", "delta_g16"):
        for r in _samples(m, _config(m)):
            recs.append({**r, "score": float(rng.random() < 0.5)})
    d = RulerData.from_records(recs)
    one = plot_gamma(d, PplData.from_records([]), tmp_path / "gamma.png")
    height, width = imread(one).shape[:2]
    assert (width, height) == (round(5.5 * 120), 4 * 120)  # one 5.5 × 4 inch panel at 120 dpi
    assert plot_gamma(RulerData.from_records(recs[:-6]), PplData.from_records([]), tmp_path / "none.png") is None


@pytest.mark.parametrize("inputs", [["/nonexistent/results"], []])
def test_report_without_inputs_is_an_error(inputs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "report", "--inputs", *inputs, "--out", str(tmp_path / "R.md")])
    assert exc.value.code == 2 and "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "R.md").exists()


def test_report_of_a_folder_without_results_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["eval", "report", "--inputs", str(tmp_path / "empty"), "--out", str(tmp_path / "R.md")]) == 2
    assert "no result files" in capsys.readouterr().err and not (tmp_path / "R.md").exists()


def test_notes_must_name_runs_that_are_among_the_inputs(tmp_path, capsys):
    _write(tmp_path / "run" / "ruler.jsonl", [_run_header("r1"), *_samples("dense", _config("dense"))])
    unnamed = tmp_path / "notes.md"
    unnamed.write_text("## Findings\nDelta wins.\n", encoding="utf-8")
    other = tmp_path / "other.md"
    other.write_text("<!-- runs: r1 0ther -->\n## Findings\n", encoding="utf-8")
    good = tmp_path / "good.md"
    good.write_text("<!-- runs: r1 -->\n## Findings\nDense scores 100.\n", encoding="utf-8")
    base = ["eval", "report", "--inputs", str(tmp_path / "run"), "--out", str(tmp_path / "R.md"), "--resamples", "9"]
    assert main([*base, "--notes", str(unnamed)]) == 2
    assert "must name the runs" in capsys.readouterr().err
    assert main([*base, "--notes", str(other)]) == 2
    assert "0ther" in capsys.readouterr().err
    assert main([*base, "--notes", str(good)]) == 0
    text = (tmp_path / "R.md").read_text(encoding="utf-8")
    assert "Hand-written notes on runs `r1`" in text and "Dense scores 100." in text


def test_recorded_configs_are_plain_json():
    cfg = _config("delta_ema0.9")
    assert json.loads(json.dumps(cfg)) == cfg and cfg["method"]["ema_beta"] == 0.9


def test_the_bundled_model_is_named_by_its_hash_under_any_file_name():
    from delta_attn.eval.document import model_name

    assert model_name([{"model_id": "model.gguf@sha256:b179c9523d0e"}]) == "SmolLM2-135M-Instruct"
    assert model_name([{"model_id": "other.gguf@sha256:0123456789ab"}]) == "other.gguf"


def test_report_tests_the_variants_against_delta_and_recompute_per_base(tmp_path):
    """The λ variants and a second window get their own pooled tests: Δ > V and V > recompute, per base prefix."""
    import random

    rng = random.Random()
    tight = "streaming_w32_s8+"
    methods = ["dense", "sparse", "recompute", "delta", "delta_auto", tight + "delta", tight + "recompute"]
    recs = [_run_header("r1")]
    for m in methods:
        recs += [dict(r, score=float(rng.random() < 0.5)) for r in _samples(m, _config(m), n=4)]
    _write(tmp_path / "run" / "ruler.jsonl", recs)
    inputs = Inputs.find([tmp_path / "run"])
    text = results_document(inputs, Records.load(inputs.ruler), Records.load(inputs.ppl), n_resamples=99)
    section = text[text.index("### Δ variants") : text.index("## Perplexity")]
    for pair in ("delta > delta_auto", "delta_auto > recompute", f"{tight}delta > {tight}recompute"):
        assert f"| {pair} | all |" in section, pair
    assert "| delta > sparse |" not in section  # already in the main table, not repeated


def test_variant_pairs_compare_only_methods_run_alike():
    """A scaled run's Δ is tested against the scaled run's sparse and recompute (never against the unscaled
    ones), a tight-window base against its own group, and γ 16 against recompute among the default pairs."""
    from delta_attn.eval.tables import default_pairs, variant_pairs

    scaled = " (rope_scaling yarn:4:32768)"
    methods = ["dense", "sparse", "recompute", "delta", "delta_g16", "delta_auto"]
    methods += [m + scaled for m in ("dense", "sparse", "recompute", "delta")]
    methods += ["w512+sparse", "w512+recompute", "w512+delta", "w512+delta_auto"]
    pairs = variant_pairs(methods)
    assert ("delta_g16", "recompute") in default_pairs(methods)
    assert ("delta" + scaled, "sparse" + scaled) in pairs
    assert ("delta" + scaled, "recompute" + scaled) in pairs
    assert ("recompute" + scaled, "sparse" + scaled) in pairs
    assert ("w512+delta", "w512+delta_auto") in pairs and ("w512+delta_auto", "w512+recompute") in pairs
    assert ("delta", "delta_auto") in pairs and ("delta_auto", "recompute") in pairs
    assert not set(default_pairs(methods)) & set(pairs)  # each pair tested once
    for a, b in pairs:  # never across groups
        assert (scaled in a) == (scaled in b) and a.startswith("w512+") == b.startswith("w512+"), (a, b)
