"""``delta-attn eval calibrate``: the recommendation follows the records it writes, its Python line builds the
candidate's config, bad candidates are refused before the model loads, and a second run resumes."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict

import pytest

import delta_attn
from delta_attn.eval import cli_calibrate
from delta_attn.eval.records import read_records
from delta_attn.eval.stats import paired_permutation_test
from delta_attn.methods import canonical_config, config_expression, parse_method

SMALL = ["--window", "32", "--sink", "8", "--gamma", "16", "--threads", "1"]


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------
# refused before the model loads


@pytest.mark.usefixtures("no_model_load")
@pytest.mark.parametrize(
    "options, message",
    [
        (["--candidates", "delta,delta_autog"], 'delta_autog: delta_scale="auto-global" is non-causal'),
        (["--candidates", "delta_linear,recompute"], 'delta_linear: interp="linear" is non-causal'),
        (["--candidates", "delta_x25,delta"], "delta_x25: extra_anchors=0.25 is non-causal"),
        (["--candidates", "delta"], "--candidates delta: name at least 2 methods"),
        (["--candidates", "recompute,recompute"], "--candidates recompute: name at least 2 methods"),
        (["--candidates", "dense,delta"], "dense is not a candidate"),
        (["--candidates", "delta,delta_q3"], "--candidates: method 'delta_q3': unknown option 'q3'"),
        (["--docs", "1"], "--docs 1: the paired test needs at least 2 documents"),
        (["--length", "512", "--continuation", "512"], "--continuation 512: must be shorter"),
        (["--length", "100000"], "--length 100000: 100000 tokens exceed the model's context of 8192"),
    ],
)
def test_refused_with_the_reason_before_the_model_loads(options, message, tmp_path, run_cli):
    out = tmp_path / "cal"
    rc, err = run_cli(["eval", "calibrate", *options, "--out", out])
    assert rc == 2 and message in _last_line(err), err
    assert not out.exists()
    if "non-causal" in message:  # the reason says why, and what to choose instead
        assert "cannot prefill in chunks" in err and "choose causal settings" in err


def test_the_default_length_is_the_models_context_capped():
    from delta_attn.eval.cli_common import model_info

    class Args:
        model = None
        rope_scaling = None

    context = model_info(Args()).context_length
    assert cli_calibrate.default_length(context) == min(context, cli_calibrate.MAX_DEFAULT_LENGTH) == 8192
    assert cli_calibrate.default_length(131072) == cli_calibrate.MAX_DEFAULT_LENGTH


# ---------------------------------------------------------------------------------------------
# the Python line of a config


def test_config_expression_builds_the_same_method(seed):
    rng = random.Random(seed)
    defaults = {
        "window": rng.choice([64, 256, 1000]),
        "sink": rng.choice([0, 8, 64]),
        "gamma": rng.choice([8, 16, 64]),
        "interp": "repeat",
        "backend": "reference",
    }
    specs = ["delta", "delta_auto", "delta_autod", "recompute", "sparse", "delta_ema0.9", "block+delta", "delta_l0.5"]
    for spec in specs:
        config = parse_method(spec, defaults).config
        text = config_expression(config)
        built = eval(text, {"DeltaConfig": delta_attn.DeltaConfig})
        assert canonical_config(built) == canonical_config(config), (spec, text)
        assert "backend" not in text  # rounding, not the method
    assert config_expression(delta_attn.DeltaConfig()) == "DeltaConfig()"
    assert config_expression(delta_attn.DeltaConfig(delta_scale="auto")) == 'DeltaConfig(delta_scale="auto")'
    # a field that changes nothing in this mode is left out: recompute has no interpolation
    assert config_expression(delta_attn.DeltaConfig(mode="recompute", interp="ema")) == 'DeltaConfig(mode="recompute")'


# ---------------------------------------------------------------------------------------------
# the decision, on synthetic per-document NLLs


def _synthetic(seed: int, gaps: dict[str, float], n_docs: int = 8) -> dict[str, dict[str, float]]:
    """Per-document NLL per token: a random base per document plus each method's gap (and a little noise)."""
    rng = random.Random(seed)
    base = {f"doc{i}": rng.uniform(2.0, 4.0) for i in range(n_docs)}
    return {m: {d: b + gap + rng.uniform(0, 1e-3) for d, b in base.items()} for m, gap in gaps.items()}


