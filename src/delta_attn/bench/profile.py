"""Where one Δ call's time goes, kernel by kernel: ``python -m delta_attn.bench.profile``.

Runs one attention layer (Llama-3-8B shape by default: 32/8 heads, d 128, bf16) through
:func:`delta_attn.kernels.triton_prefill` for each method spec, under ``torch.profiler``, and prints the
device time of every kernel (Triton kernels by name, PyTorch ops by their kernel names) per call, largest
first, plus the per-call total. Comparing ``delta`` with ``delta_auto`` shows what λ = auto adds: the
anchor-row kernel (``_anchor_sparse_kernel``, Õ and D − Õ of the anchor rows), the two λ kernels
(``_lambda_terms_kernel``, ``_lambda_scale_kernel``: :mod:`delta_attn.kernels.delta_scale`), any PyTorch
kernel left between them, and any host synchronisation (visible as a gap between wall and device time).

    python -m delta_attn.bench.profile --length 128K --methods delta,delta_auto --out prof.json

On CPU (``--device cpu``, tiny shapes, Triton's interpreter) it checks the code path only: the numbers
are host times of the interpreter.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch

from .layer import fmt_length, method_config, parse_length

#: Kernel (CUDA) or operator (CPU) name fragments, lower case, per category of :func:`kernel_category`; the
#: first category that matches wins. Attention: the project's Triton kernels (the λ kernels included) and SDPA's
#: backends (cuDNN, flash, memory-efficient); matmul: cuBLAS / CUTLASS GEMMs (the projections and the MLP);
#: copy: memory moves.
CATEGORIES = (
    (
        "attention",
        ("_sparse_kernel", "_dense_rows_kernel", "_merge_kernel", "_anchor_sparse_kernel", "_lambda_terms_kernel",
         "_lambda_scale_kernel", "_segment_", "sdpa", "flash", "fmha", "attention", "cudnn"),
    ),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "aten::mm", "aten::addmm", "aten::bmm", "matmul")),
    ("copy", ("memcpy", "copy_kernel", "catarraybatchedcopy", "aten::copy_", "aten::cat", "index", "gather",
              "scatter", "memset")),
)  # fmt: skip


def kernel_category(name: str) -> str:
    """``attention``, ``matmul``, ``copy`` or ``other`` (norms, rotary, activations, PyTorch elementwise ops, …).

    On CPU the names are operators: SDPA is ``attention``, but the reference backend's Δ runs as generic
    matmul / index / elementwise operators and is counted under those."""
    low = name.lower()
    for category, fragments in CATEGORIES:
        if any(f in low for f in fragments):
            return category
    return "other"


def profile_calls(call, *, reps: int, cuda: bool) -> dict:
    """Per-call device time of each kernel (CUDA) or operator (CPU: self time of ``aten::``/Triton ops) over
    ``reps`` profiled calls of ``call()`` (after one untimed call), the wall time per call, and the time per
    :func:`kernel_category`."""
    from torch.profiler import ProfilerActivity, profile

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    call()  # compile + warm caches
    sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(reps):
            call()
        sync()
        wall = (time.perf_counter() - t0) / reps
    kernels: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for evt in prof.key_averages():
        dev_us = getattr(evt, "device_time_total", None)
        if dev_us is None:
            dev_us = getattr(evt, "cuda_time_total", 0.0)
        if cuda and evt.device_type == torch.autograd.DeviceType.CUDA and dev_us > 0:
            kernels[evt.key] += dev_us / reps / 1e3
            counts[evt.key] += evt.count // reps
        elif not cuda and evt.key.startswith(("aten::", "triton")) and evt.self_cpu_time_total > 0:
            kernels[evt.key] += evt.self_cpu_time_total / reps / 1e3
            counts[evt.key] += evt.count // reps
    rows = sorted(
        ({"kernel": key, "ms": ms, "launches": counts[key]} for key, ms in kernels.items()), key=lambda r: -r["ms"]
    )
    categories = {name: 0.0 for name, _ in CATEGORIES} | {"other": 0.0}
    for row in rows:
        categories[kernel_category(row["kernel"])] += row["ms"]
    return {
        "wall_ms": wall * 1e3,
        "device_ms": sum(r["ms"] for r in rows),
        "categories_ms": categories,
        "kernels": rows,
    }


def profile_method(q, k, v, config, *, reps: int, scale: float) -> dict:
    """:func:`profile_calls` of one :func:`~delta_attn.kernels.triton_prefill` call of the layer."""
    from ..kernels import triton_prefill

    n = q.shape[2]
    return profile_calls(lambda: triton_prefill(q, k, v, config, scale=scale, prompt_len=n), reps=reps, cuda=q.is_cuda)


def time_anchor_tiles(q, k, v, config, tiles: list[tuple[int, int]], *, reps: int, scale: float) -> list[dict]:
    """Device time of the anchor-row Õ kernel (λ = auto's extra kernel) per launch config ``(BM, num_warps)``,
    median of ``reps`` calls timed with CUDA events (after a compile call), and each config's largest difference
    from the first config's output (the tiling must not change the result beyond summation order)."""
    from ..kernels.anchor_sparse import CONFIG, anchor_sparse_rows
    from ..kernels.dense_rows import kernel_config
    from ..kernels.sparse import PATTERN_RANGES, SparseSpec

    spec = SparseSpec(PATTERN_RANGES, sink=config.sink, window=config.window)  # the streaming base's ranges
    gamma = config.gamma
    n = q.shape[2]
    n_anchor = -(-(n - config.tail_rows(n)) // gamma)  # the anchors below the exact tail, as a one-shot call has
    default_cfg = kernel_config(q.dtype, CONFIG)
    rows, first = [], None
    for bm, warps in tiles:
        cfg = default_cfg | {"BM": bm, "num_warps": warps}
        call = lambda: anchor_sparse_rows(  # noqa: E731
            q, k, v, spec, anchor_lo=0, n_anchor=n_anchor, gamma=gamma, scale=scale, config=cfg
        )
        out = call()
        first = out if first is None else first
        times = []
        for _ in range(reps):
            if q.is_cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                call()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                call()
                times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        diff = (out - first).abs().max().item()
        rows.append(
            {"BM": bm, "num_warps": warps, "ms": times[len(times) // 2], "default": cfg == default_cfg, "diff": diff}
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    from .. import DeltaConfig

    p = argparse.ArgumentParser(prog="python -m delta_attn.bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--length", default="128K", help="prompt length, K = 1024 (default 128K)")
    p.add_argument("--methods", default="delta,delta_auto", help="method specs (default delta,delta_auto)")
    p.add_argument("--heads", default="32,8", help="query,KV heads (default 32,8: Llama-3-8B)")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--reps", type=int, default=5, help="profiled calls per method (default 5)")
    p.add_argument("--top", type=int, default=12, help="kernels printed per method (default 12)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (tiny shapes, Triton's interpreter)")
    p.add_argument("--out", default=None, help="write the full table as JSON here")
    p.add_argument(
        "--anchor-tiles",
        default="",
        help="also time the anchor-row Õ kernel (λ = auto) per launch config, BM:num_warps,... e.g. 128:8,64:4,32:4",
    )
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here: use --device cpu (with TRITON_INTERPRET=1) for the code path")
    n = parse_length(args.length)
    hq, hkv = (int(x) for x in args.heads.split(","))
    d = args.head_dim
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    gen = torch.Generator(device=args.device).manual_seed(0)
    q = torch.randn(1, hq, n, d, device=args.device, dtype=dtype, generator=gen)
    k = torch.randn(1, hkv, n, d, device=args.device, dtype=dtype, generator=gen)
    v = torch.randn(1, hkv, n, d, device=args.device, dtype=dtype, generator=gen)
    base = DeltaConfig() if args.device == "cuda" else DeltaConfig(sink=4, window=16, gamma=8)
    results = {}
    for name in args.methods.split(","):
        results[name] = r = profile_method(q, k, v, method_config(name, base), reps=args.reps, scale=d**-0.5)
        print(f"== {name} @ {fmt_length(n)}: wall {r['wall_ms']:.2f} ms per call, device {r['device_ms']:.2f} ms")
        for row in r["kernels"][: args.top]:
            print(f"   {row['ms']:9.3f} ms  x{row['launches']:<3d} {row['kernel'][:110]}")
    if len(results) > 1:
        first, *rest = results
        for name in rest:
            extra = results[name]["wall_ms"] - results[first]["wall_ms"]
            print(
                f"{name} − {first}: {extra:+.2f} ms wall, "
                f"{results[name]['device_ms'] - results[first]['device_ms']:+.2f} ms device"
            )
    anchor_tiles = []
    if args.anchor_tiles:
        tiles = [tuple(int(x) for x in t.split(":")) for t in args.anchor_tiles.split(",") if t]
        anchor_tiles = time_anchor_tiles(q, k, v, base, tiles, reps=max(3, args.reps), scale=d**-0.5)
        print(f"anchor-row Õ kernel @ {fmt_length(n)} (median of {max(3, args.reps)} calls):")
        for row in anchor_tiles:
            mark = "  (default)" if row["default"] else ""
            timing = f"{row['ms']:8.3f} ms  max diff {row['diff']:.1e}"
            print(f"   BM {row['BM']:4d}  warps {row['num_warps']}  {timing}{mark}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "length": n,
                    "heads": [hq, hkv],
                    "head_dim": d,
                    "device": args.device,
                    "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                    "results": results,
                    "anchor_tiles": anchor_tiles,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
