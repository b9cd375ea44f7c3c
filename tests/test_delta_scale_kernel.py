"""The fused λ kernels (:mod:`delta_attn.kernels.delta_scale`) against their definition,
``combine.delta_scales`` + ``combine.scale_deltas`` (docs/algorithm.md §13), in Triton's interpreter.

Fresh random Δs per run, correlated along the anchors with a per-head factor drawn from [−0.6, 0.95] (so
λ lands inside (0, 1) and on both clips), for every call shape a prompt has: the prompt's start, a chunk on a
block boundary (carried sums + the previous chunk's last Δ), a chunk continuing a γ-block (carried Δ), a chunk
with no anchor of its own; anchors of the sink+window base that see every key ("covered") are present in each.
B = 2, head dims 64/80/128, anchor counts that are no multiple of the block sizes, and a small launch config
(several runs per head, several prefix steps) next to the default one. Also the anchor kernel's D − Õ epilogue
against its Õ. As in test_kernels_interp, the interpreter needs a fresh process.
"""

from __future__ import annotations

import json

import pytest
import torch

from interpreted import run_interpreted

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: the interpreter is CPU-only")

PROBE = r"""
import json, sys
import torch
from delta_attn.backend import SequenceState, plan_call
from delta_attn.combine import delta_scales, fully_covered_blocks, scale_deltas
from delta_attn.config import DeltaConfig
from delta_attn.kernels.delta_scale import scaled_block_deltas

seed, cases = int(sys.argv[1]), json.loads(sys.argv[2])
gen = torch.Generator().manual_seed(seed)


def correlated(b, h, n, d):
    # Δ_a = ρ_h Δ_{a-1} + noise, ρ_h per (b, h): λ inside (0, 1) for most heads, clipped to 0 for ρ < 0
    rho = torch.rand(b, h, 1, generator=gen, dtype=torch.float64) * 1.55 - 0.6
    out = torch.empty(b, h, n, d, dtype=torch.float64)
    x = torch.randn(b, h, d, generator=gen, dtype=torch.float64)
    for a in range(n):
        x = rho * x + 0.5 * torch.randn(b, h, d, generator=gen, dtype=torch.float64)
        out[:, :, a] = x
    return out.float()


rows = []
for case in cases:
    cfg = DeltaConfig(sink=case["sink"], window=case["window"], gamma=case["gamma"], tail=8,
                      delta_scale=case["mode"])
    b, h, d = case["b"], case["h"], case["d"]
    q0, nk = case["q_start"], case["n_keys"]
    # causal forms: the tail lies beyond this call (every row is body); auto-global: one call, the whole prompt
    prompt_len = nk if case["mode"] == "auto-global" else nk + 100
    state = None
    if q0 > 0:  # what the previous chunk left
        state = SequenceState(next_pos=q0)
        first_block = q0 // cfg.gamma
        state.block_index = first_block if q0 % cfg.gamma else first_block - 1
        state.block_delta = correlated(b, h, 1, d)[:, :, 0]
        # the sums of ~10 earlier anchors' pairs, with a ratio in [−0.3, 1.1): λ of the carried block on a clip
        # or inside
        den = (torch.rand(b, h, generator=gen, dtype=torch.float64) + 0.5) * 3 * d
        ratio = torch.rand(b, h, generator=gen, dtype=torch.float64) * 1.4 - 0.3
        state.scale_sums = torch.stack([ratio * den, den], dim=-1)
    plan = plan_call(cfg, q0, nk, prompt_len, state)
    anchors = correlated(b, h, plan.n_anchors, d)
    raw = anchors
    if plan.carried_delta is not None:
        raw = torch.cat([plan.carried_delta.unsqueeze(2).float(), anchors], dim=2)
    lam, sums = delta_scales(plan, raw)
    want = scale_deltas(raw, lam).float()
    given, got_sums = scaled_block_deltas(plan, anchors, config=case.get("config"))
    covered = fully_covered_blocks(plan, plan.first_block - 1, plan.n_blocks + 1)
    row = dict(case=case, n_anchors=plan.n_anchors, n_blocks=plan.n_blocks,
               carried=plan.carried_delta is not None, previous=plan.previous_delta is not None,
               covered=int(covered[1:].sum()) if covered is not None else 0,
               lam_min=float(lam.min()), lam_max=float(lam.max()),
               lam_inner=float(((lam > 0.05) & (lam < 0.95)).double().mean()), shape=list(given.shape),
               want_shape=list(want.shape), dtype=str(given.dtype), contiguous=given.is_contiguous(),
               # relative to the raw Δs: λ = 0 everywhere makes the wanted output all zeros
               given_err=float((given - want).abs().max() / raw.abs().max()),
               sums_none=got_sums is None, want_sums_none=sums is None)
    if sums is not None and got_sums is not None:
        # relative to Σ‖Δ_{i-1}‖² (> 0 here), which bounds the scale of both sums (Cauchy–Schwarz)
        row["sums_err"] = float(((got_sums - sums).abs() / sums[..., 1:]).max())
        row["sums_dtype"] = str(got_sums.dtype)
    rows.append(row)

if "anchor" in sys.argv[3:]:  # the anchor kernel's D − Õ epilogue equals D minus its Õ (strided dense rows)
    from delta_attn.kernels.anchor_sparse import anchor_sparse_rows
    from delta_attn.kernels.sparse import PATTERN_RANGES, SparseSpec
    q = torch.randn(2, 8, 300, 32, generator=gen)
    k, v = torch.randn(2, 2, 300, 32, generator=gen), torch.randn(2, 2, 300, 32, generator=gen)
    spec = SparseSpec(PATTERN_RANGES, sink=4, window=40)
    kw = dict(anchor_lo=8, n_anchor=30, gamma=8, scale=32**-0.5, config=dict(BM=16, BN=16, num_warps=4))
    dense = torch.randn(2, 34, 8, 32, generator=gen).transpose(1, 2)  # (B, H, rows, D), heads strided
    o = anchor_sparse_rows(q, k, v, spec, **kw)
    delta = anchor_sparse_rows(q, k, v, spec, dense=dense, **kw)
    rows.append(dict(anchor_err=float((delta - (dense[:, :, :30] - o)).abs().max()),
                     anchor_scale=float(o.abs().max()), anchor_contiguous=delta.is_contiguous()))
print("ROWS " + json.dumps(rows))
"""