def _tie(nll: dict, method: str, like: str, rng: random.Random) -> None:
    """Make ``method`` tie ``like``: each document's NLL a little above or below, half the documents each way,
    so that no winner is significant (independent noise would be "significant" in one seed of twenty)."""
    for i, d in enumerate(sorted(nll[like])):
        nll[method][d] = nll[like][d] + (-1) ** i * rng.uniform(0.5e-3, 1.5e-3)


def test_a_clear_winner_is_significant(seed):
    cands = [parse_method(s, {"window": 256, "sink": 64, "gamma": 64}) for s in ("delta", "delta_auto", "recompute")]
    gap = random.Random(seed).uniform(0.01, 0.05)
    # delta_auto lower on every document: with 8 documents the exact two-sided p is 2 / 2**8
    nll = _synthetic(seed, {"delta": gap, "delta_auto": 0.0, "recompute": 2 * gap})
    r = cli_calibrate.calibration(cands, nll, length=4096, cont=1024)
    assert r["best"] == "delta_auto" and r["runner_up"] == "delta"
    assert r["significant"] and r["p_best_vs_runner_up"] == pytest.approx(2 / 256)
    assert r["recommendation"]["python"] == 'DeltaConfig(window=256, sink=64, delta_scale="auto")'
    rows = {row["method"]: row for row in r["candidates"]}
    for m in ("delta", "recompute"):
        want = sum(nll[m][d] - nll["delta_auto"][d] for d in nll[m]) / 8
        assert rows[m]["diff_to_best"] == pytest.approx(want)
    assert rows["delta_auto"]["ppl"] == pytest.approx(math.exp(sum(nll["delta_auto"].values()) / 8))
    assert "significantly better than delta" in r["note"]


def test_a_tie_is_not_significant_and_names_the_cheaper(seed):
    defaults = {"window": 32, "sink": 8, "gamma": 16}
    cands = [parse_method(s, defaults) for s in ("delta", "delta_auto", "recompute")]
    nll = _synthetic(seed, {"delta": 0.5, "delta_auto": 0.0, "recompute": 0.0})
    rng = random.Random(seed)
    _tie(nll, "recompute", "delta_auto", rng)
    r = cli_calibrate.calibration(cands, nll, length=512, cont=64)
    assert {r["best"], r["runner_up"]} == {"delta_auto", "recompute"}
    assert not r["significant"] and r["note"].startswith("not significant")
    # at 448 tokens the tail's base rows that recompute scores and Δ skips are several per cent of the pairs
    assert "the cheaper is delta_auto" in r["note"]
    # Δ is worse on every document (p 2/256): the first candidate not significantly worse is λ = auto
    assert r["recommendation"]["method"] == "delta_auto" and "delta significantly worse" in r["note"]
    # Δ and λ = auto score the same pairs: then the note says only that they cost the same
    tie = _synthetic(seed, {"delta": 0.0, "delta_auto": 0.0})
    _tie(tie, "delta_auto", "delta", rng)
    r = cli_calibrate.calibration(cands[:2], tie, length=512, cont=64)
    assert not r["significant"] and "they cost the same" in r["note"] and "cheaper" not in r["note"]


def test_the_first_candidate_not_significantly_worse_is_recommended(seed):
    """Δ first: recommended whenever its perplexity is not significantly above the lowest, even when another
    candidate's is lower; skipped for the next one when it is significantly above."""
    cands = [parse_method(s, {"window": 256, "sink": 64, "gamma": 64}) for s in ("delta", "delta_auto", "recompute")]
    rng = random.Random(seed)
    nll = _synthetic(seed, {"delta": 0.0, "delta_auto": 0.0, "recompute": -0.02})
    for i, d in enumerate(sorted(nll["delta"])):  # Δ − recompute: +0.02 on average, but up and down by 0.05
        nll["delta"][d] = nll["recompute"][d] + 0.02 + (-1) ** i * rng.uniform(0.04, 0.06)
    r = cli_calibrate.calibration(cands, nll, length=4096, cont=1024)
    assert r["best"] == "recompute"
    p_delta = {row["method"]: row["p_value"] for row in r["candidates"]}["delta"]
    assert p_delta >= 0.05
    assert (
        r["recommendation"]["method"] == "delta" and r["recommendation"]["python"] == "DeltaConfig(window=256, sink=64)"
    )
    assert "recommended: delta" in r["note"]
    # Δ now above recompute on every document (p 2/256), λ = auto level with recompute (up and down): λ = auto
    for i, d in enumerate(sorted(nll["recompute"])):
        nll["delta"][d] = nll["recompute"][d] + rng.uniform(0.01, 0.03)
        nll["delta_auto"][d] = nll["recompute"][d] + (-1) ** i * rng.uniform(0.005, 0.007)
    r = cli_calibrate.calibration(cands, nll, length=4096, cont=1024)
    rows = {row["method"]: row for row in r["candidates"]}
    assert rows["delta"]["p_value"] == pytest.approx(2 / 256)
    assert r["recommendation"]["method"] == "delta_auto" and "delta significantly worse" in r["note"]


