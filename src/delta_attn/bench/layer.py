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
* modifiers after ``+`` (any Triton method, e.g. ``delta+strided``, ``rows+ips8``), to compare layouts and
  launch options in one run: ``strided`` (K/V are views of a longer buffer, as ``PreallocatedCache`` hands
  them), ``hf`` (q/k/v in a model's layout: ``(B, N, H, D)`` transposed), ``devtma`` (strided K/V through
  descriptors made in every program, the earlier path), ``notma`` (pointer loads), ``ips<k>`` /
  ``chunk<keys>`` (dense rows split into k work items per SM / key chunks of at most that many keys),
  ``bm<k>``/``bn<k>`` (dense-rows tile); ``fa4`` (``backend="fa4"``, the model's layout), with ``epi`` / ``noepi``
  (its Δ add in FA4's epilogue, or after the kernel; neither: the backend's default).

First call at a new length: every Triton method first runs once at ``--warmup-length`` tokens (its
compilation), then each length's first call is timed on its own (wall clock, synchronised) and
reported as ``first ms`` and ``first ÷ steady``: what a server pays for a prompt length it has not
seen (cuDNN's first call includes its plan for the new shape). The Triton kernels a cell compiled, if any, are
named in its note (:mod:`.triton_compiles`): after the warm-up there should be none.

Timing: CUDA events around each call, after warm-up; the median of repeated calls (synchronised around each
call, so a call's host time before its first kernel counts). Beside it, ``back to back``: the same number of
calls enqueued one after the other between one pair of events (:func:`time_back_to_back`), as a model's
layers run, where that host time overlaps the GPU's work; both ratios to cuDNN are reported. Dense SDPA at
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

from . import triton_compiles

LENGTHS = "32K,64K,128K,256K,512K,1M"
DENSE_METHODS = ("cudnn", "flash", "rows")  # timed without a DeltaConfig


MODIFIERS = ("strided", "hf", "fa4", "epi", "noepi", "devtma", "notma", "ips", "chunk", "bm", "bn")
LAYOUT_MODIFIERS = ("strided", "hf", "fa4", "epi", "noepi")  # change the inputs or the backend, not launch configs


def split_method(name: str) -> tuple[str, list[str]]:
    """``"delta+strided+ips8"`` → ``("delta", ["strided", "ips8"])``; raises ValueError for an unknown modifier."""
    base, *mods = name.split("+")
    for m in mods:
        if not any(
            m == x or (x in ("ips", "chunk", "bm", "bn") and m.startswith(x) and m[len(x) :].isdigit())
            for x in MODIFIERS
        ):
            raise ValueError(
                f"unknown modifier {m!r} in {name!r}: one of strided, hf, fa4, epi, noepi, devtma, notma, ips<k>, "
                "chunk<keys>, bm<k>, bn<k>"
            )
    if ("epi" in mods or "noepi" in mods) and "fa4" not in mods:
        raise ValueError(f"{name!r}: epi/noepi choose where backend='fa4' adds Δ; add +fa4")
    if mods and base in ("cudnn", "flash"):
        raise ValueError(f"{name!r}: modifiers are for the Triton methods")
    return base, mods


def modified_configs(mods: list[str], dtype, kcfg: dict | None) -> dict | None:
    """The kernel launch configs ``{"dense": ..., "sparse": ...}`` a method's modifiers ask for."""
    from ..kernels import sparse as sparse_mod
    from ..kernels.dense_rows import CONFIG as DENSE_CONFIG
    from ..kernels.dense_rows import kernel_config

    if not any(m not in LAYOUT_MODIFIERS for m in mods):
        return kcfg
    kcfg = dict(kcfg or {})
    dense = dict(kcfg.get("dense") or kernel_config(dtype, DENSE_CONFIG))
    sparse = dict(kcfg.get("sparse") or kernel_config(dtype, sparse_mod.CONFIG))
    for m in mods:
        if m in ("devtma", "notma"):
            dense["USE_TMA"] = sparse["USE_TMA"] = "device" if m == "devtma" else False
        elif m.startswith("ips"):
            dense["ITEMS_PER_SM"] = int(m[3:])
        elif m.startswith("chunk"):
            dense["MAX_CHUNK"] = int(m[5:])
        elif m.startswith("bm"):
            dense["BM"] = int(m[2:])
        elif m.startswith("bn"):
            dense["BN"] = int(m[2:])
            if dense["BN"] >= 128:  # K and V tiles of 128 keys: 2 stages keep shared memory under the limit
                dense["num_stages"] = min(dense.get("num_stages", 2), 2)
    return dict(kcfg, dense=dense, sparse=sparse)


def method_config(name: str, base):
    """The :class:`~delta_attn.config.DeltaConfig` a Triton method runs (None for cudnn/flash/rows): ``name`` is a
    method spec (:mod:`delta_attn.methods`, e.g. ``delta``, ``delta_l0.5``, ``delta_auto_x25``) over ``base``.

    ``+`` modifiers (:func:`split_method`) change layouts and launch options, not the config.
    Raises ValueError for an unknown name, or a spec that names dense attention (timed as cudnn/flash).
    """
    from ..methods import config_fields, parse_method

    name, _ = split_method(name)
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


def time_back_to_back(fn, *, calls: int) -> float:
    """ms per call of ``calls`` calls enqueued back to back between one pair of CUDA events (after one untimed
    call): the host code of each call runs while the GPU works on the previous one, as it does between a model's
    layers, so a call's host latency before its first kernel is not counted. :func:`time_cuda` synchronises
    around every call and counts it. Same inputs every call; at the lengths reported K and V far exceed L2."""
    import torch

    fn()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    s.record()
    for _ in range(calls):
        fn()
    e.record()
    e.synchronize()
    return s.elapsed_time(e) / calls


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

    def inputs(n: int, mods: list[str], seed: int, q=None):
        """q, k, v of n tokens in the layout the modifiers ask for (``q``: reuse it where the layout allows)."""
        gen = torch.Generator(device=dev).manual_seed(seed)
        if "hf" in mods or "fa4" in mods:  # a model's projections: (B, N, H, D) memory, seen as (B, H, N, D)
            q = torch.randn(b, n, hq, d, device=dev, dtype=dtype, generator=gen).transpose(1, 2)
            k = torch.randn(b, n, hkv, d, device=dev, dtype=dtype, generator=gen).transpose(1, 2)
            v = torch.randn(b, n, hkv, d, device=dev, dtype=dtype, generator=gen).transpose(1, 2)
            return q, k, v
        q = torch.randn(b, hq, n, d, device=dev, dtype=dtype, generator=gen) if q is None else q
        if "strided" in mods or "devtma" in mods:  # views of a longer cache buffer (room for decoding)
            room = n + 4096
            k = torch.randn(b, hkv, room, d, device=dev, dtype=dtype, generator=gen)[:, :, :n]
            v = torch.randn(b, hkv, room, d, device=dev, dtype=dtype, generator=gen)[:, :, :n]
            return q, k, v
        k = torch.randn(b, hkv, n, d, device=dev, dtype=dtype, generator=gen)
        v = torch.randn(b, hkv, n, d, device=dev, dtype=dtype, generator=gen)
        return q, k, v

    def triton_call(m: str, n: int, q, k, v):
        name, mods = split_method(m)
        cfgs = modified_configs(mods, dtype, kcfg)
        if name == "rows" and "fa4" in mods:  # the dense rows as backend="fa4" runs them (kernels/fa4_prefill.py)
            from ..kernels import fa4
            from ..kernels.prefill import ensure_allocator

            ensure_allocator()
            qf, kf, vf = (t.transpose(1, 2) for t in (q, k, v))
            tail_start = n - base.tail_rows(n)
            tail = RowSet(tail_start, tail_start, 1, tail_start, n)

            def fa4_rows():  # the anchors on FA4, the tail on the dense-rows kernel
                fa4.anchor_rows(qf[:, 0 : tail_start : args.gamma], kf, vf, start=0, step=args.gamma, scale=scale)
                return dense_rows(q, k, v, tail, scale=scale)

            return fa4_rows
        if name == "rows":
            from ..kernels.prefill import ensure_allocator

            ensure_allocator()  # descriptors made in-kernel (+devtma) need Triton's scratch allocator
            tail_start = n - base.tail_rows(n)
            rs = RowSet(0, tail_start, args.gamma, tail_start, n)
            return lambda: dense_rows(q, k, v, rs, scale=scale, config=(cfgs or {}).get("dense"))
        cfg = method_config(m, base)
        if "fa4" in mods:  # backend="fa4": FlashAttention 4's kernels for the two attention passes
            from ..kernels.fa4_prefill import Passes, fa4_prefill

            # +epi: the Δ add in FA4's epilogue; +noepi: after the kernel; neither: the backend's default
            fused = True if "epi" in mods else False if "noepi" in mods else Passes.fused_add
            passes = Passes(fused_add=fused)
            return lambda: fa4_prefill(q, k, v, cfg, scale=scale, prompt_len=n, passes=passes)
        return lambda: triton_prefill(q, k, v, cfg, scale=scale, prompt_len=n, kernel_configs=cfgs)

    counting = triton_compiles.start_counting()  # every Triton compilation from here on, per kernel
    warm = parse_length(args.warmup_length) if args.warmup_length not in ("", "0") else 0
    warmup_s = {}
    if warm:  # compile every Triton method (and layout) at a length that is not timed
        for m in methods:
            if split_method(m)[0] in ("cudnn", "flash"):
                continue
            q, k, v = inputs(warm, split_method(m)[1], seed=1)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            try:
                triton_call(m, warm, q, k, v)()
                torch.cuda.synchronize()
                warmup_s[m] = time.perf_counter() - t0
            except Exception as exc:  # reported again, per length, by record()
                print(f"warm-up of {m} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            del q, k, v
        print(f"warm-up at {fmt_length(warm)}: " + ", ".join(f"{m} {t:.2f} s" for m, t in warmup_s.items()), flush=True)
    for n in lengths:
        torch.cuda.empty_cache()
        q, k, v = inputs(n, [], seed=n)
        flops = {m: prefill_cost(base.replace(mode=m), n).flops(d, hq, b) for m in ("dense", "sparse", "recompute")}
        delta_cost = prefill_cost(base, n)  # the sparse base on the body rows + the dense rows
        flops["delta"] = delta_cost.flops(d, hq, b)
        flops["rows"] = pair_flops(delta_cost.dense_rows, d, hq, b)
        row = dict(n=n, label=fmt_length(n), flops=flops, methods={})
        once = n > parse_length(args.dense_once_above)

        def record(name, fn, fl, *, once=False, note=""):
            first_ms = None
            before = triton_compiles.snapshot()
            try:
                if once:  # one call only: take its peak memory from the timed call itself
                    torch.cuda.synchronize()
                    base_mem = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                    t = time_cuda(fn, once=True)
                    mem = torch.cuda.max_memory_allocated() - base_mem
                else:
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    mem = peak_memory(fn)  # the first call at this length (synchronised inside)
                    first_ms = (time.perf_counter() - t0) * 1e3
                    t = time_cuda(fn, reps=args.reps, budget_s=args.budget)
                    t["ms_back_to_back"] = time_back_to_back(fn, calls=t["reps"])
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
                    first_ms=first_ms,
                    first_vs_steady=None if first_ms is None else first_ms / t["ms"],
                    ms_back_to_back=t.get("ms_back_to_back"),
                    # Triton kernels compiled at this length (by the first call: the warm-up compiled the rest);
                    # None where Triton's compile hook is absent
                    triton_compiled=triton_compiles.since(before) if counting else None,
                )
                first = "" if first_ms is None else f"  first {first_ms:.2f} ms ({first_ms / t['ms']:.2f}x)"
                compiled = triton_compiles.describe(row["methods"][name]["triton_compiled"] or {})
                first += f"  {compiled}" if compiled else ""
                print(
                    f"  {fmt_length(n):>5s} {name:10s} {t['ms']:10.2f} ms  {fl / (t['ms'] * 1e-3) / 1e12:6.1f} "
                    f"TFLOP/s  reps={t['reps']}{first} {note}",
                    flush=True,
                )
            except torch.OutOfMemoryError as exc:
                row["methods"][name] = dict(error=f"OOM: {exc}".splitlines()[0])
                print(f"  {fmt_length(n):>5s} {name:10s} OOM", flush=True)
            except Exception as exc:  # a launch option that does not compile here: recorded, the others still run
                msg = f"{type(exc).__name__}: " + (str(exc).splitlines() or [""])[0][:200]
                row["methods"][name] = dict(error=msg)
                print(f"  {fmt_length(n):>5s} {name:10s} FAILED {msg}", flush=True)
            torch.cuda.empty_cache()

        for m in methods:
            if m in ("cudnn", "flash"):
                if n > parse_length(args.dense_max) or (m == "flash" and n > parse_length(args.flash_max)):
                    continue
                fn, expanded = sdpa_fn(m, q, k, v)
                record(m, fn, flops["dense"], once=once, note="K/V expanded" if expanded else "")
                del fn
            else:  # Triton: sparse, delta, recompute, the Δ variants, rows (dense-rows kernel alone), + modifiers
                name, mods = split_method(m)
                qm, km, vm = (q, k, v) if not mods else inputs(n, mods, seed=n, q=q)
                if name == "rows":
                    fl, note = flops["rows"], ""
                else:
                    cfg = method_config(m, base)
                    fl = flops[name] if name in flops else prefill_cost(cfg, n).flops(d, hq, b)
                    note = "FLOPs: extra rows at their upper bound" if cfg.extra_anchors > 0 else ""
                record(m, triton_call(m, n, qm, km, vm), fl, note=note)
                del qm, km, vm
        ms = row["methods"]
        if "cudnn" in ms and "ms" in ms["cudnn"]:
            b2b_cudnn = ms["cudnn"].get("ms_back_to_back")
            for r in ms.values():
                if "ms" in r:
                    r["speedup_vs_cudnn"] = ms["cudnn"]["ms"] / r["ms"]
                    if b2b_cudnn and r.get("ms_back_to_back"):
                        r["speedup_vs_cudnn_back_to_back"] = b2b_cudnn / r["ms_back_to_back"]
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
        warmup=dict(length=warm, seconds=warmup_s),
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
        "| N | method | ms | TFLOP/s | × vs cuDNN | back to back: ms, × vs cuDNN | floor frac | peak mem GB | "
        "first call ÷ steady | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in res["results"]:
        for name, r in row["methods"].items():
            if "ms" not in r:
                lines.append(f"| {row['label']} | {name} | — | — | — | — | — | — | — | {r.get('error', '')} |")
                continue
            compiled = triton_compiles.describe(r.get("triton_compiled") or {})
            note = ", ".join(x for x in [r.get("note", ""), "timed once" if r.get("once") else "", compiled] if x)
            sp = r.get("speedup_vs_cudnn")
            fv = r.get("first_vs_steady")
            b2b, b2b_sp = r.get("ms_back_to_back"), r.get("speedup_vs_cudnn_back_to_back")
            b2b_cell = "" if b2b is None else f"{b2b:.2f}" + ("" if b2b_sp is None else f", {b2b_sp:.1f}")
            lines.append(
                f"| {row['label']} | {name} | {r['ms']:.2f} | {r['tflops']:.0f} | "
                f"{'' if sp is None else f'{sp:.1f}'} | {b2b_cell} | {r['floor_frac']:.2f} | {r['peak_mem_gb']:.2f} | "
                f"{'' if fv is None else f'{fv:.2f}'} | {note} |"
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
        f"{'N':>5s} {'cuDNN ms':>10s} {'sparse ms':>9s} {'delta ms':>9s} {'x cuDNN':>8s} {'x b2b':>6s} "
        f"{'rows/cuDNN TF':>13s} "
        f"{'extra/(dense/g)':>15s} {'floor':>6s} {'delta 1st/steady':>16s}"
    ]
    for row in res["results"]:
        ms = row["methods"]
        get = lambda m, k="ms": ms.get(m, {}).get(k)  # noqa: E731
        f = lambda x, p=".2f": "-" if x is None else format(x, p)  # noqa: E731
        out.append(
            f"{row['label']:>5s} {f(get('cudnn')):>10s} {f(get('sparse')):>9s} {f(get('delta')):>9s} "
            f"{f(get('delta', 'speedup_vs_cudnn'), '.1f'):>8s} "
            f"{f(get('delta', 'speedup_vs_cudnn_back_to_back'), '.1f'):>6s} "
            f"{f(row.get('rows_vs_cudnn_tflops')):>13s} "
            f"{f(row.get('delta_extra_vs_dense_over_gamma')):>15s} {f(get('delta', 'floor_frac')):>6s} "
            f"{f(get('delta', 'first_vs_steady')):>16s}"
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
        "--warmup-length",
        default="3000",
        help="tokens of one untimed call of every Triton method before the lengths (compilation; 0: none); "
        "each length's first call is then reported against its steady time (default 3000)",
    )
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
