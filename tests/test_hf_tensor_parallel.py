"""Δ on a tensor-parallel model (transformers ``tp_plan="auto"``, 2 gloo ranks on CPU) equals one process."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import delta_attn
from delta_attn import DeltaConfig
from ranks import run_ranks
from tiny_models import tiny_llama_kwargs

pytestmark = pytest.mark.slow  # two fresh processes importing transformers: ~10-20 s

CFG = tiny_llama_kwargs(max_position_embeddings=512)
DELTA = DeltaConfig(window=24, sink=4, gamma=16, tail=16)
NEW_TOKENS = 5


def prompt():
    return torch.randint(3, 256, (1, 150), generator=torch.Generator().manual_seed(1))


def run_delta(model) -> dict:
    """Greedy continuation (Δ prefill, dense decode), the one-shot and chunked last-position logits."""
    delta_attn.enable(model, DELTA)
    ids = prompt()
    with torch.no_grad():
        tokens = model.generate(input_ids=ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
        last = model(input_ids=ids).logits[:, -1]
        chunked = delta_attn.chunked_prefill(model, ids, chunk_size=40).logits
    return dict(tokens=tokens, last=last, chunked=chunked)


def tp_rank(rank: int, world: int, path: str) -> dict:
    import os

    import delta_attn.hf as hf

    # what torchrun sets: transformers reads WORLD_SIZE to pick tp_size (without it the load is not sharded)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))

    heads = set()
    original = hf.delta_attention

    def recording(q, k, v, *args, **kwargs):  # the heads Δ's prefill actually runs on, on this rank
        heads.add((q.shape[1], k.shape[1]))
        return original(q, k, v, *args, **kwargs)

    hf.delta_attention = recording
    try:  # transformers >= 5.18 takes the plan through a DistributedConfig (tp_plan= is deprecated there)
        from transformers import DistributedConfig

        how = dict(distributed_config=DistributedConfig(tp_plan="auto"))
    except ImportError:
        how = dict(tp_plan="auto")
    model = AutoModelForCausalLM.from_pretrained(path, **how).eval()
    result = {name: t.tolist() for name, t in run_delta(model).items()}  # plain values: the queue shares tensors by fd
    result.update(tp_size=hf.tensor_parallel_size(model), heads=sorted(heads))
    return result


def test_tensor_parallel_delta_equals_single_process(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**CFG)).eval()
    model.save_pretrained(tmp_path)
    single = run_delta(model)
    delta_attn.enable(model, DeltaConfig(mode="dense"))
    with torch.no_grad():
        dense_last = model(input_ids=prompt()).logits[:, -1]
    assert (dense_last - single["last"]).abs().max() > 1e-3  # Δ differs from dense here: the test can fail
    results = run_ranks(tp_rank, 2, str(tmp_path), timeout=240)
    for r in results:
        assert r["tp_size"] == 2
        assert r["heads"] == [(2, 1)]  # each rank ran Δ on its 2 query / 1 KV local heads (of 4 / 2)
        assert r["tokens"] == single["tokens"].tolist()
        torch.testing.assert_close(torch.tensor(r["last"]), single["last"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(r["chunked"]), single["chunked"], atol=1e-5, rtol=1e-4)


class _FakeTP:
    """Stands for a model whose tp_plan/tp_size are given (only what the check reads)."""

    def __init__(self, plan, tp_size, kv_heads):
        self.tp_plan, self.tp_size = plan, tp_size
        self.config = LlamaConfig(**{**CFG, "num_key_value_heads": kv_heads})


def test_tensor_parallel_plans_delta_cannot_run():
    from delta_attn.hf import check_tensor_parallel

    heads_plan = {"layers.*.self_attn.k_proj": "colwise", "layers.*.self_attn.o_proj": "rowwise"}
    check_tensor_parallel(_FakeTP(heads_plan, 2, 2))  # fine
    check_tensor_parallel(_FakeTP(heads_plan, 1, 3))  # not parallel: nothing to check
    with pytest.raises(ValueError, match="shards along the sequence"):
        check_tensor_parallel(_FakeTP({**heads_plan, "layers.*.input_layernorm": "sequence_parallel"}, 2, 2))
    with pytest.raises(ValueError, match="do not split evenly over tp_size=4"):
        check_tensor_parallel(_FakeTP(heads_plan, 4, 2))
