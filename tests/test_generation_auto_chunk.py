"""``chunk_size="auto"``, the default of ``delta_attn.generation.prefill`` / ``generate`` and of
``delta-attn generate --chunk-size``: long prompts go through chunked prefill into the in-place cache,
everything else runs one forward as before (issue 16).

The threshold and chunk are patched small (``AUTO_CHUNK_ABOVE`` / ``AUTO_CHUNK_SIZE``) so a tiny random model
on ~100-token prompts exercises the rule; a spy on ``chunked_prefill`` says which path ran.
"""

from __future__ import annotations

import os

import pytest
import torch

import delta_attn
from delta_attn import DeltaConfig, generation
from delta_attn.generation import SamplingParams, generate, prefill, resolve_chunk_size
from delta_attn.kv_cache import PreallocatedCache
from tiny_models import rand_ids, tiny_llama

THRESHOLD, CHUNK = 40, 16
CAUSAL = DeltaConfig(sparse="streaming", window=24, sink=4, gamma=16, tail=16)
# a window below γ: every anchor but the first carries a real Δ, so chunk boundaries matter to the result
CAUSAL_SHARP = DeltaConfig(sparse="streaming", window=10, sink=2, gamma=16, tail=16)
NON_CAUSAL = DeltaConfig(sparse="streaming", window=24, sink=4, gamma=16, tail=16, interp="linear")
GREEDY = SamplingParams(8)  # no stop tokens: every run decodes all 8 tokens, so the lists compare in full


MODEL_SEED = int.from_bytes(os.urandom(4), "little")  # fresh weights every run; failures name the seeds


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=MODEL_SEED, num_hidden_layers=3)


@pytest.fixture
def small_auto(monkeypatch, model):
    """The auto rule with a 40-token threshold and 16-token chunks; returns the list of chunked_prefill calls."""
    import delta_attn.chunked as chunked

    monkeypatch.setattr(generation, "AUTO_CHUNK_ABOVE", THRESHOLD)
    monkeypatch.setattr(generation, "AUTO_CHUNK_SIZE", CHUNK)
    calls = []
    real = chunked.chunked_prefill

    def spy(*args, **kwargs):
        calls.append(kwargs.get("chunk_size"))
        return real(*args, **kwargs)

    monkeypatch.setattr(chunked, "chunked_prefill", spy)
    yield calls
    delta_attn.disable(model)


def _seed() -> int:
    """A fresh prompt seed (the messages name it with the model's)."""
    return int.from_bytes(os.urandom(4), "little")


def _seeds(seed: int) -> str:
    return f"model seed {MODEL_SEED}, prompt seed {seed}"


def _assert_close(a, b, seed: int) -> None:
    """Chunked prefill equals one forward up to float32 rounding (tests/test_hf_chunked.py's tolerance)."""
    torch.testing.assert_close(a, b, atol=3e-5, rtol=1e-4, msg=lambda m: f"{_seeds(seed)}: {m}")


def _prompts(*lengths: int, seed: int) -> list[list[int]]:
    return [rand_ids(n, seed=seed + i).tolist() for i, n in enumerate(lengths)]


def _real(mask, batch: int, n: int):
    """(B, 1, N, 1) bool: the real (not padding) positions of a cache's keys; padding holds don't-care values."""
    if mask is None:
        return torch.ones(batch, 1, n, 1, dtype=torch.bool)
    return mask.bool()[:, None, :, None]


