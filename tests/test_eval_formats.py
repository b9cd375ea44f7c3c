"""Prompt-format variants of the NIAH tasks (task@noheader+hyphen+text), `eval needle`'s metrics and the
report's "Why the prompt format matters" section."""

from __future__ import annotations

import math
import re

import pytest
import torch

from delta_attn.config import DeltaConfig
from delta_attn.eval import ruler, words

HEADER = "A special magic number is hidden within the following text."


@pytest.fixture(scope="module")
def tok(smol_tokenizer):
    return smol_tokenizer


def _needle_sentence(s) -> str:
    return ruler.NIAH_NEEDLE.format(type_needle_v="numbers", key=s.meta["query"], value=s.answers[0])


@pytest.mark.parametrize(
    "task, header, hyphen, haystack",
    [
        ("niah_single_1", True, False, "noise"),
        ("niah_single_1@noheader", False, False, "noise"),
        ("niah_single_1@hyphen", True, True, "noise"),
        ("niah_single_1@noheader+hyphen", False, True, "noise"),
        ("niah_single_1@noheader+hyphen+text", False, True, "essay"),
    ],
)
def test_format_variants_build_valid_prompts(tok, ruler_builder, task, header, hyphen, haystack):
    target = ruler.prompt_tokens_for(1024)
    for index in (0, 1, 2):
        s = ruler.generate_sample(ruler_builder, task, 1024, index)
        text = tok.decode(s.input_ids)
        assert s.task == task and s.prompt_tokens == target
        assert (HEADER in text) == header
        assert s.meta["haystack"] == haystack and ("The grass is green." in text) == (haystack == "noise")
        first, second = s.meta["query"].split("-")
        assert first in (words.NOUNS if hyphen else words.ADJECTIVES) and first != second
        assert second in words.NOUNS
        assert text.count(s.answers[0]) == 1 and text.count(_needle_sentence(s)) == 1
        # the question after the haystack stays in every format
        assert f"What is the special magic number for {s.meta['query']} mentioned in the provided text?" in text
        depth = s.meta["depths"][0]
        assert 0 <= depth <= 100
        lo, hi = s.meta["context_span"]
        rel = 100 * (s.meta["needle_offsets"][0] - lo) / (hi - lo)
        assert abs(rel - depth) <= 6, (rel, depth)  # nearest unit boundary (noise units ~ 25 tokens)
        again = ruler.generate_sample(ruler_builder, task, 1024, index)
        assert again.input_ids == s.input_ids and again.meta == s.meta


def test_variants_share_value_and_depth_with_the_default(ruler_builder):
    for index in range(3):
        base = ruler.generate_sample(ruler_builder, "niah_single_1", 1024, index)
        for task in ("niah_single_1@noheader", "niah_single_1@hyphen", "niah_single_1@noheader+hyphen"):
            s = ruler.generate_sample(ruler_builder, task, 1024, index)
            assert s.answers == base.answers and s.meta["depths"] == base.meta["depths"]
            assert s.input_ids != base.input_ids
    a = ruler.generate_sample(ruler_builder, "niah_single_1@noheader", 1024, 0)
    b = ruler.generate_sample(ruler_builder, "niah_single_1@noheader", 1024, 0, seed=1)
    assert a.answers != b.answers


@pytest.mark.parametrize("task", ["niah_single_1", "niah_single_1@noheader+text", "niah_single_2@noise"])
def test_needle_spans_are_the_needle_tokens(tok, ruler_builder, task):
    for index in (0, 1):
        s = ruler.generate_sample(ruler_builder, task, 1024, index)
        ((a, b),) = s.meta["needle_spans"]
        assert tok.decode(s.input_ids[a:b]).strip() == _needle_sentence(s)
        assert tok.decode(s.input_ids[a : a + 1]).strip()  # starts at a token of the sentence, not the separator


