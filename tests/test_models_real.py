"""The real Qwen2.5-Coder-1.5B-Instruct (1.1 GB GGUF, 7 GB de-quantised), opt-in: these tests run only with
``DELTA_ATTN_REAL_MODEL_TESTS=1`` and the model pulled (``delta-attn models pull qwen2.5-coder-1.5b``)::

    DELTA_ATTN_REAL_MODEL_TESTS=1 PYTHONPATH=src python -m pytest -q -m real_model tests/test_models_real.py

About 3 minutes on 2 CPU cores once the de-quantised copy is cached (the first load adds ~1 min) and ~8 GB of
memory. CI and ``make test`` skip them.
"""

from __future__ import annotations

import os

import pytest
import torch

from delta_attn import DeltaConfig, models
from delta_attn.eval import ruler, scoring
from delta_attn.models.registry import QWEN25_CODER_15B, local_copy

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        os.environ.get("DELTA_ATTN_REAL_MODEL_TESTS") != "1",
        reason="opt-in: set DELTA_ATTN_REAL_MODEL_TESTS=1 (loads a 1.5B model on the CPU)",
    ),
    pytest.mark.skipif(
        local_copy(QWEN25_CODER_15B) is None, reason="pull it first: delta-attn models pull qwen2.5-coder-1.5b"
    ),
]
NAME = QWEN25_CODER_15B.name


@pytest.fixture(scope="module")
def qwen():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return models.load_model(NAME, device="cpu")


def test_facts_and_tokenizer():
    info = models.model_info(NAME)
    assert (info.context_length, info.num_layers, info.sha256) == (32768, 28, QWEN25_CODER_15B.sha256)
    assert info.model_id == "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf@sha256:cc324af070c2"
    tok = models.load_tokenizer(NAME)
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    values = ["4611986", "4556094", "1875593", "5868899"]
    ids = tok.encode(" " + ", ".join(values), add_special_tokens=False)
    assert sum(tok.decode([i]).isdigit() for i in ids) == 28  # every digit its own token
    builder = ruler.PromptBuilder(tok)
    s = ruler.generate_sample(builder, "niah_multivalue", 1024, 0)
    assert s.prompt_tokens == 1024 - ruler.DEFAULT_RESERVE and s.meta["answer_tokens"] >= 4 * 7 + 3
    assert tok.decode(s.input_ids).startswith("<|im_start|>system\nYou are Qwen")


def test_loads_and_answers_a_needle_dense_and_with_delta(qwen):
    model, tok = qwen
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.num_key_value_heads == 2
    assert model.config.hidden_size // model.config.num_attention_heads == 128
    s = ruler.generate_sample(ruler.PromptBuilder(tok), "niah_single_1", 1024, 0)
    ids = torch.tensor([s.input_ids])
    import delta_attn

    answers = {}
    for name, config in (("dense", None), ("delta", DeltaConfig(window=128, sink=16, gamma=32))):
        if config is None:
            delta_attn.disable(model)
        else:
            delta_attn.enable(model, config)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=s.max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id)
        answers[name] = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    delta_attn.disable(model)
    assert scoring.score(answers["dense"], s.answers, s.metric) == 1.0, answers
    assert scoring.score(answers["delta"], s.answers, s.metric) == 1.0, answers