def _assert_same_cache(a, b, mask, n_layers: int):
    for li in range(n_layers):
        for x, y in ((a.layers[li].keys, b.layers[li].keys), (a.layers[li].values, b.layers[li].values)):
            assert x.shape == y.shape
            real = _real(mask, x.shape[0], x.shape[2])
            torch.testing.assert_close(x * real, y * real, atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("config", [CAUSAL, CAUSAL_SHARP], ids=["window24", "window10"])
def test_auto_chunks_a_long_prompt_and_equals_one_shot(model, small_auto, config):
    seed = _seed()
    delta_attn.enable(model, config)
    prompts = _prompts(101, seed=seed)
    auto = prefill(model, prompts)  # the default
    assert small_auto == [CHUNK], f"{_seeds(seed)}: auto should chunk a 101-token prompt, calls {small_auto}"
    assert isinstance(auto.cache, PreallocatedCache) and auto.chunk_size == CHUNK
    assert auto.cache.get_seq_length() == 101
    one = prefill(model, prompts, chunk_size=None)
    assert small_auto == [CHUNK] and one.chunk_size is None and not isinstance(one.cache, PreallocatedCache)
    _assert_close(auto.logits, one.logits, seed)
    _assert_same_cache(auto.cache, one.cache, None, model.config.num_hidden_layers)

    got = generate(model, prompts, GREEDY)
    want = generate(model, prompts, GREEDY, chunk_size=None)
    assert got.tokens == want.tokens, _seeds(seed)
    assert got.stats["chunk_size"] == CHUNK and want.stats["chunk_size"] is None
    # an explicit chunk still wins over the rule
    assert generate(model, prompts, GREEDY, chunk_size=33).stats["chunk_size"] == 33 and small_auto[-1] == 33


@pytest.mark.parametrize("case", ["at_threshold", "short", "not_enabled", "non_causal"])
def test_auto_stays_one_shot(model, small_auto, case):
    seed = _seed()
    n = {"at_threshold": THRESHOLD, "short": 17}.get(case, 101)
    if case == "not_enabled":
        delta_attn.disable(model)
    else:
        delta_attn.enable(model, NON_CAUSAL if case == "non_causal" else CAUSAL)
    prompts = _prompts(n, seed=seed)
    assert resolve_chunk_size(model, n) is None
    auto = prefill(model, prompts)
    assert small_auto == [], f"{case}: chunked_prefill ran"
    assert auto.chunk_size is None and not isinstance(auto.cache, PreallocatedCache)
    one = prefill(model, prompts, chunk_size=None)
    torch.testing.assert_close(auto.logits, one.logits, atol=0, rtol=0)  # the very same forward
    if case == "non_causal":  # an explicit chunk is still refused, with the reason
        with pytest.raises(ValueError, match="non-causal"):
            prefill(model, prompts, chunk_size=CHUNK)
    if case == "not_enabled":
        with pytest.raises(ValueError, match="delta_attn.enable"):
            prefill(model, prompts, chunk_size=CHUNK)


def test_auto_on_a_left_padded_batch(model, small_auto):
    seed = _seed()
    delta_attn.enable(model, CAUSAL)
    prompts = _prompts(101, 67, seed=seed)  # the shorter one is left-padded
    got = generate(model, prompts, GREEDY)
    assert small_auto == [CHUNK] and got.stats["padded"] and got.stats["chunk_size"] == CHUNK
    want = generate(model, prompts, GREEDY, chunk_size=None)
    assert got.tokens == want.tokens, _seeds(seed)
    # each alone: the 67-token prompt is over the threshold too, and gets the same tokens as in the batch
    alone = [generate(model, [p], GREEDY).tokens[0] for p in prompts]
    assert alone == got.tokens, _seeds(seed)
    assert small_auto == [CHUNK] * 3


@pytest.mark.parametrize("prefill_batch", [1, 2])
def test_auto_with_micro_batches_merges_the_in_place_caches(model, small_auto, prefill_batch):
    """Micro-batches each get a PreallocatedCache whose buffer holds room to decode beyond the prompt; the
    merged cache must hold the tokens only (and stay in place), equal to the whole batch's cache."""
    seed = _seed()
    delta_attn.enable(model, CAUSAL)
    prompts = _prompts(101, 67, 88, seed=seed)
    whole = prefill(model, prompts)
    parts = prefill(model, prompts, prefill_batch=prefill_batch)
    assert small_auto == [CHUNK] * (1 + -(-3 // prefill_batch)), small_auto
    assert isinstance(parts.cache, PreallocatedCache) and parts.chunk_size == CHUNK
    assert parts.cache.capacity == whole.cache.capacity > 101  # the decode room survives the merge
    assert parts.cache.get_seq_length() == 101
    for layer in parts.cache.layers:
        assert layer.keys.shape[:3] == (3, model.config.num_key_value_heads, 101)
        assert layer.key_buffer.shape[2] == parts.cache.capacity  # in place: decoding writes into the buffer
    _assert_close(parts.logits, whole.logits, seed)
    _assert_same_cache(parts.cache, whole.cache, whole.attention_mask, model.config.num_hidden_layers)

    got = generate(model, prompts, GREEDY, prefill_batch=prefill_batch)
    want = generate(model, prompts, GREEDY, chunk_size=None, prefill_batch=prefill_batch)
    assert got.tokens == want.tokens, _seeds(seed)


def test_merging_takes_the_filled_part_and_frees_the_parts_buffers(model):
    seed = _seed()
    delta_attn.enable(model, CAUSAL)
    try:
        ids = rand_ids(2, 50, seed=seed)
        parts = [delta_attn.chunked_prefill(model, ids[i : i + 1], chunk_size=CHUNK).past_key_values for i in (0, 1)]
        assert all(p.layers[0].key_buffer.shape[2] > 50 for p in parts)  # room to decode beyond the prompt
        want = [torch.cat([p.layers[li].keys for p in parts]).clone() for li in range(len(parts[0].layers))]
        merged = generation._merge_caches(parts, model.config)
    finally:
        delta_attn.disable(model)
    for li, k in enumerate(want):
        assert torch.equal(merged.layers[li].keys, k), f"seed {seed}"
    assert all(lay.key_buffer is None and lay.keys is None for p in parts for lay in p.layers)


def test_micro_batches_one_shot_still_merge_into_a_dynamic_cache(model, small_auto):
    from transformers import DynamicCache

    seed = _seed()
    delta_attn.enable(model, CAUSAL)
    prompts = _prompts(30, 21, seed=seed)  # under the threshold: one forward per micro-batch
    parts = prefill(model, prompts, prefill_batch=1)
    whole = prefill(model, prompts)
    assert small_auto == [] and type(parts.cache) is DynamicCache
    _assert_close(parts.logits, whole.logits, seed)


@pytest.mark.parametrize("bad", ["big", "AUTO", 0, -3, True, 2.5, "16"])
def test_bad_chunk_sizes_are_refused(model, bad):
    delta_attn.enable(model, CAUSAL)
    try:
        prompts = _prompts(12, seed=_seed())
        for call in (
            lambda: prefill(model, prompts, chunk_size=bad),
            lambda: generate(model, prompts, GREEDY, chunk_size=bad),
            lambda: generate(model, [], [], chunk_size=bad),  # even with nothing to generate
            lambda: resolve_chunk_size(model, 12, bad),
        ):
            with pytest.raises(ValueError, match=r"chunk_size must be 'auto' .* None .* or an int >= 1"):
                call()
    finally:
        delta_attn.disable(model)


def test_the_shipped_rule():
    """The constants the docs quote (16,384-token chunks above 32,768 tokens), as the CLI reads them too."""
    from delta_attn import config

    assert (generation.AUTO_CHUNK_SIZE, generation.AUTO_CHUNK_ABOVE) == (16384, 32768)
    assert (config.AUTO_CHUNK_SIZE, config.AUTO_CHUNK_ABOVE) == (16384, 32768)


# ---------------------------------------------------------------------------------------------
# delta-attn generate --chunk-size


@pytest.mark.parametrize("text, want", [(None, "auto"), ("auto", "auto"), ("Auto", "auto"), ("0", None), ("64", 64)])
def test_cli_chunk_size_values(text, want):
    from delta_attn.cli import build_parser

    argv = ["generate"] + ([] if text is None else ["--chunk-size", text])
    assert build_parser().parse_args(argv).chunk_size == want


@pytest.mark.usefixtures("no_model_load")
def test_cli_refuses_an_explicit_chunk_for_non_causal_settings(tmp_path, run_cli):
    prompt = tmp_path / "p.txt"
    prompt.write_text("The capital of France is", encoding="utf-8")
    rc, err = run_cli(["generate", prompt, "--interp", "linear", "--chunk-size", "64"])
    assert rc == 2 and "non-causal" in err.strip().splitlines()[-1], err


@pytest.mark.parametrize(
    "extra, said",
    [
        ([], "in chunks of 4"),  # auto, over the (patched) threshold
        (["--chunk-size", "0"], "in one forward"),
        (["--chunk-size", "5"], "in chunks of 5"),
        (["--interp", "linear"], "in one forward"),  # auto, non-causal: one forward, no error
    ],
)
def test_cli_generate_says_how_it_prefills(tmp_path, run_cli, monkeypatch, extra, said):
    monkeypatch.setattr(generation, "AUTO_CHUNK_ABOVE", 8)
    monkeypatch.setattr(generation, "AUTO_CHUNK_SIZE", 4)
    prompt = tmp_path / "p.txt"
    prompt.write_text("France is a country in Europe. Its capital city is Paris. The capital of France is", "utf-8")
    argv = ["generate", prompt, "--raw", "--max-new-tokens", "3", "--window", "16", "--sink", "4", "--gamma", "8"]
    rc, out, err = run_cli([*argv, *extra], with_stdout=True)
    assert rc == 0 and said in err, err
    assert "Paris" in out
