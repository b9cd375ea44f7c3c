"""Issue 16, ninth session: can FlashAttention 4's CuTe-DSL sm_90 kernels (warp-specialised, TMA) run Δ attention's
two passes — the sink + window base and the γ-strided anchor rows — faster than this package's Triton kernels?

One Llama-3-8B layer (Hq 32, Hkv 8, D 128, bf16, sink 128, window 2048, γ 64), FA4 layout (B, N, H, D) memory,
the Triton kernels on the same memory seen as (B, H, N, D). Times: median of synchronised calls and back to back.
Checks at the first length: sampled rows against a float64 oracle, FA4's and Triton's errors side by side.
Prints a table last; writes fa4_probe.json to the directory given.
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback

import torch

from delta_attn.bench.layer import method_config, sdpa_fn, time_back_to_back, time_cuda
from delta_attn.config import DeltaConfig
from delta_attn.kernels import fa4, triton_prefill
from delta_attn.kernels.dense_rows import RowSet, dense_rows
from delta_attn.kernels.prefill import ensure_allocator

B, HQ, HKV, D, SINK, WINDOW, GAMMA = 1, 32, 8, 128, 128, 2048, 64
out_dir = sys.argv[1] if len(sys.argv) > 1 else "."
lengths = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "131072,1048576").split(",")]
rows, errors = [], {}
scale = 1 / math.sqrt(D)
base = DeltaConfig(sink=SINK, window=WINDOW, gamma=GAMMA, sparse="streaming")


def combine_repeat(o, d, gamma, body_end):
    """What the probe timed as "fa4 combine": Õ (B, N, H, D) += D_j − Õ_{jγ} on rows [jγ, (j+1)γ) < body_end, as one
    broadcast PyTorch add with Δ in float32 (the library now does this with scan.repeat_add)."""
    n_full = body_end // gamma
    delta = d.float() - o[:, 0:body_end:gamma].float()
    b, _, h, dim = o.shape
    o[:, : n_full * gamma].view(b, n_full, gamma, h, dim).add_(delta[:, :n_full, None])
    if body_end > n_full * gamma:
        o[:, n_full * gamma : body_end].add_(delta[:, n_full : n_full + 1])
    return o


def record(n, name, fn, *, reps=7, b2b=5, once=False):
    try:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        first = (time.perf_counter() - t0) * 1e3
        t = time_cuda(fn, warmup=1, reps=reps, budget_s=2.0, once=once)
        bb = None if once else time_back_to_back(fn, calls=b2b)
        rows.append(dict(n=n, name=name, ms=t["ms"], reps=t["reps"], b2b=bb, first_ms=first))
        print(
            f"{n:>8} {name:<28} {t['ms']:9.3f} ms  b2b {bb if bb is None else round(bb, 3)}  first {first:.0f} ms",
            flush=True,
        )
    except Exception as e:  # keep going: one call answers as many questions as it can
        traceback.print_exc()
        errors[f"{n} {name}"] = repr(e)[:500]
        print(f"{n:>8} {name:<28} FAILED {e!r}"[:300], flush=True)


def oracle_rows(q, k, v, pos, keep):
    """float64 attention of the query rows at ``pos`` (FA4 layout) over keys keep(p, k)."""
    g = HQ // HKV
    qs = q[:, pos].double()  # (B, R, HQ, D)
    kk = k.double().repeat_interleave(g, dim=2)
    vv = v.double().repeat_interleave(g, dim=2)
    s = torch.einsum("brhd,bnhd->bhrn", qs, kk) * scale
    kidx = torch.arange(k.shape[1], device=q.device)
    s = s.masked_fill(~keep(pos[:, None], kidx[None, :])[None, None], float("-inf"))
    return torch.einsum("bhrn,bnhd->brhd", torch.softmax(s, -1), vv)


def run_length(n: int) -> None:
    gen = torch.Generator(device="cuda").manual_seed(n)
    q = torch.randn(B, n, HQ, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(B, n, HKV, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(B, n, HKV, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, N, D) views: the "hf" layout
    ensure_allocator()
    tail_start = n - base.tail_rows(n)
    n_anchor = -(-tail_start // GAMMA)
    qa = q[:, 0:tail_start:GAMMA]  # anchor rows: a strided view, no copy

    t0 = time.perf_counter()
    fa4.cached_tile_lists(n, n, start=0, step=1, sink=SINK, window=WINDOW, device="cuda:0")  # what the calls reuse
    fa4.cached_tile_lists(n_anchor, n, start=0, step=GAMMA, sink=0, window=fa4._INF, device="cuda:0")
    torch.cuda.synchronize()
    print(f"tile lists: {(time.perf_counter() - t0) * 1e3:.1f} ms", flush=True)

    sparse_cfg, delta_cfg = method_config("sparse", base), method_config("delta", base)
    rs = RowSet(0, tail_start, GAMMA, tail_start, n)
    if n <= 131072:
        cudnn, _ = sdpa_fn("cudnn", qt, kt, vt)
        record(n, "cudnn causal", cudnn, reps=3)
        record(n, "fa4 causal", lambda: fa4.plain_attention(q, k, v, scale, causal=True), reps=3)
    record(n, "triton sparse", lambda: triton_prefill(qt, kt, vt, sparse_cfg, scale=scale, prompt_len=n))
    record(n, "triton rows", lambda: dense_rows(qt, kt, vt, rs, scale=scale))
    record(n, "triton delta", lambda: triton_prefill(qt, kt, vt, delta_cfg, scale=scale, prompt_len=n))
    record(n, "fa4 local (no sink)", lambda: fa4.plain_attention(q, k, v, scale, window=(WINDOW - 1, 0)))
    record(n, "fa4 sparse base", lambda: fa4.sparse_base(q, k, v, sink=SINK, window=WINDOW))
    record(n, "fa4 anchors", lambda: fa4.anchor_rows(qa, k, v, start=0, step=GAMMA))
    record(n, "fa4 anchors packgqa", lambda: fa4.anchor_rows(qa, k, v, start=0, step=GAMMA, pack_gqa=True))

    def fa4_delta():
        o = fa4.sparse_base(q, k, v, sink=SINK, window=WINDOW)
        d = fa4.anchor_rows(qa, k, v, start=0, step=GAMMA)
        combine_repeat(o, d, GAMMA, tail_start)
        return o

    try:
        o_ref = fa4.sparse_base(q, k, v, sink=SINK, window=WINDOW)
        d_ref = fa4.anchor_rows(qa, k, v, start=0, step=GAMMA)
        record(n, "fa4 combine (in place)", lambda: combine_repeat(o_ref, d_ref, GAMMA, tail_start))
    except Exception as e:
        traceback.print_exc()
        errors[f"{n} combine"] = repr(e)[:500]
    record(n, "fa4 delta (base+rows+combine)", fa4_delta)

    if n == lengths[0]:  # accuracy on sampled rows against float64
        try:
            gen2 = torch.Generator(device="cuda").manual_seed(7)
            pos = torch.sort(torch.randint(0, tail_start, (96,), device="cuda", generator=gen2)).values
            pos = torch.cat([pos, torch.tensor([0, 1, 127, 128, 2047, 2048, 2175, 4096], device="cuda")]).sort().values

            def sw(p, kk):
                return (kk <= p) & ((kk < SINK) | (p - kk < WINDOW))

            ref = oracle_rows(q, k, v, pos, sw)
            o_fa = fa4.sparse_base(q, k, v, sink=SINK, window=WINDOW)[:, pos].double()
            o_tr = triton_prefill(qt, kt, vt, sparse_cfg, scale=scale, prompt_len=n).transpose(1, 2)[:, pos].double()
            errors["acc sparse fa4 max abs"] = float((o_fa - ref).abs().max())
            errors["acc sparse triton max abs"] = float((o_tr - ref).abs().max())
            apos = torch.sort(torch.randint(0, n_anchor, (64,), device="cuda", generator=gen2)).values
            aref = oracle_rows(q, k, v, apos * GAMMA, lambda p, kk: kk <= p)
            d_fa = fa4.anchor_rows(qa, k, v, start=0, step=GAMMA)[:, apos].double()
            d_fa2 = fa4.anchor_rows(qa, k, v, start=0, step=GAMMA, pack_gqa=True)[:, apos].double()
            errors["acc anchors fa4 max abs"] = float((d_fa - aref).abs().max())
            errors["acc anchors fa4 packgqa max abs"] = float((d_fa2 - aref).abs().max())
            o_delta_tr = triton_prefill(qt, kt, vt, delta_cfg, scale=scale, prompt_len=n).transpose(1, 2)
            o_delta_fa = fa4_delta()
            errors["delta fa4 vs triton max abs"] = float(
                (o_delta_fa[:, :tail_start].double() - o_delta_tr[:, :tail_start].double()).abs().max()
            )
            errors["delta bf16 output scale (max |O|)"] = float(o_delta_tr.abs().max())
        except Exception as e:
            traceback.print_exc()
            errors["accuracy"] = repr(e)[:500]


for n in lengths:
    run_length(n)
    torch.cuda.empty_cache()

dev = torch.cuda.get_device_name()
json.dump(dict(device=dev, rows=rows, notes=errors), open(f"{out_dir}/fa4_probe.json", "w"), indent=1)
print(f"\nDevice: {dev}; Llama-3-8B layer, sink {SINK}, window {WINDOW}, γ {GAMMA}")
for k_, v_ in errors.items():
    print(f"  {k_}: {v_}")
print("| N | method | ms | back to back ms | first call ms |")
print("|---|---|---:|---:|---:|")
for r in rows:
    print(
        f"| {r['n']} | {r['name']} | {r['ms']:.3f} | {r['b2b'] if r['b2b'] is None else round(r['b2b'], 3)} | "
        f"{r['first_ms']:.0f} |"
    )
