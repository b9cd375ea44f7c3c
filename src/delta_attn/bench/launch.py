"""Launch-configuration sweep of the two attention kernels: ``python -m delta_attn.bench.launch``.

Times the dense-rows kernel (Δ's anchor + tail rows) and the sparse kernel (sink + window, fused Δ
epilogue and plain) for each candidate configuration on one Llama-3-8B layer, next to SDPA cuDNN.
Variants are compiled first in parallel processes (Triton's on-disk cache is shared), then timed
one after the other. The winners go into ``CONFIG`` in ``kernels/dense_rows.py`` / ``kernels/sparse.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

# (name, config) candidates per kernel; HP = query heads of one KV group per sparse program. Shared memory per
# program (sm_90, d = 128, `python -m delta_attn.bench.sm90_report`): BM = 64 / BN = 64 tiles take 83 KB at 2
# stages (two programs per SM) and 116 KB at 3 (one); BM = 128 with 8 warps one program per SM either way.
DENSE_CANDIDATES = {
    "m128n64w8s3-tma": dict(BM=128, BN=64, num_warps=8, num_stages=3, USE_TMA=True),
    "m128n64w8s2-tma": dict(BM=128, BN=64, num_warps=8, num_stages=2, USE_TMA=True),
    "m128n64w8s4-tma": dict(BM=128, BN=64, num_warps=8, num_stages=4, USE_TMA=True),
    "m64n64w4s2-tma": dict(BM=64, BN=64, num_warps=4, num_stages=2, USE_TMA=True),
    "m64n64w4s3-tma": dict(BM=64, BN=64, num_warps=4, num_stages=3, USE_TMA=True),
    "m128n128w8s2-tma": dict(BM=128, BN=128, num_warps=8, num_stages=2, USE_TMA=True),
    "m128n64w8s3-tma-ips8": dict(BM=128, BN=64, num_warps=8, num_stages=3, USE_TMA=True, ITEMS_PER_SM=8),
    "m64n64w4s2-tma-ips8": dict(BM=64, BN=64, num_warps=4, num_stages=2, USE_TMA=True, ITEMS_PER_SM=8),
}
SPARSE_CANDIDATES = {
    "m64n64w4s3-tma": dict(BM=64, BN=64, num_warps=4, num_stages=3, USE_TMA=True),
    "m64n64w4s2-tma": dict(BM=64, BN=64, num_warps=4, num_stages=2, USE_TMA=True),
    "m128n64w8s2-tma": dict(BM=128, BN=64, num_warps=8, num_stages=2, USE_TMA=True),
    "m128n64w8s3-tma": dict(BM=128, BN=64, num_warps=8, num_stages=3, USE_TMA=True),
    "m128n128w8s2-tma": dict(BM=128, BN=128, num_warps=8, num_stages=2, USE_TMA=True),
    "m64n128w4s2-tma": dict(BM=64, BN=128, num_warps=4, num_stages=2, USE_TMA=True),
    "m128hp2n64w8s2-tma": dict(BM=128, BN=64, num_warps=8, num_stages=2, USE_TMA=True, HP=2),
    "m64n32w4s4-tma": dict(BM=64, BN=32, num_warps=4, num_stages=4, USE_TMA=True),
}


# Largest |difference| from the shipped configuration's output that a candidate may show (random bf16 inputs,
# outputs of order 1: a bf16 rounding step is 4e-3, a wrong tile or mask shows as O(1)).
TOLERANCE = 0.05


def variants():
    """(name, dense config, sparse config): each kernel's candidates, paired for one launch each."""
    d, s = list(DENSE_CANDIDATES.items()), list(SPARSE_CANDIDATES.items())
    for i in range(max(len(d), len(s))):
        dn, dc = d[min(i, len(d) - 1)]
        sn, sc = s[min(i, len(s) - 1)]
        yield f"{dn}|{sn}", dc, sc


def _inputs(n, heads=32, kv_heads=8, d=128):
    import torch

    gen = torch.Generator(device="cuda").manual_seed(1)
    mk = lambda h: torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16, generator=gen)  # noqa: E731
    return mk(heads), mk(kv_heads), mk(kv_heads)


def _calls(n, dcfg, scfg, q, k, v, gamma=64, sink=128, window=2048):
    """Closures for (dense rows, sparse fused-Δ, sparse plain) with one configuration each."""
    import torch

    from ..config import DeltaConfig
    from ..kernels.blocks import spec_for
    from ..kernels.dense_rows import RowSet, dense_rows
    from ..kernels.prefill import ensure_allocator
    from ..kernels.sparse import sparse_attention
    from ..sparse import SinkWindowPattern

    ensure_allocator()
    body = n - DeltaConfig(gamma=gamma, sink=sink, window=window).tail_rows(n)
    rows = RowSet(0, body, gamma, body, n)
    scale = 1 / math.sqrt(q.shape[-1])
    spec = spec_for(SinkWindowPattern(sink, window), q_start=0, row_end=body, n_keys=n, bm=scfg["BM"], bn=scfg["BN"])
    dense = dense_rows(q, k, v, rows, scale=scale, config=dcfg)
    out = torch.empty_like(q)
    delta = dict(gamma=gamma, dense=dense, first_anchor=0)
    return rows, (
        lambda: dense_rows(q, k, v, rows, scale=scale, config=dcfg),
        lambda: sparse_attention(q, k, v, spec, scale=scale, row_end=body, out=out, delta=delta, config=scfg),
        lambda: sparse_attention(q, k, v, spec, scale=scale, row_end=n, out=out, config=scfg),
    )


