"""``eval report`` with the records of several models: one section per model, never a pooled cell.

Two synthetic models share task, length and method names (as Qwen2.5-Coder at 32K and SmolLM2 at 8K
do); their scores are fresh random numbers every run, and each model's section must show exactly the
numbers of its own records (numpy means of them), while one model's document stays as it was.
"""

from __future__ import annotations

import numpy as np
import pytest

from delta_attn.cli import main
from delta_attn.eval.document import Inputs, demote, results_document
from delta_attn.eval.model_groups import UNNAMED_GROUP, split_by_model
from delta_attn.eval.records import JsonlWriter, Records, record_config
from delta_attn.eval.ruler import PROMPT_FORMAT
from delta_attn.eval.tables import len_name
from delta_attn.methods import parse_method
from delta_attn.models.registry import QWEN25_CODER_15B, SMOLLM2

DEFAULTS = {"sparse": "streaming", "window": 64, "sink": 16, "gamma": 8}
PROMPT = {"reserve": 128, "chat": True, "format": PROMPT_FORMAT}
METHODS = ("dense", "sparse", "recompute", "delta")
TASKS = ("niah_single_1", "vt", "qa_1")
# Qwen's file under another name (reassembled on a GPU machine): known by its hash
QWEN_ID = f"model.gguf@sha256:{QWEN25_CODER_15B.sha256[:12]}"
SMOL_ID = SMOLLM2.model_id


def _header(run_id: str, model_id: str | None = None, option: str | None = None) -> dict:
    header = {
        "record": "run",
        "run_id": run_id,
        "argv": ["/x/cli.py", "eval", "ruler", "--run", run_id],
        "dtype": "float32",
        "device": "cpu",
        "device_name": "x86_64",
        "model_layers": 4,
        "options": {"model": option} if option else {},
    }
    if model_id:
        header["model_id"] = model_id
    return header


def _model_run(rng, model_id: str, run_id: str, length: int, n: int) -> tuple[list[dict], dict]:
    """(a run header and its samples, scores by (method, task)): fresh random scores in [0, 1)."""
    recs, scores = [_header(run_id, model_id)], {}
    for m in METHODS:
        config = record_config(parse_method(m, DEFAULTS).canonical(), model=model_id, dtype="float32", prompt=PROMPT)
        for t in TASKS:
            scores[m, t] = rng.random(n)
            recs += [
                {
                    "record": "sample",
                    "task": t,
                    "length": length,
                    "index": i,
                    "seed": 0,
                    "method": m,
                    "score": float(s),
                    "run_id": run_id,
                    "config": config,
                }
                for i, s in enumerate(scores[m, t])
            ]
    return recs, scores


def _write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    with JsonlWriter(path) as w:
        w.write(records)


def _sections(doc: str) -> dict[str, str]:
    """Level-2 heading -> its text up to the next level-2 heading."""
    out = {}
    for chunk in doc.split("\n## ")[1:]:
        heading, _, body = chunk.partition("\n")
        out[heading] = body
    return out


def _row(text: str, method: str) -> list[str]:
    """The cells of ``method``'s row in the first table of ``text`` that has one."""
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {method} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


@pytest.fixture
def two_models(tmp_path):
    rng = np.random.default_rng()
    qwen, qwen_scores = _model_run(rng, QWEN_ID, "qwen0run0001", 8192, int(rng.integers(3, 7)))
    smol, smol_scores = _model_run(rng, SMOL_ID, "smol0run0001", 2048, int(rng.integers(3, 7)))
    _write(tmp_path / "qwen" / "ruler.jsonl", qwen)
    _write(tmp_path / "smol" / "ruler.jsonl", smol)
    return tmp_path, {QWEN25_CODER_15B.title: (8192, qwen_scores), SMOLLM2.title: (2048, smol_scores)}


def _document(*dirs, **kw) -> str:
    inputs = Inputs.find(list(dirs))
    return results_document(inputs, Records.load(inputs.ruler), Records.load(inputs.ppl), n_resamples=99, **kw)


