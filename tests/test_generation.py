"""The one decode loop (delta_attn.generation) on the real SmolLM2: greedy, sampled, callbacks, chunked prefill."""

from __future__ import annotations

import os

import pytest

import delta_attn
from delta_attn.generation import (
    FINISH_CALLBACK,
    FINISH_LENGTH,
    FINISH_STOP,
    SamplingParams,
    generate,
    stop_token_ids,
)

QUESTIONS = ("What is the capital of France?", "Name three colours of the rainbow, please.")


@pytest.fixture(scope="module")
def smol():
    from delta_attn.models import load_smollm2

    model, tok = load_smollm2(device="cpu")
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True, tokenize=True)[
            "input_ids"
        ]
        for c in QUESTIONS
    ]
    assert len(prompts[0]) != len(prompts[1])  # batching them left-pads one
    return model, tok, prompts


def test_greedy_batched_equals_one_by_one(smol):
    model, tok, prompts = smol
    stop = stop_token_ids(tok)
    params = SamplingParams(8, stop_token_ids=stop)
    for config in (None, delta_attn.DeltaConfig(window=8, sink=2, gamma=4, tail=4)):
        if config is None:
            delta_attn.disable(model)
        else:
            delta_attn.enable(model, config)
        single = [generate(model, [p], params).tokens[0] for p in prompts]
        batched = generate(model, prompts, params)  # left-padded
        micro = generate(model, prompts, [params, params], prefill_batch=1)  # prefill one at a time
        assert batched.tokens == single and micro.tokens == single
        assert batched.stats["padded"]
    delta_attn.disable(model)
    assert "Paris" in tok.decode(single[0])


def test_sampling_is_per_sequence_and_reproducible(smol):
    model, tok, prompts = smol
    seed = int.from_bytes(os.urandom(4), "little")
    hot = [SamplingParams(12, temperature=1.5, seed=seed + i) for i in range(2)]
    mixed = [hot[0], SamplingParams(12)]  # one sampled, one greedy sequence in the same batch
    single = [generate(model, [p], s).tokens[0] for p, s in zip(prompts, mixed)]
    batched = generate(model, prompts, mixed)
    assert batched.tokens == single, f"seed {seed}"
    again = generate(model, prompts[:1], hot[:1]).tokens[0]
    assert again == single[0], f"seed {seed}: the same seed must give the same tokens"
    other = generate(model, prompts[:1], [SamplingParams(12, temperature=1.5, seed=seed + 7)]).tokens[0]
    assert other != single[0], f"seed {seed}: another seed should give other tokens at temperature 1.5"


def test_top_p_keeps_the_nucleus(smol):
    model, _, prompts = smol
    greedy = generate(model, prompts, SamplingParams(6)).tokens
    # a nucleus this small holds only the most likely token: sampling from it is greedy decoding
    tiny = generate(model, prompts, SamplingParams(6, temperature=2.0, top_p=1e-6, seed=1)).tokens
    assert tiny == greedy


def test_stop_tokens_limits_and_on_token(smol):
    model, tok, prompts = smol
    first = generate(model, prompts, SamplingParams(1)).tokens
    params = [
        SamplingParams(5, stop_token_ids={first[0][0]}),  # stops at once: no token
        SamplingParams(5),  # runs to its limit
    ]
    res = generate(model, prompts, params)
    assert res.tokens[0] == [] and res.finish_reasons == [FINISH_STOP, FINISH_LENGTH]
    assert len(res.tokens[1]) == 5 and res.hit_stop == [True, False]

    seen: dict[int, list[int]] = {0: [], 1: []}

    def on_token(i: int, token: int) -> bool:
        seen[i].append(token)
        return not (i == 1 and len(seen[1]) == 3)  # the client of sequence 1 goes away after 3 tokens

    res = generate(model, prompts, SamplingParams(6), on_token=on_token)
    assert res.finish_reasons == [FINISH_LENGTH, FINISH_CALLBACK]
    assert seen == {0: res.tokens[0], 1: res.tokens[1]} and len(res.tokens[1]) == 3 and len(res.tokens[0]) == 6


def test_chunked_prefill_gives_the_same_tokens(smol):
    model, tok, prompts = smol
    delta_attn.enable(model, delta_attn.DeltaConfig(window=8, sink=2, gamma=4, tail=4))
    try:
        params = SamplingParams(8, stop_token_ids=stop_token_ids(tok))
        whole = generate(model, prompts, params)
        chunked = generate(model, prompts, params, chunk_size=5)
    finally:
        delta_attn.disable(model)
    assert chunked.tokens == whole.tokens


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"max_new_tokens": 4, "temperature": -1.0}, "temperature"),
        ({"max_new_tokens": 4, "temperature": float("nan")}, "temperature"),
        ({"max_new_tokens": 4, "top_p": 0.0}, "top_p"),
        ({"max_new_tokens": 4, "top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 4, "seed": -3}, "seed"),
        ({"max_new_tokens": 4, "stop_token_ids": "abc"}, "stop_token_ids"),
        ({"max_new_tokens": 4, "stop_token_ids": {1, -2}}, "stop_token_ids"),
    ],
)
def test_sampling_params_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_sampling_params_normalise_stop_ids():
    p = SamplingParams(3, stop_token_ids=[2, 2, 5])
    assert p.stop_token_ids == frozenset({2, 5}) and p.greedy
    assert not SamplingParams(3, temperature=0.7).greedy
