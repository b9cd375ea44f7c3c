"""Context-parallel Δ prefill (delta_attn.distributed): shards on 2–3 gloo ranks equal the single-device call.

The rank bodies are module-level functions (run in fresh processes by tests/ranks.py); each spawn
runs many cases, since a spawn costs seconds of imports. The shard arithmetic (zero-carry local call,
exclusive scan of the summaries, fix-up) is also checked in-process, without ranks.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from delta_attn import DeltaConfig, delta_attention
from delta_attn.distributed import cp_delta_attention, shard_bounds
from delta_attn.distributed.shard import apply_carry, carries_from_summaries, local_shard
from delta_attn.reference import reference_prefill
from oracle import make_qkv
from ranks import RankError, run_ranks

BASES = ["streaming", "block", "dense"]
CAUSAL_INTERPS = ["repeat", "ema", "abg"]
GAMMAS = [1, 16, 64]
# (tokens, tail): shards of ceil(N/W) split γ-blocks, the window (24) and the tail (203 on 3 ranks: the last
# rank is all tail for γ ≤ 16); (18, 0) on 3 ranks leaves the middle rank without an anchor (the last
# rank's open block has its anchor two ranks back)
LENGTHS = [(203, 80), (150, 8), (18, 0)]


def _config(sparse, interp, gamma, tail, **extra):
    return DeltaConfig(sparse=sparse, window=24, sink=3, block_size=32, gamma=gamma, tail=tail, interp=interp, **extra)


def _cases():
    cases = []
    for i, (base, interp, gamma, (n, tail)) in enumerate(itertools.product(BASES, CAUSAL_INTERPS, GAMMAS, LENGTHS)):
        shape = [(2, 2, 2, 8), (1, 1, 3, 80)][i % 2]  # (batch, kv heads, group, head dim): GQA, d=80, batch 2
        cases.append(dict(cfg=dict(sparse=base, interp=interp, gamma=gamma, tail=tail), n=n, shape=shape))
    for mode in ("recompute", "sparse", "dense"):
        cases.append(dict(cfg=dict(sparse="streaming", interp="repeat", gamma=16, tail=40, mode=mode), n=203))
    for interp in CAUSAL_INTERPS:  # a float λ scales the carried Δ too
        cases.append(dict(cfg=dict(sparse="streaming", interp=interp, gamma=16, tail=40, delta_scale=0.5), n=203))
    for dtype in ("float32", "bfloat16"):
        cases.append(dict(cfg=dict(sparse="streaming", interp="ema", gamma=16, tail=40), n=203, dtype=dtype))
    return cases


TOL = {"float64": 1e-10, "float32": 2e-5, "bfloat16": 3e-2}


def _equivalence_rank(rank, world, cases, seed):
    out = []
    for i, case in enumerate(cases):
        b, hkv, g, d = case.get("shape", (1, 2, 2, 16))
        dtype = case.get("dtype", "float64")
        cfg = _config(**case["cfg"])
        q, k, v = make_qkv(seed + i, b, hkv, g, case["n"], d, getattr(torch, dtype))
        ref = delta_attention(q, k, v, cfg, scale=0.3)
        lo, hi = shard_bounds(case["n"], world, rank)
        got = cp_delta_attention(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], cfg, scale=0.3)
        assert got.dtype == q.dtype and got.shape == (b, hkv * g, hi - lo, d)
        err = (got.double() - ref[:, :, lo:hi].double()).abs().max().item()
        out.append((case, err, TOL[dtype]))
    return out


@pytest.mark.parametrize(
    "world,every",
    [(2, 2), pytest.param(3, 1, marks=pytest.mark.slow)],  # 2 ranks: every other case (time)
)
def test_cp_equals_single_device(world, every, seed):
    results = run_ranks(_equivalence_rank, world, _cases()[::every], seed)
    for rank, rows in enumerate(results):
        bad = [(case, err) for case, err, tol in rows if not err <= tol]
        assert not bad, f"rank {rank}: {bad[:3]}"


def _bad_input_rank(rank, world):
    """Every scenario must raise the same error on every rank (and leave the group usable)."""
    q, k, v = make_qkv(0, 1, 1, 2, 40, 8)
    messages = []
    scenarios = {
        "dtype": lambda: (q.float(), k.float(), v.float()) if rank == 1 else (q, k, v),
        "config": lambda: (q, k, v),
        "longer last": lambda: (q, k, v) if rank < world - 1 else make_qkv(0, 1, 1, 2, 41, 8),
        "qk rows": lambda: (q, k[:, :, :5], v[:, :, :5]) if rank == 0 else (q, k, v),
    }
    for name, make in scenarios.items():
        try:
            cfg = DeltaConfig(gamma=8, window=8, sink=2 + (name == "config" and rank == 1))
            cp_delta_attention(*make(), cfg)
            messages.append((name, "no error"))
        except ValueError as exc:
            messages.append((name, str(exc)))
    for cfg in (DeltaConfig(interp="linear", gamma=8), DeltaConfig(sparse="vertical_slash", gamma=8)):
        try:
            cp_delta_attention(q, k, v, cfg)
            messages.append((cfg.interp, "no error"))
        except ValueError as exc:
            messages.append((cfg.interp, str(exc)))
    # the group still works after the errors: a valid call
    cp_delta_attention(q, k, v, DeltaConfig(gamma=8, window=8, sink=2))
    return messages


def test_bad_input_on_one_rank_raises_on_every_rank():
    results = run_ranks(_bad_input_rank, 2, timeout=90, collective_timeout=20)
    expected = [
        ("dtype", "rank 1: dtype torch.float32 differs"),
        ("config", "rank 1: config differs from rank 0's"),
        ("longer last", "rank 1 (the last): holds 41 rows"),
        ("qk rows", "rank 0: q has 40 rows but k/v 5"),
        ("linear", 'interp="linear" makes rows read later anchors'),
        ("repeat", "sparse='vertical_slash' estimates its pattern"),
    ]
    for rank, messages in enumerate(results):
        for (name, msg), (want_name, want) in zip(messages, expected):
            assert name == want_name and want in msg and msg.startswith("cp_delta_attention: "), (rank, name, msg)


def _raise_on_rank_one(rank, world):
    if rank == 1:
        raise RuntimeError("rank one fails before any collective")
    q, k, v = make_qkv(0, 1, 1, 1, 16, 8)
    cp_delta_attention(q, k, v, DeltaConfig(gamma=4, window=4, sink=1))


def test_a_rank_that_raises_surfaces_as_errors_not_a_hang():
    with pytest.raises(RankError) as info:
        run_ranks(_raise_on_rank_one, 2, timeout=60, collective_timeout=2)
    errors = info.value.errors
    assert "rank one fails before any collective" in errors[1]
    assert 0 in errors  # rank 0 timed out in its collective (or was killed): reported, not hung


def test_without_a_process_group_is_a_clear_error():
    q = torch.randn(1, 1, 8, 4)
    with pytest.raises(RuntimeError, match="init_process_group"):
        cp_delta_attention(q, q, q)


def test_shard_bounds():
    assert [shard_bounds(203, 3, r) for r in range(3)] == [(0, 68), (68, 136), (136, 203)]
    assert shard_bounds(5, 1, 0) == (0, 5)
    with pytest.raises(ValueError, match="last one non-empty"):
        shard_bounds(5, 4, 0)  # ceil(5/4) = 2: ranks 0-2 take 6 > 5 tokens


@pytest.mark.parametrize("delta_scale", [1.0, 0.5])
@pytest.mark.parametrize("interp", CAUSAL_INTERPS)
def test_shard_arithmetic_in_process(interp, delta_scale, seed):
    """Without ranks: zero-carry shards + exclusive scan + fix-up equal one shot, and the fix-up is needed."""
    n, world = 203, 4
    q, k, v = make_qkv(seed, 1, 2, 2, n, 8)
    cfg = _config("streaming", interp, 16, 40, delta_scale=delta_scale)
    ref = delta_attention(q, k, v, cfg, scale=0.3)
    outs, sums = [], []
    for r in range(world):
        lo, hi = shard_bounds(n, world, r)
        o, s = local_shard(
            q[:, :, lo:hi], k[:, :, :hi], v[:, :, :hi], cfg, scale=0.3, prompt_len=n, backend=reference_prefill
        )
        outs.append(o)
        sums.append(s)
    raw = torch.cat(outs, dim=2).clone()
    fixed = [apply_carry(outs[r], cfg, sums[r], *carries_from_summaries(cfg, sums, r)) for r in range(world)]
    torch.testing.assert_close(torch.cat(fixed, dim=2), ref, rtol=0, atol=1e-12)
    assert (raw - ref).abs().max() > 1e-3  # the zero-carry shards alone are wrong


def _hf_rank(rank, world, n_tokens, configs):
    from tiny_models import tiny_llama

    model = tiny_llama(num_hidden_layers=3)
    ids = torch.randint(3, 256, (2, n_tokens), generator=torch.Generator().manual_seed(7))

    from delta_attn.compat import cache_argument

    cache_arg = cache_argument(model)

    def greedy(cache, logits, steps=5):  # decodes in place into `cache`
        tokens = []
        for t in range(steps):
            nxt = logits.argmax(-1, keepdim=True)
            tokens.append(nxt)
            pos = torch.full_like(nxt, n_tokens + t)
            with torch.no_grad():
                logits = model(input_ids=nxt, position_ids=pos, use_cache=True, **{cache_arg: cache}).logits[:, -1]
        return torch.cat(tokens, dim=1), logits

    from delta_attn.distributed import cp_prefill

    try:  # rank 0 holds fewer tokens than the last rank: the same error everywhere
        cp_prefill(model, ids[:, : 3 if rank == 0 else 5], config=DeltaConfig(**configs[0]))
        bad_shards = "no error"
    except ValueError as exc:
        bad_shards = str(exc)
    return bad_shards, [_hf_case(model, ids, DeltaConfig(**kw), rank, world, greedy) for kw in configs]


def _hf_case(model, ids, cfg, rank, world, greedy):
    import delta_attn
    from delta_attn.distributed import cp_prefill

    n_tokens = ids.shape[1]
    delta_attn.enable(model, cfg)
    with torch.no_grad():
        single = model(input_ids=ids, use_cache=True)
    ref_keys = single.past_key_values.layers[2].keys.clone()
    ref_tokens, ref_after = greedy(single.past_key_values, single.logits[:, -1])
    lo, hi = shard_bounds(n_tokens, world, rank)
    res = cp_prefill(model, ids[:, lo:hi])
    cache_keys = res.past_key_values.layers[2].keys.clone()
    cp_tokens, cp_after = greedy(res.past_key_values, res.logits)
    # and Δ is not dense here: the sparse base alone gives other logits
    delta_attn.enable(model, cfg.replace(mode="sparse"))
    with torch.no_grad():
        sparse_logits = model(input_ids=ids).logits[:, -1]
    return dict(
        logit_err=(res.logits - single.logits[:, -1]).abs().max().item(),
        cache_err=(cache_keys - ref_keys).abs().max().item(),
        cache_len=cache_keys.shape[2],
        same_tokens=torch.equal(cp_tokens, ref_tokens),
        after_err=(cp_after - ref_after).abs().max().item(),
        sparse_gap=(sparse_logits - single.logits[:, -1]).abs().max().item(),
    )


@pytest.mark.slow
def test_cp_prefill_of_a_llama_model_then_greedy_decode():
    configs = [dict(window=16, sink=2, gamma=16, tail=20, interp=i, dense_layers=[1]) for i in ("ema", "repeat")]
    results = run_ranks(_hf_rank, 2, 157, configs, timeout=180)
    for rank, (bad_shards, _) in enumerate(results):
        assert bad_shards.startswith("cp_prefill: shard lengths [3, 5]"), (rank, bad_shards)
    for rank, r in ((rank, r) for rank, (_, rows) in enumerate(results) for r in rows):
        assert r["cache_len"] == 157, (rank, r)
        assert r["logit_err"] < 1e-4 and r["cache_err"] < 1e-5 and r["after_err"] < 1e-4, (rank, r)
        assert r["same_tokens"], (rank, r)
        assert r["sparse_gap"] > 1e-3, (rank, r)


TRITON_SHARDS = """
import json, sys, torch
from oracle import make_qkv
from delta_attn import DeltaConfig
from delta_attn.kernels import triton_prefill
from delta_attn.distributed import shard_bounds
from delta_attn.distributed.shard import apply_carry, carries_from_summaries, local_shard
errs = []
for base, interp in [("streaming", "repeat"), ("streaming", "ema"), ("dense", "abg")]:
    cfg = DeltaConfig(sparse=base, window=24, sink=3, gamma=16, tail=8, interp=interp)
    q, k, v = make_qkv(int(sys.argv[1]), 1, 1, 2, 150, 16, torch.float32)
    ref = triton_prefill(q, k, v, cfg, scale=0.3, prompt_len=150)
    outs, sums = [], []
    for r in range(3):
        lo, hi = shard_bounds(150, 3, r)
        o, s = local_shard(q[:, :, lo:hi], k[:, :, :hi], v[:, :, :hi], cfg, scale=0.3, prompt_len=150,
                           backend=triton_prefill)
        outs.append(o)
        sums.append(s)
    got = torch.cat([apply_carry(outs[r], cfg, sums[r], *carries_from_summaries(cfg, sums, r)) for r in range(3)], 2)
    errs.append((got.float() - ref.float()).abs().max().item())
print(json.dumps(errs))
"""


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: scripts/gpu_cp.sh checks the kernels")
def test_shards_through_the_triton_kernels_in_the_interpreter(seed):
    """The GPU backend's path (zero-carry kernel calls + fix-up) on CPU through TRITON_INTERPRET=1."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    tests_dir = os.path.dirname(__file__)
    src = os.path.join(os.path.dirname(tests_dir), "src")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([src, tests_dir]))
    proc = subprocess.run(
        [sys.executable, "-c", TRITON_SHARDS, str(seed)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    errs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert max(errs) < 1e-5, errs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nccl_equivalences_on_the_gpus(tmp_path):
    """scripts/gpu_cp.sh's equivalences with NCCL on up to 2 GPUs (world size 1 on a single GPU)."""
    import json
    import os
    import subprocess
    import sys

    nproc = min(2, torch.cuda.device_count())
    src = os.path.join(os.path.dirname(os.path.dirname(__file__)), "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", "delta_attn.distributed.check", "--skip-timing", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "cp_check.json").read_text())["equivalence"]
    assert len(rows) == 54 and all(r["ok"] for r in rows)
