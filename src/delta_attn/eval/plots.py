"""PNG plots of the results (matplotlib, imported only when a plot is drawn).

Each function takes the data model of :mod:`delta_attn.eval.tables` (or the analysis dict), writes one
PNG to ``path`` and returns it, or returns None when there is nothing to plot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from .tables import PREFERRED, PplData, RulerData, len_name, ppl_by_method


def _save(fig, path: Path) -> Path:
    """Lay out, write (120 dpi) and close ``fig``; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ruler(d: RulerData, path: Path, methods: Sequence[str] | None = None, model: str | None = None) -> Path | None:
    """Task average vs length per method, and per task at :meth:`RulerData.headline_length`. Only methods with
    a task average somewhere are drawn (a cell run on a few tasks, such as an exploratory setting, is in the
    report's per-task tables), each in one colour in both panels."""
    if not d.lengths:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    # task averages where a method has one (None where some task is missing)
    avg = {(n, m): a for m in (methods or d.methods) for n in d.lengths if (a := d.avg(n, m)) is not None}
    methods = [m for m in (methods or d.methods) if any((n, m) in avg for n in d.lengths)]
    if not methods:
        plt.close(fig)
        return None
    color = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for m in methods:
        xs = [n for n in d.lengths if (n, m) in avg]
        axes[0].plot(xs, [avg[n, m] for n in xs], marker="o", label=m, color=color[m])
    drawn = sorted({n for n, _ in avg})
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(drawn, [len_name(n) for n in drawn])
    axes[0].minorticks_off()
    axes[0].set_xlabel("prompt length")
    axes[0].set_ylabel("task-averaged score")
    axes[0].set_title("RULER-style accuracy" + (f" ({model})" if model else ""))
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    L = d.headline_length()
    tasks = d.tasks
    at_L = [m for m in methods if (L, m) in avg]
    w = 0.8 / max(1, len(at_L))
    for i, m in enumerate(at_L):
        vals = [d.mean(t, L, m) or 0.0 for t in tasks]
        axes[1].bar([j + i * w for j in range(len(tasks))], vals, width=w, label=m, color=color[m])
    axes[1].set_xticks(
        [j + 0.4 - w / 2 for j in range(len(tasks))], [t.replace("niah_", "") for t in tasks], rotation=60, fontsize=7
    )
    axes[1].set_title(f"per task at {len_name(L)}")
    axes[1].set_ylim(0, 100)
    return _save(fig, path)