def _run(probe, seed, cases, *extra):
    """The rows ``probe`` prints (``ROWS <json>``), run in a fresh process under the interpreter."""
    return run_interpreted(["-c", probe, str(seed), json.dumps(cases), *extra], "ROWS ")


SMALL = dict(BA=8, BP=4, num_warps=4)  # several runs per head and several prefix steps at these sizes
SW = dict(sink=4, window=40, gamma=8)  # the anchors at 0 … 32 see every key: covered


def _cases():
    return [
        # the prompt's start (λ_0 = 1), covered anchors at the start; 61 anchors
        dict(SW, mode="auto", b=2, h=4, d=64, q_start=0, n_keys=488, config=SMALL),
        dict(SW, mode="auto", b=1, h=3, d=128, q_start=0, n_keys=300, config=None),
        # a chunk on a block boundary: carried sums, the previous chunk's last Δ (covered: the first anchors)
        dict(SW, mode="auto", b=2, h=2, d=80, q_start=16, n_keys=400, config=SMALL),
        dict(SW, mode="auto", b=2, h=2, d=64, q_start=120, n_keys=500, config=None),
        # a chunk continuing a γ-block: the carried Δ is block 0 of the output, with the carried sums' λ
        dict(SW, mode="auto", b=2, h=2, d=128, q_start=21, n_keys=411, config=SMALL),
        dict(SW, mode="auto", b=1, h=4, d=80, q_start=203, n_keys=470, config=None),
        # a chunk inside the carried block: no anchor of its own
        dict(SW, mode="auto", b=2, h=2, d=64, q_start=50, n_keys=54, config=SMALL),
        # auto-decay at the start and in a continuing chunk; auto-global one-shot
        dict(SW, mode="auto-decay", b=2, h=3, d=80, q_start=0, n_keys=390, config=SMALL),
        dict(SW, mode="auto-decay", b=1, h=2, d=128, q_start=37, n_keys=444, config=None),
        dict(SW, mode="auto-global", b=2, h=2, d=64, q_start=0, n_keys=333, config=SMALL),
        dict(SW, mode="auto-global", b=1, h=2, d=128, q_start=0, n_keys=260, config=None),
    ]


def test_fused_lambda_matches_delta_scales(seed):
    cases = _cases()
    rows = _run(PROBE, seed, cases, "anchor")
    anchor = rows.pop()
    assert len(rows) == len(cases)
    seen = {"start": 0, "previous": 0, "carried": 0, "covered": 0, "no-anchor": 0, "inner": 0, "clipped": 0}
    for row in rows:
        name = json.dumps(row["case"])
        case = row["case"]
        assert row["shape"] == row["want_shape"] == [case["b"], case["h"], row["n_blocks"], case["d"]], name
        assert row["dtype"] == "torch.float32" and row["contiguous"], name
        assert row["given_err"] < 2e-6, (name, row["given_err"])
        assert row["sums_none"] == row["want_sums_none"] == (row["case"]["mode"] == "auto-global"), name
        if not row["sums_none"]:
            assert row["sums_dtype"] == "torch.float64", name
            assert row["sums_err"] < 1e-6, (name, row["sums_err"])
        seen["start"] += row["case"]["q_start"] == 0
        seen["previous"] += row["previous"]
        seen["carried"] += row["carried"]
        seen["covered"] += row["covered"] > 0
        seen["no-anchor"] += row["n_anchors"] == 0
        seen["inner"] += row["lam_inner"] > 0.2
        seen["clipped"] += row["lam_min"] == 0.0
    # the cases cover what they say (a changed default config or plan rule would silently drop one)
    assert all(seen.values()), seen
    assert anchor["anchor_contiguous"] and anchor["anchor_err"] < 1e-6 * max(1.0, anchor["anchor_scale"]), anchor


