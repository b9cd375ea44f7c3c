"""Any GGUF, everywhere: a tiny Qwen2 GGUF the tests write (random weights, a byte-level tokenizer that splits
digits like Qwen's, ChatML) through the loader, the RULER prompts and budgets, and the commands (issue 15)."""

from __future__ import annotations

import json

import pytest
import torch

from delta_attn import models
from delta_attn.eval import ruler
from tiny_gguf import write_tiny_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(path of a fresh tiny GGUF, the cache folder it is de-quantised into)."""
    root = tmp_path_factory.mktemp("tiny-gguf")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(models.CACHE_ENV, str(root / "cache"))
        yield write_tiny_gguf(root / "tiny-qwen2.gguf", context=3000, layers=2), root / "cache"


@pytest.fixture(scope="module")
def loaded(tiny):
    return models.load_model(str(tiny[0]), device="cpu")


def test_facts_from_the_header_and_a_loadable_model(tiny, loaded):
    path, cache = tiny
    info = models.model_info(str(path))
    assert (info.context_length, info.num_layers, info.name) == (3000, 2, None)
    assert info.model_id == f"tiny-qwen2.gguf@sha256:{models.file_sha256(path)[:12]}"
    model, tok = loaded
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.dtype == torch.float32
    assert (model.config.num_hidden_layers, model.config.max_position_embeddings) == (2, 3000)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
    assert tok.padding_side == "left" and tok.chat_template and tok.eos_token == "<|im_end|>"
    digits = tok.encode(" 4071923", add_special_tokens=False)
    assert [tok.decode([i]) for i in digits] == [" ", "4", "0", "7", "1", "9", "2", "3"]
    # the de-quantised copy is cached and gives the same model
    folder = cache / "models" / models.file_sha256(path)[:16]
    assert (folder / models.MANIFEST).is_file()
    fresh, _ = models._from_folder(folder)
    ids = torch.randint(0, len(tok) - 3, (1, 40))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, fresh(ids).logits)


def test_ruler_prompts_and_budgets_in_this_tokenizer(loaded):
    _, tok = loaded
    builder = ruler.PromptBuilder(tok)
    for task in ("niah_multivalue", "niah_multikey_3", "vt", "fwe"):
        s = ruler.generate_sample(builder, task, 2048, 0)  # byte-level pieces: vt's worked example needs > 1K
        spec = ruler.TASKS[task]
        assert s.prompt_tokens == 2048 - ruler.DEFAULT_RESERVE
        text = tok.decode(s.input_ids)
        assert text.startswith("<|im_start|>user\n") and "<|im_end|>\n<|im_start|>assistant\n" in text
        gold = len(tok.encode(ruler.answer_text(spec.family, s.answers), add_special_tokens=False))
        assert s.meta["answer_tokens"] == gold and s.max_new_tokens >= gold + 2 * len(s.answers)
        if task == "niah_multivalue":  # four 7-digit values: a token per digit
            assert gold >= 4 * 7 + 3 and s.max_new_tokens == max(128, gold + 2 * 4 + 8)
        if task == "vt":  # byte-level names: far more than RULER's 30 tokens would hold
            assert gold > 25 and s.max_new_tokens == gold + 2 * 5 + 8 > 30
    with pytest.raises(ValueError, match=r"more than the 40-token reserve: pass --reserve \d+ or more"):
        ruler.generate_sample(builder, "vt", 2048, 0, reserve=40)


def test_eval_ruler_on_the_gguf(tiny, tmp_path, run_cli):
    path, _ = tiny
    argv = ["eval", "ruler", "--model", path, "--tasks", "niah_multivalue,vt", "--lengths", "2048", "--samples", "1"]
    argv += ["--methods", "dense,delta", "--window", "64", "--sink", "8", "--gamma", "16", "--batch-size", "2"]
    rc, _, err = run_cli([*argv, "--out", tmp_path / "r", "--no-progress", "--no-summary"], with_stdout=True)
    assert rc == 0, err
    lines = (tmp_path / "r" / "ruler.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    run = next(r for r in records if r["record"] == "run")
    samples = [r for r in records if r["record"] == "sample"]
    assert run["model_id"] == models.model_info(str(path)).model_id
    cells = {(t, m) for t in ("niah_multivalue", "vt") for m in ("dense", "delta")}
    assert {(r["task"], r["method"]) for r in samples} == cells
    builder = ruler.PromptBuilder(models.load_tokenizer(str(path)))
    for r in samples:
        expected = ruler.generate_sample(builder, r["task"], 2048, 0)
        assert r["max_new_tokens"] == expected.max_new_tokens and r["gen_tokens"] <= r["max_new_tokens"]
        assert r["config"]["model"] == run["model_id"] and r["config"]["prompt"]["format"] == ruler.PROMPT_FORMAT


def test_a_resumed_eval_ruler_builds_only_the_prompts_still_needed(tiny, tmp_path, run_cli):
    """Samples 0 of both methods and sample 1 of dense are done: the resumed run builds the prompts of samples 1
    and 2 only (sample 1 for delta), and each new record's prompt is the one its index alone gives."""
    path, _ = tiny
    argv = ["eval", "ruler", "--model", path, "--tasks", "vt", "--lengths", "2048", "--window", "64", "--sink", "8"]
    argv += ["--gamma", "16", "--batch-size", "2", "--workers", "2", "--no-progress", "--no-summary"]
    rc, _, err = run_cli(
        [*argv, "--samples", "1", "--methods", "dense,delta", "--out", tmp_path / "a"], with_stdout=True
    )
    assert rc == 0, err
    rc, _, err = run_cli([*argv, "--samples", "2", "--methods", "dense", "--out", tmp_path / "b"], with_stdout=True)
    assert rc == 0, err
    resume = ["--resume-from", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "c"]
    rc, _, err = run_cli([*argv, "--samples", "3", "--methods", "dense,delta", *resume], with_stdout=True)
    assert rc == 0, err
    log = (tmp_path / "c" / "ruler.log").read_text()
    assert "reusing 3 earlier record(s)" in log and "built 2 prompts" in log, log
    assert "3 generations in" in log and "3 already done" in log, log
    new = [json.loads(x) for x in (tmp_path / "c" / "ruler.jsonl").read_text().splitlines()]
    new = [r for r in new if r["record"] == "sample"]
    assert sorted((r["index"], r["method"]) for r in new) == [(1, "delta"), (2, "delta"), (2, "dense")]
    builder = ruler.PromptBuilder(models.load_tokenizer(str(path)))
    for r in new:
        expected = ruler.generate_sample(builder, "vt", 2048, r["index"])
        assert r["prompt_tokens"] == len(expected.input_ids) and r["references"] == list(expected.answers)