def _prewarm(args):
    name, dcfg, scfg = args
    import torch

    q, k, v = _inputs(4096)
    try:
        _, fns = _calls(4096, dcfg, scfg, q, k, v)
        for f in fns:
            f()
        torch.cuda.synchronize()
        return name, None
    except Exception as exc:  # a variant that does not compile is reported, not fatal
        return name, f"{type(exc).__name__}: {str(exc)[:300]}"


def run_sweep(n_label: str = "128K", workers: int = 8, out: str | None = None) -> dict:
    """Time every candidate at one length; returns the table and the fastest config per kernel."""
    import multiprocessing as mp

    import torch

    from ..config import DeltaConfig
    from ..cost import causal_pairs, pair_flops, prefill_cost
    from .layer import parse_length, sdpa_fn, time_cuda

    n = parse_length(n_label)
    todo = list(variants())
    with mp.get_context("spawn").Pool(workers) as pool:
        failed = dict(x for x in pool.map(_prewarm, todo) if x[1])
    for name, err in failed.items():
        print(f"variant {name} failed: {err}", flush=True)
    q, k, v = _inputs(n)
    heads, head_dim = q.shape[1], q.shape[3]
    fn, _ = sdpa_fn("cudnn", q, k, v)
    t_dense = time_cuda(fn, reps=5)["ms"]
    del fn
    torch.cuda.empty_cache()
    dense_tf = pair_flops(causal_pairs(n), head_dim, heads) / (t_dense * 1e-3) / 1e12
    cost = prefill_cost(DeltaConfig(gamma=64, sink=128, window=2048), n)  # the defaults of _calls
    print(f"N={n}: SDPA cuDNN {t_dense:.2f} ms, {dense_tf:.0f} TFLOP/s", flush=True)
    res = dict(n=n, cudnn_ms=t_dense, cudnn_tflops=dense_tf, dense={}, sparse={}, tolerance=TOLERANCE)
    reference = {}  # each output of the first (shipped) configuration: a candidate must match it
    for name, dcfg, scfg in todo:
        if name in failed:
            continue
        dn, sn = name.split("|")
        _, (f_rows, f_fused, f_plain) = _calls(n, dcfg, scfg, q, k, v)
        fl = dict(
            rows=pair_flops(cost.dense_rows, head_dim, heads),
            sparse_delta=pair_flops(cost.base_body, head_dim, heads),
            sparse=pair_flops(cost.base, head_dim, heads),
        )
        for key, f, table, cname, cfg in (
            ("rows", f_rows, "dense", dn, dcfg),
            ("sparse_delta", f_fused, "sparse", sn, scfg),
            ("sparse", f_plain, "sparse", sn, scfg),
        ):
            if key == "rows" and dn in res["dense"] or key != "rows" and key in res["sparse"].get(sn, {}):
                continue
            got = f().float().clone()
            ref = reference.setdefault(key, got)
            err = float((got - ref).abs().max())
            del got
            t = time_cuda(f, warmup=2, reps=20)
            entry = res[table].setdefault(cname, dict(config=cfg))
            entry[key] = dict(ms=t["ms"], tflops=fl[key] / (t["ms"] * 1e-3) / 1e12, spread=t["spread"], max_err=err)
        torch.cuda.empty_cache()
    for name, r in res["dense"].items():
        print(
            f"dense-rows {name:22s} {r['rows']['ms']:7.3f} ms {r['rows']['tflops']:5.0f} TFLOP/s "
            f"({r['rows']['tflops'] / dense_tf:.2f} of cuDNN) max err {r['rows']['max_err']:.1e}",
            flush=True,
        )
    for name, r in res["sparse"].items():
        print(
            f"sparse     {name:22s} fused-Δ {r['sparse_delta']['ms']:7.3f} ms {r['sparse_delta']['tflops']:5.0f} TF | "
            f"plain {r['sparse']['ms']:7.3f} ms {r['sparse']['tflops']:5.0f} TF | max err "
            f"{max(r['sparse_delta']['max_err'], r['sparse']['max_err']):.1e}",
            flush=True,
        )
    ok = lambda r, keys: all(r[key]["max_err"] <= TOLERANCE for key in keys)  # noqa: E731
    best_d = min(((k_, r) for k_, r in res["dense"].items() if ok(r, ["rows"])), key=lambda kv: kv[1]["rows"]["ms"])
    best_s = min(
        ((k_, r) for k_, r in res["sparse"].items() if ok(r, ["sparse_delta", "sparse"])),
        key=lambda kv: kv[1]["sparse_delta"]["ms"],
    )
    res["best"] = dict(dense=best_d[1]["config"], sparse=best_s[1]["config"], names=[best_d[0], best_s[0]])
    print(f"best: dense-rows {best_d[0]}, sparse {best_s[0]}", flush=True)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"sweep_{n_label}.json"), "w") as f:
            json.dump(res, f, indent=1)
        # the winners as `delta-attn bench layer --kernel-config` reads them
        with open(os.path.join(out, f"best_{n_label}.json"), "w") as f:
            json.dump({"dense": res["best"]["dense"], "sparse": res["best"]["sparse"]}, f, indent=1)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="128K")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/sweep"))
    args = ap.parse_args(argv)
    run_sweep(args.n, args.workers, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