# ---------------------------------------------------------------------------------------------
# end to end on the bundled SmolLM2 (CPU)


def test_calibrate_end_to_end_and_resume(tmp_path, run_cli):
    out = tmp_path / "cal"
    argv = ["eval", "calibrate", "--length", "512", "--continuation", "64", "--docs", "3", "--batch-size", "3"]
    argv += ["--out", out, *SMALL]
    rc, stdout, err = run_cli(argv, with_stdout=True)
    assert rc == 0, err
    recs = list(read_records([out / "ppl.jsonl"], "cppl"))
    assert len(recs) == 9 and all(r["length"] == 512 and r["cont"] == 64 and r["tokens"] == 64 for r in recs)
    # the best candidate, recomputed from the records: the lowest mean NLL per token over the documents
    nll = defaultdict(list)
    for r in recs:
        nll[r["method"]].append(r["nll_sum"] / r["tokens"])
    assert set(nll) == {"delta", "delta_auto", "recompute"} and all(len(v) == 3 for v in nll.values())
    ppl = {m: math.exp(sum(v) / len(v)) for m, v in nll.items()}
    best = min(ppl, key=ppl.get)
    result = json.loads((out / "calibrate.json").read_text())
    assert result["complete"] and result["best"] == best
    # the rule, applied independently: the first candidate (in --candidates order) whose per-document NLLs are not
    # significantly above the best's; with 3 documents no two-sided p can fall below 2/8, so that is the first
    docs = sorted({r["doc"] for r in recs})
    per_doc = {m: {r["doc"]: r["nll_sum"] / r["tokens"] for r in recs if r["method"] == m} for m in nll}
    order = ["delta", "delta_auto", "recompute"]
    ok = [
        m
        for m in order
        if m == best
        or paired_permutation_test(
            [per_doc[m][d] for d in docs], [per_doc[best][d] for d in docs], alternative="two-sided"
        ).p_value
        >= 0.05
    ]
    chosen = ok[0]
    assert result["recommendation"]["method"] == chosen == "delta"
    assert "with 3 documents no difference can reach p < 0.05" in result["note"]
    assert [c["method"] for c in result["candidates"]] == sorted(ppl, key=ppl.get)
    for c in result["candidates"]:
        assert c["ppl"] == pytest.approx(ppl[c["method"]], rel=1e-9)
    assert len(result["documents"]) == 3 and result["length"] == 512 and result["prefill"] == 448
    # the last printed line is Python that builds the best candidate's config
    last = stdout.strip().splitlines()[-1]
    built = eval(last, {"DeltaConfig": delta_attn.DeltaConfig})
    want = parse_method(chosen, {"window": 32, "sink": 8, "gamma": 16}).config
    assert canonical_config(built) == canonical_config(want) and last.startswith(result["recommendation"]["python"])
    assert ("not significant" in stdout) == (not result["significant"])
    # each clause of the note is a printed line of its own, and the JSON keeps them joined
    assert result["note"] == "; ".join(result["notes"]) and len(result["notes"]) >= 2
    assert all(f"\n{clause}\n" in stdout for clause in result["notes"])
    for m in ppl:
        assert f"\n{m} " in stdout

    # the same command again: every record is reused, nothing is scored, the same recommendation
    rc, stdout2, err = run_cli(argv, with_stdout=True)
    assert rc == 0, err
    assert len(list(read_records([out / "ppl.jsonl"], "cppl"))) == 9
    assert "reusing 9 earlier record(s)" in (out / "calibrate.log").read_text()
    assert stdout2.strip().splitlines()[-1] == last
