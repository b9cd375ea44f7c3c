"""Correctness checks of the Triton backend against a float64 oracle: ``python -m delta_attn.bench.check``.

Every check draws fresh random inputs (never zeros), poisons the output memory with NaN first (so
an unwritten row shows up), and compares

    err_kernel = ‖kernel − oracle‖ / ‖oracle‖     with     err_ref = ‖reference − oracle‖ / ‖oracle‖,

where the oracle is :func:`delta_attn.reference.reference_prefill` in float64 and the reference is
the same function computing in the kernel's dtype (bf16 kernel vs bf16 PyTorch). A check passes if
the output is finite and ``err_kernel <= 2 * err_ref + 1e-6`` (the flash-attention test rule).
``err_ref32`` (reference computing in float32, its default for half inputs) is reported too.

Data-dependent bases (top-k, vertical-slash) are planned once on the kernel's inputs and then
frozen (:class:`FrozenMethod`), so oracle, reference and kernel see the same selection.

The same cases run from ``tests/test_kernels_gpu.py`` (pytest, CUDA), from
``tests/test_kernels_interp.py`` (tiny sizes, Triton's CPU interpreter) and from this module's
``main`` on the GPU machine, which also times the benchmark (``--bench``) and writes logs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

from ..backend import SequenceState
from ..config import DeltaConfig
from ..sparse import resolve_sparse_method
from .check_cases import Case, FrozenMethod, gpu_cases, tiny_cases

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _config(case: Case, q, k) -> DeltaConfig:
    cfg = dict(case.cfg)
    if cfg.get("sparse") == "strided":
        from ..sparse import MaskModMethod

        cfg["sparse"] = MaskModMethod(lambda b, h, qi, kj: ((qi - kj) % 7 == 0) | (qi - kj < 16), "strided")
    config = DeltaConfig(**cfg)
    if config.method_name in ("topk", "vertical_slash") and config.mode != "dense":
        pattern = resolve_sparse_method(config.sparse).plan(q, k, config, q_start=0, scale=q.shape[-1] ** -0.5)
        config = config.replace(sparse=FrozenMethod(pattern, config.method_name))
    return config


def run_chunked(fn, q, k, v, config, chunks, *, scale, prompt_len=None, **kw):
    """Call ``fn`` (a prefill backend) on each chunk in order with one shared state."""
    n = k.shape[2]
    prompt_len = n if prompt_len is None else prompt_len
    if not chunks:
        return fn(q, k, v, config, scale=scale, prompt_len=prompt_len, state=None, **kw)
    state, outs, s = SequenceState(), [], 0
    for c in chunks:
        e = s + c
        outs.append(
            fn(
                q[:, :, s:e], k[:, :, :e], v[:, :, :e], config, scale=scale, prompt_len=prompt_len, state=state, **kw
            ).float()
        )
        s = e
    return torch.cat(outs, dim=2)


def poison(device: torch.device, nbytes: int) -> None:
    """Fill freed allocator memory with NaN so an output row the kernels never write stays NaN."""
    if device.type == "cuda":
        x = torch.full((max(1, nbytes // 4),), float("nan"), device=device)
        del x


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).norm() / ref.norm().clamp(min=1e-30)).item()


def fresh_seed() -> int:
    return int(time.time_ns() % (1 << 31))


def run_case(
    case: Case, device: str | torch.device = "cuda", seed: int | None = None, kernel_configs: dict | None = None
) -> dict:
    """One case against the float64 oracle. ``kernel_configs``: launch configs for ``triton_prefill``."""
    from ..kernels import triton_prefill
    from ..reference import reference_prefill

    dev = torch.device(device)
    dt = DTYPES[case.dtype]
    seed = fresh_seed() if seed is None else seed
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shape_q = (case.b, case.hq, case.n, case.d)
    shape_k = (case.b, case.hkv, case.n, case.d)
    q, k, v = (torch.randn(s, generator=gen).to(dev, dt) for s in (shape_q, shape_k, shape_k))
    if case.layout == "hf":  # the same values in (B, N, H, D) memory: the projections' layout in a model
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    config = _config(case, q, k)
    scale = 1.0 / math.sqrt(case.d)
    chunks, kw = case.chunks, dict(scale=scale, prompt_len=case.n)
    if chunks and sum(chunks) < case.n:  # the prompt goes on after what is prefilled here
        k, v, q = k[:, :, : sum(chunks)], v[:, :, : sum(chunks)], q[:, :, : sum(chunks)]
    oracle = run_chunked(reference_prefill, q.double(), k.double(), v.double(), config, chunks, **kw)
    ref = run_chunked(reference_prefill, q, k, v, config, chunks, compute_dtype=dt, **kw)
    ref32 = run_chunked(reference_prefill, q, k, v, config, chunks, **kw)
    poison(dev, 4 * q.numel() * 4)
    t0 = time.time()
    out = run_chunked(triton_prefill, q, k, v, config, chunks, kernel_configs=kernel_configs, **kw)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    wall = time.time() - t0
    finite = bool(torch.isfinite(out).all().item())
    ek, er, er32 = rel_err(out, oracle), rel_err(ref, oracle), rel_err(ref32, oracle)
    ok = finite and out.shape == oracle.shape and ek <= 2 * er + 1e-6
    return dict(
        name=case.name,
        shape=f"{case.b}x{case.hq}/{case.hkv}x{case.n}x{case.d}",
        dtype=case.dtype,
        err_kernel=ek,
        err_ref=er,
        err_ref32=er32,
        ratio=ek / max(er, 1e-30),
        finite=finite,
        ok=ok,
        wall_s=wall,
        seed=seed,
    )


def kernel_unit_checks(
    device="cuda", dtype=torch.bfloat16, n=3000, d=128, tiny=False, kernel_configs=None, seed=None
) -> list[dict]:
    """Each kernel alone against float64: dense rows, sparse rows per pattern, the scan apply."""
    from ..filters import abg_system, initial_state, lti_scan
    from ..kernels.blocks import spec_for
    from ..kernels.dense_rows import RowSet, dense_rows
    from ..kernels.scan import delta_scan_apply
    from ..kernels.sparse import sparse_attention
    from ..reference import attention_rows
    from ..sparse import AnchorBlockPattern, SinkWindowPattern

    dev = torch.device(device)
    if tiny:
        n, d = 200, 32
    res = []
    b, hq, hkv = 2, 8, 2
    q_start = n // 3 + 1
    kc = kernel_configs or {}
    seed = fresh_seed() if seed is None else seed
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, n - q_start, d, generator=gen).to(dev, dtype)
    k = torch.randn(b, hkv, n, d, generator=gen).to(dev, dtype)
    v = torch.randn(b, hkv, n, d, generator=gen).to(dev, dtype)
    scale = d**-0.5

    def compare(name, got, want64, want_dt):
        finite = bool(torch.isfinite(got).all().item())
        ek, er = rel_err(got, want64), rel_err(want_dt, want64)
        res.append(
            dict(
                name=name,
                shape=f"{b}x{hq}/{hkv}x{n}x{d}",
                dtype=str(dtype).split(".")[-1],
                err_kernel=ek,
                err_ref=er,
                err_ref32=float("nan"),
                ratio=ek / max(er, 1e-30),
                finite=finite,
                ok=finite and ek <= 2 * er + 1e-6,
                wall_s=0.0,
                seed=seed,
            )
        )

    # dense rows: anchors every 16 from an odd start, plus a tail
    rows = RowSet(q_start + 3, n - 50, 16, n - 50, n)
    pos = torch.from_numpy(rows.positions()).to(dev)
    out = torch.full((b, hq, len(rows), d), float("nan"), device=dev)
    dense_rows(q, k, v, rows, scale=scale, out=out, config=kc.get("dense"))
    _, want = attention_rows(
        q.double(),
        k.double(),
        v.double(),
        scale=scale,
        q_start=q_start,
        pattern=None,
        dense_pos=pos,
        compute_dtype=torch.float64,
    )
    _, want_dt = attention_rows(q, k, v, scale=scale, q_start=q_start, pattern=None, dense_pos=pos, compute_dtype=dtype)
    compare("unit-dense-rows", out, want, want_dt)
    # sparse rows, plain epilogue, per static pattern and the two index-list patterns
    cfg = DeltaConfig(sink=8, window=n // 7, topk_block=32, topk_blocks=3, vertical_size=20, slash_size=40)
    patterns = {"sink-window": SinkWindowPattern(8, n // 7), "anchor-block": AnchorBlockPattern(n // 5)}
    for name in ("topk", "vertical_slash"):
        patterns[name] = resolve_sparse_method(name).plan(q, k, cfg, q_start=q_start, scale=scale)
    from ..kernels import sparse as sp_mod
    from ..kernels.dense_rows import kernel_config

    sparse_cfg = dict(kc["sparse"]) if kc.get("sparse") else kernel_config(dtype, sp_mod.CONFIG)
    for name, pat in patterns.items():
        spec = spec_for(pat, q_start=q_start, row_end=n, n_keys=n, bm=sparse_cfg["BM"], bn=sparse_cfg["BN"])
        out = torch.full((b, hq, n - q_start, d), float("nan"), device=dev)
        sparse_attention(q, k, v, spec, scale=scale, out=out, config=sparse_cfg)
        want, _ = attention_rows(
            q.double(),
            k.double(),
            v.double(),
            scale=scale,
            q_start=q_start,
            pattern=pat,
            dense_pos=pos[:0],
            compute_dtype=torch.float64,
        )
        want_dt, _ = attention_rows(
            q, k, v, scale=scale, q_start=q_start, pattern=pat, dense_pos=pos[:0], compute_dtype=dtype
        )
        compare(f"unit-sparse-{name}", out, want, want_dt)
    # scan apply: abg filter over repeated deltas, chunk starting inside a block
    gamma, q0, end = 16, 21, n - 7
    m, kk = abg_system(0.3, 0.045, 0.0045)
    nseg = (end - 1) // gamma - q0 // gamma + 1
    deltas = torch.randn(b, hq, nseg, d, generator=gen).to(dev)
    sparse = torch.randn(b, hq, n - q0, d, generator=gen).to(dev)
    s_prev = initial_state(torch.randn(b, hq, d, generator=gen).to(dev), 3)
    out = torch.full((b, hq, n - q0, d), float("nan"), device=dev)
    s_last = delta_scan_apply(sparse, deltas, s_prev, m, kk, q_start=q0, body_end=end, gamma=gamma, out=out)
    z = deltas.double()[:, :, torch.arange(q0, end, device=dev) // gamma - q0 // gamma]
    x, s_ref = lti_scan(z, m, kk, s_prev.double())
    want = sparse.double()[:, :, : end - q0] + x
    compare("unit-scan-abg", out[:, :, : end - q0], want, want.float())
    res[-1]["ok"] = res[-1]["ok"] or (res[-1]["finite"] and res[-1]["err_kernel"] < 1e-5)
    compare("unit-scan-state", s_last, s_ref, s_ref.float())
    res[-1]["ok"] = res[-1]["finite"] and res[-1]["err_kernel"] < 1e-5
    # a NaN Δ of one γ-block leaves every row before that block bit-identical (the scan is causal)
    j = nseg // 2
    deltas[:, :, j, 0] = float("nan")
    out_nan = torch.full_like(out, float("nan"))
    delta_scan_apply(sparse, deltas, s_prev, m, kk, q_start=q0, body_end=end, gamma=gamma, out=out_nan)
    before = (q0 // gamma + j) * gamma - q0  # rows of the call before block j
    same = torch.equal(out_nan[:, :, :before], out[:, :, :before])
    compare("unit-scan-nan-causal", out_nan[:, :, :before], want[:, :, :before], want[:, :, :before].float())
    res[-1]["ok"] = same and res[-1]["finite"]
    return res


def format_table(rows: list[dict]) -> str:
    lines = [f"{'check':28s} {'shape':22s} {'dtype':8s} {'err_kernel':>10s} {'err_ref':>10s} {'ratio':>6s}  ok"]
    for r in rows:
        lines.append(
            f"{r['name']:28s} {r['shape']:22s} {r['dtype']:8s} {r['err_kernel']:10.2e} {r['err_ref']:10.2e} "
            f"{r['ratio']:6.2f}  {'PASS' if r['ok'] else 'FAIL'}"
        )
    return "\n".join(lines)


def _print_row(row: dict) -> None:
    """One result line as soon as its check ends (the table's row format)."""
    print(format_table([row]).splitlines()[1], flush=True)


def _failed(name: str, dtype: str, exc: Exception) -> dict:
    """A result row for a check that raised (reported, so the other checks still run)."""
    nan = float("nan")
    return dict(
        name=name,
        shape="",
        dtype=dtype,
        err_kernel=nan,
        err_ref=nan,
        err_ref32=nan,
        ratio=nan,
        finite=False,
        ok=False,
        wall_s=0.0,
        error=f"{type(exc).__name__}: {exc}",
    )


def _worker(args):
    case, device, kernel_configs, seed = args
    try:
        return run_case(case, device, seed=seed, kernel_configs=kernel_configs)
    except Exception as exc:  # report, don't stop the other checks
        return _failed(case.name, case.dtype, exc)


# Small tiles so that tiny interpreter cases still cover many tiles, split-K and merges.
TINY_TILES = dict(
    dense=dict(BM=16, BN=16, num_warps=4, num_stages=2, USE_TMA=False),
    sparse=dict(BM=32, BN=16, num_warps=4, num_stages=2, USE_TMA=False),
)


def run_all(
    device="cuda", workers: int = 1, tiny: bool = False, names=None, configs=None, seed=None, on_row=None
) -> list[dict]:
    """Every case (or ``names``, plus ``"unit"`` for the kernel unit checks) against the oracle.

    ``on_row(row)`` is called with each case's result as it comes in (the GPU run prints it at once, so a call
    cut by its time limit still shows the cases that finished).

    ``configs``: launch configs ``{"dense": {...}, "sparse": {...}}`` passed to the kernels for half
    inputs (float32 cases keep the defaults); tiny runs use :data:`TINY_TILES` unless given, for
    every dtype. ``seed``: case i draws its inputs from ``seed + i`` (default: a fresh seed).
    """
    cases = tiny_cases() if tiny else gpu_cases()
    if names:
        cases = [c for c in cases if c.name in names]
    if tiny:
        configs = configs or TINY_TILES
    seed = fresh_seed() if seed is None else seed
    jobs = [(c, device, configs if tiny or c.dtype != "fp32" else None, seed + i) for i, c in enumerate(cases)]
    rows = []
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for row in pool.imap(
                _worker, jobs, chunksize=1
            ):  # in case order, each as soon as it (and those before) ends
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    else:
        for job in jobs:
            rows.append(_worker(job))
            if on_row is not None:
                on_row(rows[-1])
    try:
        if not names or "unit" in names:
            rows += kernel_unit_checks(
                device, torch.float32 if tiny else torch.bfloat16, tiny=tiny, kernel_configs=configs, seed=seed
            )
    except Exception as exc:
        rows.append(_failed("unit-checks", "", exc))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="GPU correctness checks (+ optional benchmark) for the Triton backend")
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/check"), help="directory for logs and results")
    ap.add_argument("--workers", type=int, default=8, help="processes compiling/running checks in parallel")
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="tiny cases on CPU through Triton's interpreter (start with TRITON_INTERPRET=1 set)",
    )
    ap.add_argument("--cases", default="", help="comma-separated case names (and 'unit'); default all")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON line")
    ap.add_argument(
        "--kernel-config",
        default="",
        help='JSON file {"dense": {...}, "sparse": {...}} of launch configs (half inputs; with --tiny: every dtype)',
    )
    ap.add_argument("--seed", type=int, default=None, help="case i draws its inputs from SEED + i (default: fresh)")
    ap.add_argument(
        "--tune",
        default="",
        metavar="N",
        help="first sweep the launch configs at this length and use the fastest (written to "
        "OUT/kernel_config.json) for the checks and the benchmark",
    )
    ap.add_argument("--bench", nargs=argparse.REMAINDER, help="then run `bench layer` with these arguments")
    args = ap.parse_args(argv)
    names = [x for x in args.cases.split(",") if x] or None
    seed = fresh_seed() if args.seed is None else args.seed
    print(f"seed {seed}", file=sys.stderr, flush=True)
    configs = None
    if args.kernel_config:
        with open(args.kernel_config) as f:
            configs = json.load(f)
    if args.tiny:
        if os.environ.get("TRITON_INTERPRET") != "1":
            ap.error("--tiny needs TRITON_INTERPRET=1 in the environment before Python starts")
        rows = run_all("cpu", tiny=True, names=names, configs=configs, seed=seed)
        print(json.dumps(rows) if args.json else format_table(rows))
        return 0 if all(r["ok"] for r in rows) else 1
    os.makedirs(args.out, exist_ok=True)
    if args.tune:
        from .launch import run_sweep

        best = run_sweep(args.tune, args.workers, args.out)["best"]
        configs = dict(dense=best["dense"], sparse=best["sparse"])
        args.kernel_config = os.path.join(args.out, "kernel_config.json")
        with open(args.kernel_config, "w") as f:
            json.dump(configs, f, indent=1)
    rows = []
    if not args.skip_checks:
        t0 = time.time()
        rows = run_all("cuda", workers=args.workers, names=names, configs=configs, seed=seed, on_row=_print_row)
        if args.tune and not all(r["ok"] for r in rows):  # a tuned config failed: back to the defaults
            print(format_table(rows))
            print("tuned launch configs FAILED checks; rerunning with the default configs", flush=True)
            configs, args.kernel_config = None, ""
            rows = run_all("cuda", workers=args.workers, names=names, seed=seed)
        with open(os.path.join(args.out, "checks.json"), "w") as f:
            json.dump(rows, f, indent=1)
        for r in rows:
            if r.get("error"):
                print(f"ERROR {r['name']}: {r['error']}", file=sys.stderr)
        print(format_table(rows))
        print(f"checks: {sum(r['ok'] for r in rows)}/{len(rows)} passed in {time.time() - t0:.1f}s", flush=True)
    if args.bench is not None:
        from .layer import main as bench_main

        extra = ["--kernel-config", args.kernel_config] if args.kernel_config else []
        bench_main(list(args.bench) + extra + ["--out", args.out])
    if rows:
        print(format_table(rows))
        worst = max((r["ratio"] for r in rows if r["ratio"] == r["ratio"]), default=float("nan"))
        print(f"checks: {sum(r['ok'] for r in rows)}/{len(rows)} passed; worst err_kernel/err_ref = {worst:.2f}")
    if args.bench is not None:
        from .layer import summary

        with open(os.path.join(args.out, "results.json")) as f:
            print(summary(json.load(f)))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