def test_each_model_section_has_exactly_its_own_numbers(two_models):
    root, expected = two_models
    doc = _document(root / "qwen", root / "smol")
    qwen, smol = QWEN25_CODER_15B.title, SMOLLM2.title
    assert doc.startswith(f"# Results: Δ attention on {qwen} and {smol} (offline RULER-style suite)\n")
    sections = _sections(doc)
    assert list(sections)[:3] == ["Models", qwen, smol]
    for title, (length, scores) in expected.items():
        section = sections[title]
        n = len(scores["dense", TASKS[0]])
        overview = _row(sections["Models"], title)
        assert overview[0] == len_name(length) and overview[1] == str(len(TASKS)) and overview[-1] == "1"
        assert f"RULER {n} per (task, length, method), {n * len(METHODS) * len(TASKS)} generations" in overview[3]
        # the heading levels of the one-model document, one down; only this model's length
        assert "\n### Setup (from the run records)\n" in section and "\n## " not in section
        assert f"\n#### {len_name(length)}\n" in section and section.count("\n#### ") == 1
        average = section[section.index("### RULER-style accuracy") :]
        per_task = section[section.index(f"#### {len_name(length)}") :]
        for m in METHODS:
            task_means = [100 * np.mean(scores[m, t]) for t in TASKS]
            cell, avg = _row(average, m)
            assert float(cell.split()[0]) == pytest.approx(np.mean(task_means), abs=0.051)
            assert float(avg) == pytest.approx(np.mean(task_means), abs=0.051)
            cells = _row(per_task, m)
            for t, (shown, want) in enumerate(zip(cells, task_means)):
                assert float(shown) == pytest.approx(want, abs=0.051), (title, m, TASKS[t])
        assert f"samples per (task, length, method): {n} ({n * len(METHODS) * len(TASKS)} generations)" in section


def test_one_model_document_is_the_model_section_as_it_was(two_models):
    root, _ = two_models
    single = _document(root / "qwen")
    qwen = QWEN25_CODER_15B.title
    assert single.startswith(f"# Results: Δ attention on {qwen} (offline RULER-style suite)\n")
    assert "\n## Models\n" not in single and "\n## Setup (from the run records)\n" in single
    # the same content as in a document of two models, there one heading level down under the model's name
    body = single[single.index("## Setup") :]
    both = _document(root / "qwen", root / "smol")
    assert f"\n## {qwen}\n\n{demote(body)}\n## {SMOLLM2.title}\n" in both


def test_plots_go_to_a_folder_per_model(two_models):
    root, _ = two_models
    doc = _document(root / "qwen", root / "smol", plots_dir=root / "plots", rel_to=root)
    sections = _sections(doc)
    for title, folder in (
        (QWEN25_CODER_15B.title, "qwen2.5-coder-1.5b-instruct"),
        (SMOLLM2.title, "smollm2-135m-instruct"),
    ):
        assert (root / "plots" / folder / "ruler.png").stat().st_size > 5000
        assert f"](plots/{folder}/ruler.png)" in sections[title]
    assert not (root / "plots" / "ruler.png").exists()


def test_notes_go_to_their_model_and_a_note_on_two_models_is_refused(two_models, capsys):
    root, _ = two_models
    smol_note, mixed = root / "smol.md", root / "mixed.md"
    smol_note.write_text("<!-- runs: smol0run0001 -->\n## Findings\nSmolLM2 only.\n", encoding="utf-8")
    mixed.write_text("<!-- runs: qwen0run0001 smol0run0001 -->\n## Findings\nBoth.\n", encoding="utf-8")
    out = root / "R.md"
    base = ["eval", "report", "--inputs", str(root / "qwen"), str(root / "smol"), "--out", str(out)]
    assert main([*base, "--resamples", "9", "--notes", str(mixed)]) == 2
    err = capsys.readouterr().err
    assert "names runs of 2 models" in err and "one notes file per model" in err and "Traceback" not in err
    assert f"{QWEN25_CODER_15B.title}: qwen0run0001" in err and f"{SMOLLM2.title}: smol0run0001" in err
    assert not out.exists()
    assert main([*base, "--resamples", "9", "--notes", str(smol_note)]) == 0
    sections = _sections(out.read_text(encoding="utf-8"))
    assert "SmolLM2 only." not in sections[QWEN25_CODER_15B.title]
    note = sections[SMOLLM2.title].index("Hand-written notes on runs `smol0run0001`")
    assert "\n### Findings\nSmolLM2 only." in sections[SMOLLM2.title]  # demoted with the rest of the section
    assert sections[SMOLLM2.title].index("### How it is measured") < note < sections[SMOLLM2.title].index("### Runs")


