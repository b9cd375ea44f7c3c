"""Per-layer prefill latency: ``delta-attn bench layer``.

One attention layer of Llama-3-8B by default (32 query / 8 KV heads, d = 128, bf16), batch 1, at
several lengths. Methods:

* ``cudnn`` / ``flash``: dense causal SDPA through the cuDNN / FlashAttention-2 backends (GQA via
  ``enable_gqa``; if a backend refuses it, K/V are expanded for that backend and the row says so);
* ``sparse``: the sparse base alone (sink + window), Triton kernels;
* ``delta``: Δ attention (γ = 64, repeat), Triton kernels — dense rows + sparse with fused Δ;
* ``recompute``: the same rows, no broadcast;
* any other method spec of :mod:`delta_attn.methods` over the streaming base, e.g. the Δ variants
  (docs/algorithm.md §13): ``delta_l0.5`` (``delta_scale=λ``), ``delta_auto`` (``delta_scale="auto"``),
  ``delta_autog`` (``"auto-global"``), ``delta_x25`` (``extra_anchors``), ``delta_auto_x25``.
  Their FLOPs come from the same cost model (extra anchors: the upper bound, see :mod:`delta_attn.cost`).

Timing: CUDA events around each call, after warm-up; the median of repeated calls. Dense SDPA at
the largest lengths (``--dense-once-above``) is timed from a single call (it takes seconds) and
marked so. FLOPs are counted exactly by :mod:`delta_attn.cost` (allowed query-key pairs × 4·d per
head). Each row reports ms, TFLOP/s, the speed-up over SDPA cuDNN from the same run, the fraction of the FLOP floor
(FLOPs at the bf16 matrix rate measured in the same run, over the measured time) and the peak
memory allocated beyond the inputs.

Kernel-level rows: the dense-rows kernel alone (Δ's anchor + tail rows; TFLOP/s against cuDNN's),
and Δ's extra time over sparse-only against dense/γ.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

LENGTHS = "32K,64K,128K,256K,512K,1M"
DENSE_METHODS = ("cudnn", "flash", "rows")  # timed without a DeltaConfig


def method_config(name: str, base):
    """The :class:`~delta_attn.config.DeltaConfig` a Triton method runs (None for cudnn/flash/rows): ``name`` is a
    method spec (:mod:`delta_attn.methods`, e.g. ``delta``, ``delta_l0.5``, ``delta_auto_x25``) over ``base``.

    Raises ValueError for an unknown name, or a spec that names dense attention (timed as cudnn/flash).
    """
    from ..methods import config_fields, parse_method

    if name in DENSE_METHODS:
        return None
    config = parse_method(name, config_fields(base)).config
    if config is None:
        raise ValueError(f"method {name!r}: dense attention is timed as {', '.join(DENSE_METHODS[:2])}")
    return config


def parse_length(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1024, "M": 1024 * 1024}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "KM" else s) * mult)


def fmt_length(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    if n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


# ---- timing --------------------------------------------------------------------------------------


def time_cuda(fn, *, warmup: int = 1, reps: int = 10, budget_s: float = 3.0, once: bool = False) -> dict:
    """Median of ``reps`` CUDA-event timings (ms), after ``warmup`` calls; fewer reps if slow.

    ``once``: a single timed call, no warm-up (for multi-second dense runs)."""
    import torch

    def timed():
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        return s.elapsed_time(e)

    if once:
        t = timed()
        return dict(ms=t, reps=1, spread=0.0, once=True)
    for _ in range(max(1, warmup)):
        first = timed()
    n = int(max(3, min(reps, budget_s * 1000 / max(first, 1e-3))))
    ts = [timed() for _ in range(n)]
    med = statistics.median(ts)
    return dict(ms=med, reps=n, spread=(max(ts) - min(ts)) / med, once=False)


def matmul_peak_tflops() -> float:
    """bf16 8192³ matrix products on random data (the FLOP floor's rate)."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t = time_cuda(lambda: a @ b, warmup=3, reps=10)
    return 2 * 8192**3 / (t["ms"] * 1e-3) / 1e12


def peak_memory(fn) -> int:
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


# ---- methods -------------------------------------------------------------------------------------


def sdpa_fn(backend: str, q, k, v):
    """A closure running dense causal SDPA on one backend; expands K/V only if GQA is refused."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    be = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]

    def gqa():
        with sdpa_kernel([be]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    try:  # probe on a short slice: a refusal costs nothing, a success is not a 19-second run at 1M
        with sdpa_kernel([be]):
            F.scaled_dot_product_attention(
                *(t[:, :, :256].contiguous() for t in (q, k, v)), is_causal=True, enable_gqa=True
            )
        torch.cuda.synchronize()
        return gqa, False
    except RuntimeError:
        g = q.shape[1] // k.shape[1]
        ke, ve = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)

        def expanded():
            with sdpa_kernel([be]):
                return F.scaled_dot_product_attention(q, ke, ve, is_causal=True)

        return expanded, True


def run_layer(args) -> dict:
    import torch

    from ..config import DeltaConfig
    from ..cost import pair_flops, prefill_cost
    from ..kernels import triton_prefill
    from ..kernels.dense_rows import RowSet, dense_rows

    dev = torch.device("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    kcfg = None
    if getattr(args, "kernel_config", ""):
        with open(args.kernel_config) as f:
            kcfg = json.load(f)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    lengths = [parse_length(x) for x in args.lengths.split(",")]
    peak = matmul_peak_tflops()
    print(f"bf16 matmul rate: {peak:.0f} TFLOP/s", flush=True)
    b, hq, hkv, d = args.batch, args.heads, args.kv_heads, args.head_dim
    scale = 1 / math.sqrt(d)
    base = DeltaConfig(sink=args.sink, window=args.window, gamma=args.gamma, sparse="streaming")
    results = []
    for n in lengths:
        torch.cuda.empty_cache()
        gen = torch.Generator(device=dev).manual_seed(n)
        q = torch.randn(b, hq, n, d, device=dev, dtype=dtype, generator=gen)
        k = torch.randn(b, hkv, n, d, device=dev, dtype=dtype, generator=gen)
        v = torch.randn(b, hkv, n, d, device=dev, dtype=dtype, generator=gen)
        tail_start = n - base.tail_rows(n)
        rows = RowSet(0, tail_start, args.gamma, tail_start, n)
        flops = {m: prefill_cost(base.replace(mode=m), n).flops(d, hq, b) for m in ("dense", "sparse", "recompute")}
        delta_cost = prefill_cost(base, n)  # the sparse base on the body rows + the dense rows
        flops["delta"] = delta_cost.flops(d, hq, b)
        flops["rows"] = pair_flops(delta_cost.dense_rows, d, hq, b)
        row = dict(n=n, label=fmt_length(n), flops=flops, methods={})
        once = n > parse_length(args.dense_once_above)

        def record(name, fn, fl, *, once=False, note=""):
            try:
                if once:  # one call only: take its peak memory from the timed call itself
                    torch.cuda.synchronize()
                    base_mem = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                    t = time_cuda(fn, once=True)
                    mem = torch.cuda.max_memory_allocated() - base_mem
                else:
                    mem = peak_memory(fn)
                    t = time_cuda(fn, reps=args.reps, budget_s=args.budget)
                out = fn() if name not in ("cudnn", "flash") and args.nan_check else None
                finite = None if out is None else bool(torch.isfinite(out).all().item())
                del out
                row["methods"][name] = dict(
                    ms=t["ms"],
                    reps=t["reps"],
                    spread=t["spread"],
                    once=t["once"],
                    tflops=fl / (t["ms"] * 1e-3) / 1e12,
                    peak_mem_gb=mem / 2**30,
                    floor_frac=fl / (peak * 1e12) / (t["ms"] * 1e-3),
                    finite=finite,
                    note=note,
                )
                print(
                    f"  {fmt_length(n):>5s} {name:10s} {t['ms']:10.2f} ms  {fl / (t['ms'] * 1e-3) / 1e12:6.1f} "
                    f"TFLOP/s  reps={t['reps']} {note}",
                    flush=True,
                )
            except torch.OutOfMemoryError as exc:
                row["methods"][name] = dict(error=f"OOM: {exc}".splitlines()[0])
                print(f"  {fmt_length(n):>5s} {name:10s} OOM", flush=True)
            torch.cuda.empty_cache()

        for m in methods:
            if m in ("cudnn", "flash"):
                if n > parse_length(args.dense_max) or (m == "flash" and n > parse_length(args.flash_max)):
                    continue
                fn, expanded = sdpa_fn(m, q, k, v)
                record(m, fn, flops["dense"], once=once, note="K/V expanded" if expanded else "")
                del fn
            elif m not in DENSE_METHODS:  # sparse, delta, recompute and the Δ variants
                cfg = method_config(m, base)
                fl = flops[m] if m in flops else prefill_cost(cfg, n).flops(d, hq, b)
                record(
                    m,
                    lambda cfg=cfg, q=q, k=k, v=v: triton_prefill(
                        q, k, v, cfg, scale=scale, prompt_len=n, kernel_configs=kcfg
                    ),
                    fl,
                    note="FLOPs: extra rows at their upper bound" if cfg.extra_anchors > 0 else "",
                )
            elif m == "rows":  # kernel level: the dense-rows kernel alone on Δ's rows
                record(
                    m,
                    lambda q=q, k=k, v=v: dense_rows(q, k, v, rows, scale=scale, config=(kcfg or {}).get("dense")),
                    flops["rows"],
                )
        ms = row["methods"]
        if "cudnn" in ms and "ms" in ms["cudnn"]:
            for r in ms.values():
                if "ms" in r:
                    r["speedup_vs_cudnn"] = ms["cudnn"]["ms"] / r["ms"]
            if "rows" in ms and "ms" in ms["rows"]:
                row["rows_vs_cudnn_tflops"] = ms["rows"]["tflops"] / ms["cudnn"]["tflops"]
            if "delta" in ms and "sparse" in ms and "ms" in ms["delta"] and "ms" in ms["sparse"]:
                extra = ms["delta"]["ms"] - ms["sparse"]["ms"]
                row["delta_extra_ms"] = extra
                row["delta_extra_vs_dense_over_gamma"] = extra / (ms["cudnn"]["ms"] / args.gamma)
        results.append(row)
        del q, k, v
        torch.cuda.empty_cache()
    props = torch.cuda.get_device_properties(dev)
    import triton

    meta = dict(
        device=props.name,
        sms=props.multi_processor_count,
        torch=torch.__version__,
        triton=triton.__version__,
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        host=platform.node(),
        kernel_configs=kcfg,
        command="delta-attn bench layer " + " ".join(args.argv),
        matmul_tflops=peak,
        shape=dict(batch=b, heads=hq, kv_heads=hkv, head_dim=d, dtype=args.dtype),
        delta=dict(gamma=args.gamma, window=args.window, sink=args.sink),
    )
    return dict(meta=meta, results=results)


# ---- reporting -----------------------------------------------------------------------------------


def markdown(res: dict) -> str:
    meta = res["meta"]
    lines = [
        f"Device: {meta['device']} ({meta['sms']} SMs), torch {meta['torch']}, triton {meta['triton']}, "
        f"{meta['date']}; bf16 matmul rate {meta['matmul_tflops']:.0f} TFLOP/s (the FLOP floor's rate).",
        f"Command: `{meta['command']}`",
        "",
        "| N | method | ms | TFLOP/s | × vs cuDNN | floor frac | peak mem GB | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in res["results"]:
        for name, r in row["methods"].items():
            if "ms" not in r:
                lines.append(f"| {row['label']} | {name} | — | — | — | — | — | {r.get('error', '')} |")
                continue
            note = ", ".join(x for x in [r.get("note", ""), "timed once" if r.get("once") else ""] if x)
            sp = r.get("speedup_vs_cudnn")
            lines.append(
                f"| {row['label']} | {name} | {r['ms']:.2f} | {r['tflops']:.0f} | "
                f"{'' if sp is None else f'{sp:.1f}'} | {r['floor_frac']:.2f} | {r['peak_mem_gb']:.2f} | {note} |"
            )
    lines += [
        "",
        "| N | dense-rows TFLOP/s ÷ cuDNN TFLOP/s | Δ − sparse (ms) | (Δ − sparse) ÷ (cuDNN/γ) |",
        "|---|---:|---:|---:|",
    ]
    for row in res["results"]:
        a = row.get("rows_vs_cudnn_tflops")
        e = row.get("delta_extra_ms")
        f = row.get("delta_extra_vs_dense_over_gamma")
        lines.append(
            f"| {row['label']} | {'' if a is None else f'{a:.2f}'} | {'' if e is None else f'{e:.2f}'} | "
            f"{'' if f is None else f'{f:.2f}'} |"
        )
    return "\n".join(lines) + "\n"


def summary(res: dict) -> str:
    """A short fixed-width table: the headline ratios per length."""
    out = [
        f"{'N':>5s} {'cuDNN ms':>10s} {'sparse ms':>9s} {'delta ms':>9s} {'x cuDNN':>8s} {'rows/cuDNN TF':>13s} "
        f"{'extra/(dense/g)':>15s}"
    ]
    for row in res["results"]:
        ms = row["methods"]
        get = lambda m, k="ms": ms.get(m, {}).get(k)  # noqa: E731
        f = lambda x, p=".2f": "-" if x is None else format(x, p)  # noqa: E731
        out.append(
            f"{row['label']:>5s} {f(get('cudnn')):>10s} {f(get('sparse')):>9s} {f(get('delta')):>9s} "
            f"{f(get('delta', 'speedup_vs_cudnn'), '.1f'):>8s} {f(row.get('rows_vs_cudnn_tflops')):>13s} "
            f"{f(row.get('delta_extra_vs_dense_over_gamma')):>15s}"
        )
    return "\n".join(out)


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = sorted({m for r in res["results"] for m in r["methods"]})
    colors = {name: f"C{i}" for i, name in enumerate(names)}  # one colour per method in both panels
    for name in names:
        pts = [(r["n"], r["methods"][name]["ms"]) for r in res["results"] if "ms" in r["methods"].get(name, {})]
        if pts:
            ax1.plot(*zip(*pts), marker="o", label=name, color=colors[name])
        sp = [
            (r["n"], r["methods"][name]["speedup_vs_cudnn"])
            for r in res["results"]
            if "speedup_vs_cudnn" in r["methods"].get(name, {})
        ]
        if sp and name != "cudnn":
            ax2.plot(*zip(*sp), marker="o", label=name, color=colors[name])
    ticks = [r["n"] for r in res["results"]]
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ticks, [r["label"] for r in res["results"]])
        ax.set_xlabel("tokens N")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_ylabel("ms per layer")
    ax2.set_ylabel("speed-up over SDPA cuDNN (dense)")
    meta = res["meta"]
    fig.suptitle(
        f"one layer, {meta['shape']['heads']}q/{meta['shape']['kv_heads']}kv heads, d={meta['shape']['head_dim']}, "
        f"{meta['shape']['dtype']} — {meta['device']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="delta-attn bench layer", description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default=LENGTHS, help=f"comma-separated token counts (K = 1024), default {LENGTHS}")
    p.add_argument(
        "--methods",
        default="cudnn,flash,sparse,delta,recompute,rows",
        help="any of cudnn, flash, sparse, delta, recompute, rows (dense-rows kernel alone), and Δ variants "
        "delta_<parts> with parts l<λ>, auto, global, x<percent> joined by '_' (e.g. delta_l0.5, delta_auto, "
        "delta_x25)",
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--gamma", type=int, default=64)
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--sink", type=int, default=128)
    p.add_argument("--reps", type=int, default=10, help="timed repetitions (fewer when one call is slow)")
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per method and length")
    p.add_argument("--dense-once-above", default="256K", help="time dense SDPA from one call above this length")
    p.add_argument("--dense-max", default="1M", help="skip dense SDPA above this length")
    p.add_argument("--flash-max", default="256K", help="skip the FlashAttention-2 backend above this length")
    p.add_argument("--no-nan-check", dest="nan_check", action="store_false", help="skip the finite-output check")
    p.add_argument(
        "--kernel-config",
        default="",
        help='JSON file {"dense": {...}, "sparse": {...}}: launch configs '
        "for the Triton kernels (default: the ones in the code)",
    )
    p.add_argument("--out", default="runs/bench-layer", help="directory for results.json, results.md, plot.png")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return run(args)


def run(args) -> int:
    import torch

    from ..config import DeltaConfig

    for m in (x.strip() for x in args.methods.split(",")):
        if m:
            try:
                method_config(m, DeltaConfig())
            except ValueError as exc:  # before any GPU work
                print(f"bench layer: {exc}", file=sys.stderr)
                return 2
    if not torch.cuda.is_available():
        print("bench layer needs a CUDA GPU", file=sys.stderr)
        return 2
    if not hasattr(args, "argv"):
        args.argv = sys.argv[3:]
    res = run_layer(args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = markdown(res)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    plot(res, os.path.join(args.out, "plot.png"))
    print(md, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