def test_task_names_validate_and_canonicalise():
    assert ruler.parse_tasks("niah_single_1@hyphen+noheader,niah_single_1@noheader+hyphen") == [
        "niah_single_1@noheader+hyphen"
    ]
    assert ruler.parse_tasks("vt,niah_single_1@text") == ["vt", "niah_single_1@text"]
    spec = ruler.task_spec("niah_single_1@text+noheader")
    assert spec.base == "niah_single_1" and spec.formats == ("noheader", "text") and spec.needs_texts
    for bad, says in [
        ("niah_single_1@bogus", "@noheader"),
        ("niah_single_1@", "(empty)"),
        ("vt@noheader", "NIAH tasks only"),
        ("niah_single_2@text", "essay haystack"),
        ("niah_single_1@text+noise", "exclude each other"),
        ("niah_multikey_3@hyphen", "uuids keys"),
        ("niah_single_1@hyphen+hyphen", "twice"),
        ("niah_single_9@noheader", "unknown task"),
    ]:
        with pytest.raises(ValueError, match=re.escape(says)):
            ruler.parse_tasks(bad)


def test_cli_rejects_unknown_formats_with_the_known_ones(capsys, tmp_path):
    from delta_attn.cli import main

    for argv in (
        ["eval", "ruler", "--tasks", "niah_single_1@bogus", "--out", tmp_path],
        ["eval", "needle", "--task", "niah_single_1@bogus", "--out", tmp_path],
    ):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in argv])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "unknown prompt format 'bogus'" in err and "@noheader" in err and "@hyphen" in err