PREFILL = r"""
import json, sys
import torch
import delta_attn.kernels.prefill as prefill
from delta_attn.backend import SequenceState
from delta_attn.bench.check import TINY_TILES
from delta_attn.config import DeltaConfig
from delta_attn.reference import reference_prefill

seed, cases = int(sys.argv[1]), json.loads(sys.argv[2])
gen = torch.Generator().manual_seed(seed)
calls = {"fused": 0}
fused = prefill.scaled_block_deltas


def counted(*args, **kwargs):
    calls["fused"] += 1
    return fused(*args, **kwargs)


prefill.scaled_block_deltas = counted
rows = []
for case in cases:
    b, hq, hkv, n, d = case["b"], case["hq"], case["hkv"], case["n"], case["d"]
    cfg = DeltaConfig(sink=4, window=40, gamma=8, tail=8, delta_scale=case["mode"])
    q = torch.randn(b, hq, n, d, generator=gen)
    k, v = torch.randn(b, hkv, n, d, generator=gen), torch.randn(b, hkv, n, d, generator=gen)
    scale = d**-0.5
    outs = {}
    for name, fn, dt in (("kernel", prefill.triton_prefill, torch.float32), ("ref32", reference_prefill, torch.float32),
                         ("ref64", reference_prefill, torch.float64)):
        kw = dict(kernel_configs=TINY_TILES) if name == "kernel" else {}
        before = calls["fused"]
        if not case["chunks"]:
            out = fn(q.to(dt), k.to(dt), v.to(dt), cfg, scale=scale, prompt_len=n, **kw)
            state = None
        else:
            state, parts, s = SequenceState(), [], 0
            for c in case["chunks"]:
                e = s + c
                parts.append(fn(q[:, :, s:e].to(dt), k[:, :, :e].to(dt), v[:, :, :e].to(dt), cfg, scale=scale,
                                prompt_len=n, state=state, **kw).double())
                s = e
            out = torch.cat(parts, dim=2)
        outs[name] = (out.double(), state, calls["fused"] - before)
    out, state, n_fused = outs["kernel"]
    ref, ref_state, _ = outs["ref32"]
    ref64 = outs["ref64"][0]
    row = dict(case=case, fused_calls=n_fused, finite=bool(torch.isfinite(out).all()),
               err_ref32=float((out - ref).abs().max() / ref.abs().max()),
               err_kernel64=float((out - ref64).abs().max() / ref64.abs().max()),
               err_ref64=float((ref - ref64).abs().max() / ref64.abs().max()))
    if state is not None:
        row["sums_err"] = float(((state.scale_sums - ref_state.scale_sums).abs() / ref_state.scale_sums[..., 1:]).max())
        row["block_delta_err"] = float((state.block_delta - ref_state.block_delta).abs().max()
                                       / ref_state.block_delta.abs().max())
        row["block_index"] = [state.block_index, ref_state.block_index]
    rows.append(row)
print("ROWS " + json.dumps(rows))
"""

PREFILL_CASES = [
    # one call: batch 2, GQA 4:1, covered anchors (window 40 > γ 8) at the start
    dict(mode="auto", b=2, hq=8, hkv=2, n=301, d=64, chunks=[]),
    # chunks on block boundaries (carried sums + previous Δ) and inside blocks (carried Δ), one of one token
    dict(mode="auto", b=1, hq=8, hkv=1, n=333, d=80, chunks=[96, 61, 1, 175]),
    dict(mode="auto-decay", b=2, hq=4, hkv=1, n=290, d=128, chunks=[45, 3, 120, 122]),
    dict(mode="auto-global", b=1, hq=4, hkv=1, n=260, d=64, chunks=[]),
]


def test_fused_lambda_prefill_matches_reference(seed):
    """The whole λ prefill (anchor kernel D − Õ → λ kernels → sparse epilogue) equals the PyTorch reference
    (``combine.delta_scales``) in float32 to rounding, and the float64 reference as closely as that does."""
    rows = _run(PREFILL, seed, PREFILL_CASES)
    assert len(rows) == len(PREFILL_CASES)
    for row in rows:
        case = row["case"]
        assert row["fused_calls"] == max(1, len(case["chunks"])), row  # every call took the fused λ path
        assert row["finite"], row
        assert row["err_ref32"] < 2e-6, row
        assert row["err_kernel64"] <= 2 * row["err_ref64"] + 1e-6, row
        if case["chunks"]:
            assert row["block_index"][0] == row["block_index"][1], row
            assert row["sums_err"] < 1e-5 and row["block_delta_err"] < 1e-5, row
