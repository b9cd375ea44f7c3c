"""RULER-style generators with the real SmolLM2 tokenizer: exact lengths, needles, answers, determinism."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from delta_attn.eval import ruler, words


@pytest.fixture(scope="module")
def tok(smol_tokenizer):
    return smol_tokenizer


def _text(tok, s):
    return tok.decode(s.input_ids)


@pytest.mark.parametrize("length", [1024, 4096])
def test_every_task_has_exact_length_and_its_answers(tok, ruler_builder, length):
    target = ruler.prompt_tokens_for(length)
    assert target == length - 128
    for task in ruler.TASK_NAMES:
        for index in (0, 1):
            s = ruler.generate_sample(ruler_builder, task, length, index)
            assert s.prompt_tokens == target, (task, s.prompt_tokens)
            text = _text(tok, s)
            # the decoded prompt re-tokenises to (almost) the same length: the pieces meet at natural splits
            assert abs(len(tok.encode(text, add_special_tokens=False)) - target) <= 0.02 * target, task
            assert s.answers and all(a in text for a in s.answers), (task, s.answers)
            assert text.startswith("<|im_start|>system") and "<|im_start|>assistant\n" in text
            family = ruler.TASKS[task].family
            ruler_budget = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}[family]
            gold = len(tok.encode(ruler.answer_text(family, s.answers), add_special_tokens=False))
            items = 1 if family == "qa" else len(s.answers)
            assert s.meta["answer_tokens"] == gold
            assert s.max_new_tokens == max(ruler_budget, gold + 2 * items + 8), (task, s.max_new_tokens, gold)
            assert s.metric == ("part" if task in ("qa_1", "qa_2") else "all")


def test_prompts_end_with_the_answer_prefix(tok, ruler_builder):
    s = ruler.generate_sample(ruler_builder, "niah_single_2", 1024, 0)
    assert _text(tok, s).endswith(
        f"<|im_start|>assistant\nThe special magic number for {s.meta['query']} mentioned in the provided text is"
    )
    s = ruler.generate_sample(ruler_builder, "niah_multivalue", 1024, 0)
    assert _text(tok, s).endswith("mentioned in the provided text are")
    s = ruler.generate_sample(ruler_builder, "qa_1", 1024, 0)
    assert _text(tok, s).endswith("<|im_start|>assistant\nAnswer:")


def test_deterministic_by_seed_and_index(tok):
    b1, b2 = ruler.PromptBuilder(tok), ruler.PromptBuilder(tok)
    for task in ("niah_single_2", "niah_multikey_3", "cwe", "fwe", "qa_2", "vt"):
        a = ruler.generate_sample(b1, task, 2048, 3, seed=7)
        b = ruler.generate_sample(b2, task, 2048, 3, seed=7)
        assert a.input_ids == b.input_ids and a.answers == b.answers, task
        assert ruler.generate_sample(b1, task, 2048, 4, seed=7).input_ids != a.input_ids, task
        assert ruler.generate_sample(b1, task, 2048, 3, seed=8).input_ids != a.input_ids, task


@pytest.mark.parametrize("task", ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_2"])
def test_needle_sits_at_its_recorded_depth(tok, ruler_builder, task):
    for index in range(6):
        s = ruler.generate_sample(ruler_builder, task, 4096, index)
        (off,), (depth,) = s.meta["needle_offsets"], s.meta["depths"]
        needle = ruler.NIAH_NEEDLE.format(
            type_needle_v="uuids" if task == "niah_single_3" else "numbers", key=s.meta["query"], value=s.answers[0]
        )
        assert tok.decode(s.input_ids[off : off + 80]).lstrip().startswith(needle)
        # the needle's token position within the context is its depth (to within one haystack unit)
        a, b = s.meta["context_span"]
        assert tok.decode(s.input_ids[a - 3 : a]).endswith("afterwards.")
        assert tok.decode(s.input_ids[b : b + 3]).startswith("\nWhat is")
        frac = (off - a) / (b - a)
        assert abs(frac - depth / 100) < 0.03, (task, index, frac, depth)
        assert _text(tok, s).count(s.answers[0]) == 1


def test_multi_needle_tasks(tok, ruler_builder):
    s = ruler.generate_sample(ruler_builder, "niah_multivalue", 2048, 0)
    text = _text(tok, s)
    assert len(s.answers) == 4 and len(set(s.answers)) == 4
    assert text.count(f"for {s.meta['query']} is:") == 4
    s = ruler.generate_sample(ruler_builder, "niah_multiquery", 2048, 0)
    keys = re.split(r", and |, ", s.meta["query"])
    assert len(keys) == 4 and len(s.answers) == 4
    text = _text(tok, s)
    for k, v in zip(keys, s.answers):
        assert f"One of the special magic numbers for {k} is: {v}." in text
    s = ruler.generate_sample(ruler_builder, "niah_multikey_1", 2048, 0)
    text = _text(tok, s)
    assert text.count("One of the special magic numbers for") == 4  # 1 queried + 3 distractor needles
    s = ruler.generate_sample(ruler_builder, "niah_multikey_3", 2048, 0)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", s.answers[0])


def test_variable_tracking_chain_in_order(tok, ruler_builder):
    s = ruler.generate_sample(ruler_builder, "vt", 2048, 1)
    text = _text(tok, s)
    real = text[text.rindex("Memorize and track") :]  # after the worked example
    names, value = s.answers, s.meta["value"]
    pos = [real.index(f"VAR {names[0]} = {value}")]
    for a, b in zip(names, names[1:]):
        pos.append(real.index(f"VAR {b} = VAR {a}"))
    assert pos == sorted(pos)
    assert f"assgined the value {value}, they are:" in real


def test_cwe_and_fwe_answers_are_the_most_frequent(tok, ruler_builder):
    for length in (2048, 4096):
        s = ruler.generate_sample(ruler_builder, "cwe", length, 0)
        text = _text(tok, s)
        listing = text[text.rindex("Memorize the ones that appear most often.\n") : text.rindex("\nQuestion:")]
        counts = Counter(re.findall(r"\d+\. ([a-z]+)", listing))
        want = 30 if length >= 4096 else 6
        assert all(counts[w] == want for w in s.answers), (length, [counts[w] for w in s.answers])
        others = [c for w, c in counts.items() if w not in s.answers]
        assert max(others) < want
    s = ruler.generate_sample(ruler_builder, "fwe", 4096, 0)
    text = _text(tok, s)
    coded = text[text.index("coded words.") + len("coded words.") : text.index("\nQuestion:")].split()
    counts = Counter(w for w in coded if w != "...")
    top3 = [w for w, _ in counts.most_common(3)]
    assert top3 == s.answers and counts.most_common(4)[2][1] > counts.most_common(4)[3][1]


def test_qa_substitutes(tok, ruler_builder):
    for task in ("qa_1", "qa_2"):
        for index in range(4):
            s = ruler.generate_sample(ruler_builder, task, 2048, index)
            text = _text(tok, s)
            docs = re.split(r"\n\nDocument \d+:\n", text.split("The following are given documents.")[1])
            assert len(docs) - 1 >= s.meta["num_docs"]  # + a truncated filler document at the end
            gold = [docs[i] for i in s.meta["gold_docs"]]
            assert len(gold) == (1 if task == "qa_1" else 2)
            assert any(a in "".join(gold) for a in s.answers)
            others = [d for i, d in enumerate(docs) if i not in s.meta["gold_docs"] and i > 0]
            assert not any(a.lower() in d.lower() for d in others for a in s.answers)
            assert f"Question: {s.meta['question']}" in text


def test_parse_tasks_and_errors(ruler_builder):
    assert ruler.parse_tasks("all") == ruler.TASK_NAMES
    assert ruler.parse_tasks("qa") == ["qa_1", "qa_2"]
    assert len(ruler.parse_tasks("niah")) == 8 and len(ruler.parse_tasks("non_qa")) == 11
    assert ruler.parse_tasks("vt,niah_single_1,vt") == ["vt", "niah_single_1"]
    with pytest.raises(ValueError, match="unknown task"):
        ruler.parse_tasks("niah_single_9")
    with pytest.raises(ValueError, match="cwe at length 512"):
        ruler.generate_sample(ruler_builder, "cwe", 512, 0)


def test_cwe_fills_long_prompts_after_the_vocabulary_runs_out(tok, ruler_builder):
    """At 32K the ~1,200 listed words do not fill the prompt: made-up words, each once, fill the rest."""
    s = ruler.generate_sample(ruler_builder, "cwe", 32768, 1)
    assert s.prompt_tokens == 32768 - 128 and s.meta["made_up_words"] > 0
    body = _text(tok, s)
    body = body[body.index("Memorize the ones that appear most often.", 500) :]  # after the worked example
    listed = re.findall(r"\d+\. ([a-z]+)", body)
    counts = Counter(listed)
    assert all(counts[w] == 30 for w in s.answers)
    others = [c for w, c in counts.items() if w not in s.answers]
    assert max(others) <= 3 and sum(1 for c in others if c == 1) >= s.meta["made_up_words"] - 1  # the last: cut
    made_up = [w for w in counts if w not in words.CWE_WORDS]
    assert len(made_up) >= s.meta["made_up_words"] - 1
    assert not any(a in w for w in made_up for a in s.answers)  # no extra hidden occurrences of an answer