# ---------------------------------------------------------------------------------------------
# needle metrics


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,  # sharper attention than the default init: sparse really differs from dense
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def test_needle_metrics_dense_is_exact_and_mass_matches_a_hand_computation(tiny_model, seed):
    from delta_attn.eval import analysis, needle

    ids = torch.randint(0, 128, (1, 100), generator=torch.Generator().manual_seed(seed))
    spans = [[50, 53], [52, 57]]  # overlapping spans count each token once
    pos = needle.needle_positions(spans)
    assert pos == list(range(50, 57))
    dense = analysis.capture_run(tiny_model, ids, None)
    again = analysis.capture_run(tiny_model, ids, None)
    m = needle.needle_metrics(dense, again, pos)
    assert m["layers"] == [0, 1, 2] and "delta_cos" not in m
    # two dense runs write bit-identical caches: cosine 1 up to the rounding of the cosine itself
    assert all(torch.equal(dense.layers[li]["k"], again.layers[li]["k"]) for li in m["layers"])
    assert m["k_cos"] == pytest.approx([1.0] * 3, abs=1e-12) and m["v_cos"] == pytest.approx([1.0] * 3, abs=1e-12)
    for li, mass in zip(m["layers"], m["mass"]):
        q, k = dense.layers[li]["q"].double(), dense.layers[li]["k"].double()
        for h in range(q.shape[1]):  # 4 query heads over 2 KV heads
            s = k[0, h // 2] @ q[0, h, -1] / math.sqrt(q.shape[-1])
            p = torch.softmax(s, dim=-1)
            assert 0 < float(p[50:57].sum()) < 1
        hand = sum(
            float(torch.softmax(k[0, h // 2] @ q[0, h, -1] / math.sqrt(q.shape[-1]), -1)[50:57].sum()) for h in range(4)
        )
        assert mass == pytest.approx(hand / 4, rel=1e-5)

    # a method run whose later layers' needle keys/values differ: cosines as computed by hand
    cfg = DeltaConfig(window=8, sink=4, gamma=8, backend="reference")
    run = analysis.Capture(config=cfg)
    gen = torch.Generator().manual_seed(seed)
    for li, c in dense.layers.items():
        noise = 0.5 * li * torch.randn(c["k"].shape, generator=gen)
        run.layers[li] = {**c, "k": c["k"] + noise, "v": c["v"] - noise}
    s = needle.needle_metrics(dense, run, pos, config=cfg)
    for li in (0, 2):
        a, b = run.layers[li]["k"][0, :, 50:57].double(), dense.layers[li]["k"][0, :, 50:57].double()
        hand = float(((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).mean())
        assert s["k_cos"][li] == pytest.approx(hand, abs=1e-9)
    assert s["k_cos"][0] == pytest.approx(1.0, abs=1e-12) and s["k_cos"][2] < 0.999 and s["v_cos"][2] < 0.999
    delta = needle.anchor_deltas(run.layers[1]["q"], run.layers[1]["k"], run.layers[1]["v"], cfg, 0.25)
    x, y = delta[0, :, :-1].double(), delta[0, :, 1:].double()
    hand = float(((x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))).mean())
    assert s["delta_cos"][1] == pytest.approx(hand, abs=1e-9) and abs(hand) < 1
    summary = needle.summarize([m, m])
    assert summary["prompts"] == 2 and summary["mass"] == pytest.approx(m["mass"])


@pytest.mark.parametrize("n, d, group", [(100, 64, 2), (77, 80, 1)])
def test_anchor_deltas_match_the_float64_oracle(seed, n, d, group):
    from delta_attn.eval import needle
    from oracle import make_qkv, oracle_attention

    cfg = DeltaConfig(window=8, sink=4, gamma=8, backend="reference")
    q, k, v = make_qkv(seed, 2, 2, group, n, d, dtype=torch.float32)
    got = needle.anchor_deltas(q, k, v, cfg, 1 / math.sqrt(d))
    dense = oracle_attention(q, k, v, cfg.replace(mode="dense"))
    sparse = oracle_attention(q, k, v, cfg.replace(mode="sparse"))
    anchors = list(range(16, n, 8))  # multiples of γ from sink + window = 12 on
    want = (dense - sparse)[:, :, anchors]
    assert got.shape == want.shape
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-4)
    assert want.abs().amin(dim=-1).max() > 0


# ---------------------------------------------------------------------------------------------
# report


def _records():
    recs = []
    for task, scores in {
        "niah_single_1": {"recompute": [1, 1, 1, 0], "delta": [1, 0, 0, 0], "dense": [1, 1, 1, 1]},
        "niah_single_1@noheader": {"recompute": [0, 0, 0, 1], "delta": [1, 1, 1, 1], "dense": [1, 1, 1, 1]},
        "vt": {"recompute": [1, 1, 1, 1], "delta": [1, 1, 1, 1], "dense": [1, 1, 1, 1]},
    }.items():
        for method, xs in scores.items():
            for i, x in enumerate(xs):
                recs.append(dict(record="sample", task=task, length=1024, index=i, method=method, score=x, seed=0))
    return recs


def test_report_has_the_prompt_format_section(tmp_path):
    import json

    from delta_attn.eval.document import Inputs, results_document
    from delta_attn.eval.format_report import format_section
    from delta_attn.eval.records import Records
    from delta_attn.eval.tables import RulerData

    d = RulerData.from_records(_records())
    needle_result = {
        "meta": {"task": "niah_single_1@noheader", "samples": 2, "prompt_tokens": 896},
        "methods": {
            "dense": {"layers": [0, 1, 2, 3], "mass": [0.1, 0.2, 0.5, 0.3], "k_cos_mean": 1.0, "mass_mean": 0.27},
            "delta": {"layers": [0, 1, 2, 3], "mass": [0.1, 0.2, 0.4, 0.3], "delta_cos_mean": 0.5},
        },
    }
    text = format_section(d, [needle_result], n_resamples=999)
    assert "## Why the prompt format matters" in text
    rows = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "RULER default" in rows and "@noheader" in rows and "vt" not in text.split("Needle analysis")[0]
    assert "-50.0 (p=" in rows["RULER default"] and "+75.0 (p=" in rows["@noheader"]
    assert "75.0 (n=4)" in rows["RULER default"]  # recompute's accuracy in the default format
    assert "0.400 (layer 2)" in text  # Δ's needle mass at the dense run's peak layer in the upper half
    assert format_section(RulerData.from_records([]), []) == ""
    needle_only = format_section(RulerData.from_records([]), [needle_result])  # no variant records
    assert "## Needle analysis" in needle_only and "prompt format" not in needle_only

    (tmp_path / "ruler.jsonl").write_text("\n".join(json.dumps(r) for r in _records()) + "\n")
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "needle.json").write_text(json.dumps(needle_result))
    inputs = Inputs.find([tmp_path])
    assert len(inputs.needle) == 1
    doc = results_document(inputs, Records.load(inputs.ruler), Records.load([]), n_resamples=999)
    assert "## Why the prompt format matters" in doc
    avg = doc.split("## RULER-style accuracy: average over the ")[1]
    assert avg.startswith("2 task(s)")  # the variant is not one of the averaged tasks
