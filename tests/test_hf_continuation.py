"""``PrefillOutput.generate``: a chunked prefill continues from its own cache, equal token for token to a
one-shot ``model.generate`` with Δ (issue 18: the README's ``model.generate(ids, past_key_values=
res.past_key_values)`` prefilled the prompt a second time on top of the cache and answered differently).

CI runs this file on the newest and on the oldest transformers the package claims (.ci/run).
"""

from __future__ import annotations

import copy
import random
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import delta_attn
from delta_attn import DeltaConfig
from delta_attn.generation import FINISH_LENGTH, FINISH_STOP
from tiny_models import VOCAB, tiny_llama_kwargs

EOS = 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**tiny_llama_kwargs(num_hidden_layers=3)))
    return model.eval()


def _ids(batch: int, n: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, n))


def _until_eos(row: list[int]) -> list[int]:
    return row[: row.index(EOS)] if EOS in row else row


def _one_shot(model, ids, mask, max_new_tokens) -> list[list[int]]:
    """What ``model.generate`` gives with Δ prefill in one forward (new tokens up to the first EOS)."""
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0
        )
    return [_until_eos(row) for row in out[:, ids.shape[1] :].tolist()]


@pytest.mark.parametrize("chunk_size", [16, 48, 1000])
def test_chunked_prefill_then_generate_equals_one_shot_generate(model, chunk_size, seed):
    config = DeltaConfig(window=random.choice([12, 24]), sink=4, gamma=16, tail=16)
    delta_attn.enable(model, config)
    ids = _ids(1, random.randint(150, 260))
    expected = _one_shot(model, ids, torch.ones_like(ids), 12)
    res = delta_attn.chunked_prefill(model, ids, chunk_size=chunk_size)
    with warnings.catch_warnings():
        # the cache goes in under the installed transformers' own name: no deprecation warning per step
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        out = res.generate(max_new_tokens=12)
    assert out.tokens == expected
    assert out.finish_reasons == [FINISH_STOP if len(expected[0]) < 12 else FINISH_LENGTH]
    assert res.past_key_values.get_seq_length() == ids.shape[1] + len(out.tokens[0]) - (len(out.tokens[0]) == 12)
    # and Δ is not a no-op here: the sparse base alone answers differently or at least writes another cache
    delta_attn.enable(model, config.replace(mode="sparse"))
    sparse = delta_attn.chunked_prefill(model, ids, chunk_size=chunk_size)
    assert not torch.allclose(sparse.logits, res.logits, atol=1e-4)
    delta_attn.disable(model)


def test_left_padded_batch_continues_like_one_shot(model, seed):
    delta_attn.enable(model, DeltaConfig(window=24, sink=4, gamma=16, tail=16))
    lengths = [random.randint(120, 200), random.randint(40, 110)]
    n = max(lengths)
    ids = _ids(2, n)
    mask = torch.ones_like(ids)
    for row, length in enumerate(lengths):
        ids[row, : n - length] = 0
        mask[row, : n - length] = 0
    expected = _one_shot(model, ids, mask, 10)
    out = delta_attn.chunked_prefill(model, ids, mask, chunk_size=32).generate(max_new_tokens=10)
    assert out.tokens == expected
    delta_attn.disable(model)


def test_a_prefill_continues_once_and_copies_fork_it(model, seed):
    delta_attn.enable(model, DeltaConfig(window=24, sink=4, gamma=16, tail=16))
    ids = _ids(1, 150)
    res = delta_attn.chunked_prefill(model, ids, chunk_size=40)
    fork = copy.deepcopy(res)
    assert fork.model is model  # the copy shares the weights ...
    assert fork.past_key_values is not res.past_key_values  # ... and owns its cache
    sampled = [copy.deepcopy(res).generate(8, temperature=1.0, seed=seed, stop_token_ids=()) for _ in range(2)]
    assert sampled[0].tokens == sampled[1].tokens  # one seed, one sample
    greedy = res.generate(max_new_tokens=8, stop_token_ids=())
    assert fork.generate(max_new_tokens=8, stop_token_ids=()).tokens == greedy.tokens
    with pytest.raises(ValueError, match="continued already .* copy.deepcopy"):
        res.generate(max_new_tokens=4)
    delta_attn.disable(model)


def test_an_unfinished_prompt_does_not_generate(model):
    delta_attn.enable(model, DeltaConfig(window=24, sink=4, gamma=16, tail=16))
    part = delta_attn.chunked_prefill(model, _ids(1, 100), chunk_size=40, prompt_len=140)
    with pytest.raises(ValueError, match="not complete: 100 of its 140 tokens"):
        part.generate(max_new_tokens=4)
    done = delta_attn.chunked_prefill(
        model, _ids(1, 40), chunk_size=40, past_key_values=part.past_key_values, state=part.state
    )
    assert len(done.generate(max_new_tokens=3, stop_token_ids=()).tokens[0]) == 3
    delta_attn.disable(model)


def test_a_huge_token_limit_is_only_a_limit(model, seed):
    """max_new_tokens up to int32 (a server past the context accepts that): nothing is allocated for it up
    front, and the tokens come out the same as with a small limit."""
    delta_attn.enable(model, DeltaConfig(window=24, sink=4, gamma=16, tail=16))
    ids = _ids(1, 60)
    res = delta_attn.chunked_prefill(model, ids, chunk_size=32)
    wanted = random.randint(257, 600)  # past the first buffer of 256 tokens
    small = copy.deepcopy(res).generate(wanted, stop_token_ids=())
    seen: list[int] = []

    def until_wanted(_: int, token: int) -> bool:
        seen.append(token)
        return len(seen) < wanted

    huge = res.generate(2**31 - 1, stop_token_ids=(), on_token=until_wanted)
    assert huge.tokens == small.tokens and len(small.tokens[0]) == wanted
    delta_attn.disable(model)
