"""`delta-attn demo`: its cost function, its prompts, and a fast smoke run of the command."""

from __future__ import annotations

import pytest
import torch

from delta_attn import DeltaConfig, cli
from delta_attn.backend import plan_call as row_schedule
from delta_attn.demo import build_haystacks, dense_fraction, needle_depths, prefill_attention_pairs
from delta_attn.sparse import dense_mask, resolve_sparse_method


def brute_force_pairs(config: DeltaConfig, n: int) -> int:
    if config.mode == "dense":
        return n * (n + 1) // 2
    q = torch.randn(1, 1, n, 4)
    pattern = resolve_sparse_method(config.sparse).plan(q, q, config, q_start=0, scale=1.0)
    sparse = int(dense_mask(pattern, n).sum())
    dense_rows = int((row_schedule(config, 0, n, n).dense_pos + 1).sum())
    return sparse + (dense_rows if config.mode in ("delta", "recompute") else 0)


@pytest.mark.parametrize("n", [1, 7, 50, 333, 1000])
@pytest.mark.parametrize("mode", ["dense", "sparse", "recompute", "delta"])
@pytest.mark.parametrize("window,sink,gamma", [(16, 4, 8), (100, 0, 64), (5, 30, 3), (2000, 128, 64)])
def test_cost_matches_brute_force(n, mode, window, sink, gamma):
    cfg = DeltaConfig(mode=mode, window=window, sink=sink, gamma=gamma)
    assert prefill_attention_pairs(cfg, n) == brute_force_pairs(cfg, n)


def test_cost_fraction_and_unsupported_base():
    assert dense_fraction(DeltaConfig(mode="dense"), 4096) == 1.0
    cfg = DeltaConfig(window=256, sink=64, gamma=64)
    assert 0.2 < dense_fraction(cfg, 4096) < 0.3  # sparse pass ≈ 15% + dense rows ≈ 9%
    assert dense_fraction(cfg.replace(mode="sparse"), 4096) < 0.16
    with pytest.raises(ValueError, match="no analytic cost"):
        prefill_attention_pairs(DeltaConfig(sparse="topk"), 100)


@pytest.fixture(scope="module")
def tokenizer(smol_tokenizer):
    return smol_tokenizer


@pytest.mark.parametrize("kind", ["noise", "text", "both"])
def test_haystack_prompts_hold_one_needle_each_and_share_a_prefix(tokenizer, kind):
    depths = needle_depths(3, 0.2, 0.8)
    assert depths == pytest.approx([0.2, 0.5, 0.8])
    hays = build_haystacks(tokenizer, 2, 700, kind, depths, seed=3)
    assert [h.kind for h in hays] == (["noise", "text"] if kind == "both" else [kind, kind])
    for hay in hays:
        assert 650 <= hay.prompt_len <= 700, hay.prompt_len
        assert len({len(r) for r in hay.rest_ids}) == 1  # equal lengths: one shared prefill serves all prompts
        assert len({nd.key for nd in hay.needles}) == 3 and len({nd.value for nd in hay.needles}) == 3
        shared = tokenizer.decode(hay.shared_ids)
        assert "magic numbers for" not in shared  # the shared part ends before the shallowest needle
        for nd, rest in zip(hay.needles, hay.rest_ids):
            ids = hay.shared_ids + rest
            prompt = tokenizer.decode(ids)
            assert prompt.count("One of the special magic numbers") == 1 and prompt.count(nd.value) == 1
            assert prompt.endswith(f"The special magic number for {nd.key} mentioned in the provided text is ")
            context = prompt[prompt.index("afterwards.") : prompt.index("What is the special")]
            # depth is placed in tokens; measured here in characters of a 700-token context
            assert abs(context.index("One of the special") / len(context) - nd.depth) < 0.08
            # built from pieces, yet the same tokens the tokenizer gives the whole text (within a few merges)
            assert abs(len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) - len(ids)) <= 3


def test_demo_smoke(capsys):
    rc = cli.main(
        [
            "demo",
            "--samples",
            "1",
            "--needles",
            "2",
            "--length",
            "400",
            "--methods",
            "dense,sparse,delta",
            "--window",
            "32",
            "--sink",
            "4",
            "--gamma",
            "16",
            "--max-new-tokens",
            "9",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    table = out[out.index("method ") :]
    rows = {
        ln.split()[0]: ln.split()
        for ln in table.splitlines()[1:]
        if ln.split()[:1] in (["dense"], ["sparse"], ["delta"])
    }
    assert set(rows) == {"dense", "sparse", "delta"}
    assert rows["dense"][-1] == "100.0%" and float(rows["delta"][-1].rstrip("%")) < 100
    assert rows["dense"][1] == "2/2"  # 400-token needle prompts are easy for the dense model
