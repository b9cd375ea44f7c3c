"""The report of ``delta-attn bench e2e``: results.json, the Markdown table, the summary lines and plot.png."""

from __future__ import annotations

import json
import os
import sys

from .e2e_options import CHUNK_CACHES, METHODS
from .layer import fmt_length

# ---- reporting -----------------------------------------------------------------------------------


def variant(cell: dict) -> tuple[str, int, str]:
    """(method, chunk size, chunked cache) of a cell: one series of the tables and the plot."""
    return cell["method"], cell["chunk"], cell.get("cache", "")


def variant_order(key: tuple[str, int, str]):
    return METHODS.index(key[0]), key[1], ("", *CHUNK_CACHES).index(key[2])


def variant_name(key: tuple[str, int, str]) -> str:
    """``delta``, ``delta/c16K`` (chunked, preallocated cache), ``delta/c16K/dyn`` (chunked, DynamicCache)."""
    m, chunk, cache = key
    if not chunk:
        return m
    return f"{m}/c{fmt_length(chunk)}" + ("/dyn" if cache == "dynamic" else "")


def _f(x, fmt=".2f") -> str:
    return "—" if x is None else format(x, fmt)


def backend_timings_text(timings: dict) -> str:
    """``cudnn 0.101 s, flash 0.160 s, efficient refused``: one attention call per SDPA backend at a cell's length."""
    return ", ".join(f"{be} {t:.4g} s" if isinstance(t, float) else f"{be} refused" for be, t in timings.items())


def dense_backends(cells: list[dict]) -> dict[int, str]:
    """The SDPA backend each measured one-shot dense cell ran on, by length (older results did not record it)."""
    return {
        c["n"]: c["dense_backend"]
        for c in cells
        if c["method"] == "dense" and not c["chunk"] and "ttft_s" in c and "dense_backend" in c
    }


def dense_fit(cells: list[dict]) -> dict | None:
    """Dense TTFT as ``t = a·N + b·N²``, least squares over the measured one-shot dense cells (the projections and the
    MLP grow with N, attention with N²); None with fewer than 2 lengths. With ``--dense-backend auto`` each point ran
    on the fastest SDPA backend at its length, so the fit is the fastest dense's; ``note`` says which backends its
    points ran on (each one named when they differ), for the EXTRAPOLATED lines that quote it."""
    pts = sorted((c["n"], c["ttft_s"]) for c in cells if c["method"] == "dense" and not c["chunk"] and "ttft_s" in c)
    if len(pts) < 2:
        return None
    import numpy as np

    # least squares in x = N / the longest N, so that the N and N² columns are of one scale at 1M too
    scale = pts[-1][0]
    x = np.array([n for n, _ in pts], dtype=np.float64) / scale
    (a, b), *_ = np.linalg.lstsq(np.stack([x, x * x], axis=1), np.array([t for _, t in pts]), rcond=None)
    a, b = float(a) / scale, float(b) / scale**2
    backends = dense_backends(cells)
    note = f"N² fit of {len(pts)} measured dense lengths"
    names = {backends.get(n) for n, _ in pts}
    if len(names) == 1 and None not in names:
        note += f", all on {names.pop()}"
    elif names != {None}:
        runs = ", ".join(f"{fmt_length(n)} {backends.get(n, 'backend not recorded')}" for n, _ in pts)
        note += f", on different SDPA backends (the fastest at each length): {runs}"
    return dict(a=a, b=b, lengths=[n for n, _ in pts], backends=[backends.get(n) for n, _ in pts], note=note)


def dense_fit_at(fit: dict, n: int) -> float:
    """The fitted dense TTFT (s) at ``n`` tokens (:func:`dense_fit`)."""
    return fit["a"] * n + fit["b"] * n * n