def test_models_are_known_by_hash_by_old_model_option_and_unnamed_records_form_their_own_group(tmp_path):
    """Old SmolLM2 runs name their model only by ``--model smollm2`` (no model id, no record configs); newer
    ones by a hash under the file name model.gguf; records that name no model are grouped, and labelled, apart."""
    rng = np.random.default_rng()
    new, _ = _model_run(rng, f"model.gguf@sha256:{SMOLLM2.sha256[:12]}", "smolnew", 1024, 2)
    old = [_header("smolold", option="smollm2")] + [
        {
            "record": "sample",
            "task": "vt",
            "length": 1024,
            "index": i,
            "method": "old_dense",
            "score": float(s),
            "seed": 0,
            "run_id": "smolold",
        }
        for i, s in enumerate(rng.random(3))
    ]
    unnamed = [
        {"record": "sample", "task": "vt", "length": 512, "index": i, "method": "dense", "score": float(s), "seed": 0}
        for i, s in enumerate(rng.random(4))
    ]
    other, _ = _model_run(rng, "mine.gguf@sha256:0123456789ab", "mine", 512, 2)
    same_name, _ = _model_run(rng, "mine.gguf@sha256:ba9876543210", "mine2", 512, 2)
    analysis = {"meta": {"run": _header("an", option="smollm2"), "samples": 2}}
    needles = [{"meta": {"run": _header("nd", model_id=QWEN_ID)}}, {"meta": {}}]
    groups = split_by_model([*new, *old, *unnamed, *other, *same_name], [], [], [analysis], needles)
    by_key = {g.key: g for g in groups}
    assert list(by_key) == [
        QWEN25_CODER_15B.title,
        SMOLLM2.title,
        "mine.gguf@sha256:0123456789ab",  # two files of one name, different contents: never pooled
        "mine.gguf@sha256:ba9876543210",
        None,
    ]
    assert by_key[SMOLLM2.title].ruler == [*new, *old] and by_key[SMOLLM2.title].analysis == [analysis]
    assert by_key[None].ruler == unnamed and by_key[None].needles == [needles[1]]
    assert by_key[QWEN25_CODER_15B.title].needles == [needles[0]] and not by_key[QWEN25_CODER_15B.title].ruler
    assert sum(len(g.ruler) for g in groups) == len(new) + len(old) + len(unnamed) + len(other) + len(same_name)

    _write(tmp_path / "old" / "ruler.jsonl", old)
    _write(tmp_path / "new" / "ruler.jsonl", new)
    _write(tmp_path / "unnamed" / "ruler.jsonl", unnamed)
    smol_only = _document(tmp_path / "old", tmp_path / "new")
    assert smol_only.startswith(f"# Results: Δ attention on {SMOLLM2.title} (offline")  # one model: no sections
    assert "\n## Models\n" not in smol_only
    doc = _document(tmp_path / "old", tmp_path / "new", tmp_path / "unnamed")
    assert doc.startswith(f"# Results: Δ attention on {SMOLLM2.title} and records that name no model (")
    sections = _sections(doc)
    assert list(sections)[:3] == ["Models", SMOLLM2.title, UNNAMED_GROUP]
    assert "| old_dense |" in sections[SMOLLM2.title] and "| old_dense |" not in sections[UNNAMED_GROUP]
    unnamed_avg = 100 * np.mean([r["score"] for r in unnamed])
    assert float(_row(sections[UNNAMED_GROUP], "dense")[0]) == pytest.approx(unnamed_avg, abs=0.051)
    assert "512" not in _row(sections["Models"], SMOLLM2.title)[0]


def test_demote_leaves_code_blocks_alone():
    text = "## A\n### B\n```bash\n# a shell comment\n```\n#### C\nnot # a heading"
    assert demote(text) == "### A\n#### B\n```bash\n# a shell comment\n```\n##### C\nnot # a heading"