def test_length_beyond_the_gguf_context_is_refused(tiny, tmp_path, run_cli):
    rc, _, err = run_cli(
        ["eval", "ruler", "--model", tiny[0], "--lengths", "4096", "--out", tmp_path / "r"], with_stdout=True
    )
    assert rc == 2 and "4096 tokens exceed the model's context of 3000" in err


def test_generate_and_demo_on_the_gguf(tiny, tmp_path, run_cli):
    path, _ = tiny
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("What is the magic number?", encoding="utf-8")
    rc, out, err = run_cli(
        ["generate", prompt, "--model", path, "--max-new-tokens", "3", "--window", "8"], with_stdout=True
    )
    assert rc == 0, err
    argv = ["demo", "--model", path, "--length", "700", "--samples", "1", "--needles", "1", "--haystack", "noise"]
    rc, out, err = run_cli(
        [*argv, "--methods", "dense,delta", "--window", "64", "--sink", "8", "--gamma", "16"], with_stdout=True
    )
    assert rc == 0, err
    assert "loading tiny-qwen2.gguf" in out
    table = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["dense"], ["delta"])}
    assert set(table) == {"dense", "delta"} and all(row[1].endswith("/1") for row in table.values())


def test_bench_e2e_times_the_real_weights(tiny, tmp_path, run_cli):
    path, _ = tiny
    out = tmp_path / "bench"
    argv = ["bench", "e2e", "--device", "cpu", "--model", path, "--window", "32", "--sink", "4", "--gamma", "16"]
    argv += ["--lengths", "256", "--methods", "dense,delta", "--warmup-length", "64"]
    rc, _, err = run_cli([*argv, "--out", out], with_stdout=True)
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["real_weights"] and res["meta"]["model_shape"] == str(path) and res["meta"]["layers"] == 2
    assert {c["method"] for c in res["cells"]} == {"dense", "delta"} and all(c["ttft_s"] > 0 for c in res["cells"])
    md = (out / "results.md").read_text()
    assert f"Model: {path}, 2 layers" in md and "real weights" in md
    rc, _, err = run_cli([*argv, "--layers", "3", "--out", out], with_stdout=True)
    assert rc == 2 and "has 2 layers" in err


def test_perplexity_windows_never_overlap(loaded):
    """Long windows in a short work: a later round's window that would repeat an earlier one's text is left out."""
    from delta_attn.eval import corpus, ppl

    _, tok = loaded
    text = corpus.load_text("comus_gut", corpus.resolve_texts_dir(None))
    length = len(tok.encode(text[: len(text) // 4], add_special_tokens=False))  # a quarter of the work
    docs = ppl.ppl_documents(tok, length, 4, books=("comus_gut",))
    names = [name for name, _ in docs]
    assert names[0] == "comus_gut@0.10" and 1 <= len(docs) < 4 and "comus_gut@0.30" not in names
    texts = [tok.decode(ids) for _, ids in docs]
    assert all(len(ids) == length for _, ids in docs)
    for i, a in enumerate(texts):
        for b in texts[i + 1 :]:
            assert a[:300] not in b and b[:300] not in a


def test_needle_analysis_and_continuation_perplexity_on_the_gguf(tiny, tmp_path, run_cli):
    path, _ = tiny
    small = ["--model", path, "--window", "64", "--sink", "8", "--gamma", "16", "--methods", "dense,delta"]
    argv = ["eval", "needle", *small, "--task", "niah_multikey_2", "--length", "2048", "--samples", "1"]
    rc, _, err = run_cli([*argv, "--out", tmp_path / "n", "--no-summary"], with_stdout=True)
    assert rc == 0, err
    result = json.loads((tmp_path / "n" / "needle.json").read_text())
    assert result["meta"]["run"]["model_id"] == models.model_info(str(path)).model_id
    argv = ["eval", "ppl", *small, "--lengths", "1024", "--continuation", "128", "--docs", "2", "--batch-size", "1"]
    rc, _, err = run_cli([*argv, "--out", tmp_path / "p", "--no-summary", "--no-progress"], with_stdout=True)
    assert rc == 0, err
    records = [json.loads(x) for x in (tmp_path / "p").glob("*.jsonl").__next__().read_text().splitlines()]
    cont = [r for r in records if r.get("record") not in ("run", None)]
    assert {r["method"] for r in cont} == {"dense", "delta"} and len(cont) >= 4