def markdown(res: dict) -> str:
    meta = res["meta"]
    cut = " (cut with --layers)" if meta["layers_cut"] else ""
    warm = meta["warmup"]
    gpus = f" ({meta['gpus']} GPU)" if meta["gpus"] else ""
    lines = [
        f"Model: {meta['model_shape']}, {meta['layers']} layers{cut}, {meta['params_b']:.2f} B "
        f"{'real' if meta.get('real_weights') else 'random'} weights, "
        f"{meta['dtype']}, on {meta['device']}{gpus}; torch {meta['torch']}, {meta['date']}.",
        (
            f"Context parallel over {meta['ranks']} ranks (cp_prefill; time: the slowest rank, peak: the largest); "
            "dense is CP dense attention. "
            if meta.get("parallel") == "cp"
            else (
                f"Tensor parallel over {meta['ranks']} ranks (tp_plan='auto': each rank runs its heads; time: the "
                "slowest rank, peak: the largest). "
                if meta.get("parallel") == "tp"
                else ""
            )
            + f"Dense (SDPA): {meta['dense_backend']}; one forward only (a chunk over a "
            "cached prefix needs a masked SDPA, which flash/cuDNN do not run). "
        )
        + "Δ: streaming base, "
        f"sink {meta['delta']['sink']}, window {meta['delta']['window']}, γ = {meta['delta']['gamma']}.",
        (
            f"Warm-up excluded: every method and chunk size ran once at {fmt_length(warm['length'])} tokens "
            f"({warm['seconds']:.1f} s) before the timed cells"
            if warm["done"]
            else "No warm-up: the first cell of each method includes compilation"
        )
        + f"; {meta['reps']} timed run(s) per cell, the fastest reported. TTFT = one forward with "
        "logits_to_keep=1 (or chunked_prefill) + the first token's argmax.",
        f"Command: `{meta['command']}`",
        "",
        "| N | method | chunk | TTFT s | tokens/s | × vs dense | chunked ÷ one-shot | peak GB | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in res["cells"]:
        chunk = "one-shot" if not c["chunk"] else str(c["chunk"]) + (" (dynamic)" if c["cache"] == "dynamic" else "")
        if "ttft_s" not in c:
            note = c.get("error") or c.get("skipped", "")
            lines.append(f"| {c['label']} | {c['method']} | {chunk} | — | — | — | — | — | {note} |")
            continue
        notes = []
        if "dense_backend" in c:  # the per-backend times: one attention call at this length, the pick's evidence
            timed = c.get("dense_backend_timings")
            alone = f" (attention alone: {backend_timings_text(timed)})" if timed else ""
            notes.append(f"{c['dense_backend']}{alone}")
        if not c.get("finite", True):
            notes.append("non-finite logits")
        if "max_abs_diff_vs_one_shot" in c:
            notes.append(f"logits within {c['max_abs_diff_vs_one_shot']:.2g} of one-shot")
        if c.get("first_vs_steady") is not None:  # the first call at this length, after the warm-up at another
            notes.append(f"first call {c['times_s'][0]:.3f} s = {c['first_vs_steady']:.2f}× steady")
        lines.append(
            f"| {c['label']} | {c['method']} | {chunk} | {c['ttft_s']:.3f} | {c['tokens_per_s']:.0f} | "
            f"{_f(c.get('speedup_vs_dense'))} | {_f(c.get('chunked_over_one_shot'))} | {_f(c.get('peak_gb'), '.1f')} "
            f"| {'; '.join(notes)} |"
        )
    lines += profile_markdown(res.get("profiles") or {})
    return "\n".join(lines) + "\n"


def profile_markdown(profiles: dict) -> list[str]:
    """The ``--profile-length`` table: device ms of one one-shot prefill per method, by kernel category."""
    if not profiles:
        return []
    cats = next((list(p["categories_ms"]) for p in profiles.values() if "categories_ms" in p), [])
    n = next((p["n"] for p in profiles.values() if "n" in p), None)
    lines = [
        "",
        f"Profile (torch.profiler, one one-shot prefill of {fmt_length(n) if n else '?'} tokens per method; "
        "device (on CPU: operator) ms per kernel category, and the largest kernel):",
        "",
        "| method | device ms | " + " | ".join(cats) + " | largest kernel |",
        "|---|---:|" + "---:|" * len(cats) + "---|",
    ]
    for m, p in profiles.items():
        if "error" in p:
            lines.append(f"| {m} | {p['error']} |" + " |" * (len(cats) + 1))
            continue
        top = p["kernels"][0] if p["kernels"] else {"kernel": "—", "ms": 0.0}
        vals = " | ".join(f"{p['categories_ms'][c]:.1f}" for c in cats)
        lines.append(f"| {m} | {p['device_ms']:.1f} | {vals} | {top['kernel'][:60]} ({top['ms']:.1f} ms) |")
    return lines


def summary(res: dict) -> str:
    """A short fixed-width table: TTFT (s) per length and method/chunk, Δ's speed-up, then the chunked ratios."""
    cells = res["cells"]
    cols = sorted({variant(c) for c in cells}, key=variant_order)
    cols = [mc for mc in cols if any("ttft_s" in c for c in cells if variant(c) == mc)]
    out = [
        f"{'N':>5s} " + " ".join(f"{variant_name(mc):>13s}" for mc in cols) + f" {'delta x dense':>13s} {'peak GB':>8s}"
    ]
    for n in sorted({c["n"] for c in cells}):
        by = {variant(c): c for c in cells if c["n"] == n}
        row = [f"{_f(by.get(mc, {}).get('ttft_s'), '.3f'):>13s}" for mc in cols]
        sp = by.get(("delta", 0, ""), {}).get("speedup_vs_dense")
        peak = max((c.get("peak_gb", 0.0) for c in by.values()), default=0.0)
        out.append(f"{fmt_length(n):>5s} " + " ".join(row) + f" {_f(sp):>13s} {_f(peak or None, '.1f'):>8s}")
    backends = dense_backends(cells)
    if backends:
        out.append("dense SDPA backend: " + ", ".join(f"{fmt_length(n)} {be}" for n, be in sorted(backends.items())))
    for c in cells:
        if c["chunk"] and "chunked_over_one_shot" in c:
            out.append(
                f"{variant_name(variant(c))} at {c['label']}: {c['ttft_s']:.3f} s = "
                f"{c['chunked_over_one_shot']:.3f} x one-shot (runs: {', '.join(f'{t:.3f}' for t in c['times_s'])} s)"
            )
    return "\n".join(out)


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key in sorted({variant(c) for c in res["cells"]}, key=variant_order):
        m, ch, cache = key
        label = variant_name(key)
        pts = [(c["n"], c["ttft_s"]) for c in res["cells"] if variant(c) == key and "ttft_s" in c]
        style = dict(marker="o", color=f"C{METHODS.index(m)}", linestyle={"": "-", "dynamic": ":"}.get(cache, "--"))
        if pts and m == "dense" and dense_backends(res["cells"]):
            label += " (" + "/".join(sorted(set(dense_backends(res["cells"]).values()))) + " SDPA)"
        if pts:
            ax1.plot(*zip(*pts), label=label, **style)
        sp = [(c["n"], c["speedup_vs_dense"]) for c in res["cells"] if variant(c) == key and "speedup_vs_dense" in c]
        if sp and m != "dense":
            ax2.plot(*zip(*sp), label=label, **style)
    ns = sorted({c["n"] for c in res["cells"]})
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [fmt_length(n) for n in ns])
        ax.set_xlabel("prompt tokens N")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax1.set_yscale("log")
    ax1.set_ylabel("time to first token (s)")
    per_length = res["meta"].get("dense_backend_choice") == "auto"
    ax2.set_ylabel("speed-up over dense SDPA (" + ("fastest backend at each N, " if per_length else "") + "same run)")
    meta = res["meta"]
    fig.suptitle(
        f"end-to-end prefill, {meta['model_shape']} ({meta['layers']} layers), {meta['dtype']} — {meta['device']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(res: dict, out: str) -> str:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = markdown(res)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    try:
        plot(res, os.path.join(out, "plot.png"))
    except ImportError:  # matplotlib is in the [eval] extra; the numbers are already written
        print("matplotlib is not installed: no plot.png (pip install 'delta-attn[eval]')", file=sys.stderr)
    return md