def plot_ppl(data: PplData, path: Path) -> Path | None:
    if not data.records:
        return None
    plt = _plt()
    L = max(data.lengths)
    present, _ = data.common_docs(L)
    edges = next(r for _, r in data.at(L))["edges"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    core = [m for m in present if m in PREFERRED] or present  # variants are in the table and the γ plot
    ax.set_prop_cycle(color=[plt.cm.tab10(i % 10) for i in range(len(core))])
    for m in core:
        sums, toks, causal = data.by_range(L, m)
        ax.plot(
            range(len(sums)),
            [math.exp(s / t) if t else float("nan") for s, t in zip(sums, toks)],
            marker="o",
            linestyle="-" if causal else ":",
            label=m + ("" if causal else " (non-causal)"),
        )
    ranges = [f"{len_name(a) if a else 0}–{len_name(b)}" for a, b in zip(edges[:-1], edges[1:])]
    ax.set_xticks(range(len(edges) - 1), ranges)
    ax.set_xlabel("token position")
    ax.set_ylabel("perplexity")
    ax.set_title(f"PG-19-style perplexity, {len_name(L)} context")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_analysis(an: dict, path: Path) -> Path | None:
    if not an:
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ds = an.get("delta_similarity")
    if ds:
        ax = axes[0][0]
        ax.plot(ds["gammas"], ds["delta_cos_mean"], marker="o", label="Δ (ours)")
        ax.plot(ds["gammas"], ds["query_cos_mean"], marker="s", label="queries (ours)")
        paper = {2: 0.958, 4: 0.910, 8: 0.859, 16: 0.812, 32: 0.777, 64: 0.749}
        ax.plot(list(paper), list(paper.values()), linestyle=":", color="gray", label="queries (paper, Llama-3.1-8B)")
        if ds.get("cross_cos_mean") is not None:
            ax.axhline(ds["cross_cos_mean"], color="red", linestyle="--", label="Δ, two different inputs")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("γ")
        ax.set_ylabel("cosine to the block's anchor row")
        ax.set_title("similarity inside γ-blocks")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    dr = an.get("drift")
    if dr:
        for m, r in dr.items():
            axes[0][1].plot(r["layers"], r["out_cos"], marker=".", label=m)
            axes[1][0].plot(r["layers"], r["spearman"], marker=".", label=m)
        axes[0][1].set_title("attention output vs dense run (cosine)")
        axes[1][0].set_title("last-row attention vs dense run (Spearman ρ)")
        for ax in (axes[0][1], axes[1][0]):
            ax.set_xlabel("layer")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        ax = axes[1][1]
        shown = [m for m in ("sparse", "delta") if m in dr] or list(dr)[:2]
        for m in shown:
            r = dr[m]
            sc = r.get("scatter", {})
            if sc:
                li = sorted(sc, key=int)[-1]
                ax.scatter(sc[li]["dense"], sc[li]["method"], s=3, alpha=0.5, label=f"{m} (layer {li})")
        lim = ax.get_xlim()
        ax.plot(lim, lim, color="black", linewidth=0.5)
        ax.set_xlabel("dense run: log attention of the last query")
        ax.set_ylabel("method run")
        ax.set_title("attention of the last query, head 0 (paper Fig. 3)")
        ax.legend(fontsize=7, markerscale=3)
    return _save(fig, path)


def plot_sweep(an: dict, path: Path) -> Path | None:
    sw = (an or {}).get("sweep")
    if not sw:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.set_prop_cycle(color=[plt.cm.tab20(i % 20) for i in range(len(sw["configs"]))])
    for name, r in sw["configs"].items():
        ax.plot(sw["layers"], r["rel_err"], marker=".", linestyle="-" if r.get("causal", True) else ":", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("relative L2 error vs dense (same q/k/v)")
    ax.set_title("per-layer error: γ, interpolation, base")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_gamma(d: RulerData, ppl: PplData, path: Path, *, sparse: str = "sparse", dense: str = "dense") -> Path | None:
    """Accuracy (at :meth:`RulerData.headline_length`) and perplexity vs γ over the methods named ``delta`` /
    ``delta_g<γ>``."""

    def gamma_of(m: str, default: int = 64) -> int | None:
        if m == "delta":
            return default
        mm = re.fullmatch(r"delta_g(\d+)", m)
        return int(mm.group(1)) if mm else None

    acc = {}
    if d.lengths:
        L = d.headline_length()
        acc = {gamma_of(m): d.avg(L, m) for m in d.methods if gamma_of(m) and d.avg(L, m) is not None}
    pp = {}
    if ppl.records:
        L2 = max(ppl.lengths)
        pp = {gamma_of(m): v for m, v in ppl_by_method(ppl, L2).items() if gamma_of(m)}
    if len(acc) < 2 and len(pp) < 2:
        return None
    plt = _plt()
    shown = [name for name, values in (("accuracy", acc), ("perplexity", pp)) if len(values) >= 2]
    fig, grid = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4), squeeze=False)
    axes = list(grid[0])
    panel = dict(zip(shown, axes))  # one panel per measure with at least two γ (no empty panel)
    if len(acc) >= 2:
        gs = sorted(acc)
        panel["accuracy"].plot(gs, [acc[g] for g in gs], marker="o", label="Δ")
        for ref, style in ((dense, "--"), (sparse, ":")):
            v = d.avg(L, ref)
            if v is not None:
                panel["accuracy"].axhline(v, linestyle=style, color="gray", label=ref)
        panel["accuracy"].set_title(f"accuracy vs γ at {len_name(L)}")
    if len(pp) >= 2:
        gs = sorted(pp)
        panel["perplexity"].plot(gs, [pp[g] for g in gs], marker="o", label="Δ")
        allp = ppl_by_method(ppl, L2)
        for ref, style in ((dense, "--"), (sparse, ":")):
            if ref in allp:
                panel["perplexity"].axhline(allp[ref], linestyle=style, color="gray", label=ref)
        panel["perplexity"].set_title(f"perplexity vs γ at {len_name(L2)}")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("γ")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_sweep_map(d, measure: str, path: Path, a: str | None = None, b: str | None = None) -> Path | None:
    """Heat map of ``a − b`` (default: the sweep's two compared specs) over window × γ for one measure of a
    :class:`delta_attn.eval.sweep.SweepData`; every cell annotated. Blue = ``a`` better, for either sign
    convention (scores: higher is better; perplexity: lower)."""
    roots = d.roots
    a = a or (roots[0] if roots else None)
    b = b or (roots[1] if len(roots) > 1 else None)
    if a is None or b is None or not d.windows or not d.gammas:
        return None
    grid = d.grid(measure, a, b)
    vals = [v for row in grid for v in row if v is not None]
    if not vals:
        return None
    higher = dict((m, h) for m, _, h in d.measures())[measure]
    title = dict((m, t) for m, t, _ in d.measures())[measure]
    plt = _plt()
    lim = max(abs(v) for v in vals) or 1.0
    z = [[float("nan") if v is None else v for v in row] for row in grid]
    fig, ax = plt.subplots(figsize=(1.3 * len(d.gammas) + 2.5, 0.8 * len(d.windows) + 1.8))
    im = ax.imshow(z, cmap="RdBu" if higher else "RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    nd = 1 if measure == "ruler" else 3
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            dark = v is not None and abs(v) > 0.6 * lim  # white text on the saturated cells
            label = "–" if v is None else f"{v:+.{nd}f}"
            ax.text(j, i, label, ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xticks(range(len(d.gammas)), [f"γ={g}" for g in d.gammas])
    ax.set_yticks(range(len(d.windows)), [f"w={w}" for w in d.windows])
    ax.set_xlabel("anchor stride γ")
    ax.set_ylabel("sparse window")
    ax.set_title(f"{a} − {b}: {title}", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, path)


def plot_needle(result: dict, path: Path) -> Path | None:
    """needle.png: per layer, needle key/value cosine to dense, last-row needle mass, consecutive-anchor Δ cos."""
    methods = result.get("methods", {})
    if not methods:
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [
        ("k_cos", "needle keys: cosine to dense"),
        ("v_cos", "needle values: cosine to dense"),
        ("mass", "last prompt row: attention mass on the needle"),
        ("delta_cos", "Δ: cosine between consecutive anchors"),
    ]
    for ax, (key, title) in zip([a for row in axes for a in row], panels):
        for m, s in methods.items():
            if key in s:
                ax.plot(s["layers"], s[key], marker=".", label=m)
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)  # cosines near 1: show the values, not an offset
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    meta = result.get("meta", {})
    fig.suptitle(f"{meta.get('task', '?')}, {meta.get('samples', '?')} prompts of {meta.get('prompt_tokens', '?')}")
    return _save(fig, path)
