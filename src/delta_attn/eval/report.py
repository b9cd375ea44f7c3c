"""Turn result files (JSONL from ``eval ruler`` / ``eval ppl``, JSON from ``eval analyze``) into Markdown
tables and PNG plots — a run summary, or the whole ``RESULTS.md``.

Comparisons are paired: a method pair is compared on the samples both have (same task, length, index,
seed). Averages are over tasks (each task weighted equally, RULER's convention), scores × 100.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .ruler import DISPLAY_NAMES, QA_TASKS, TASK_NAMES

TARGET_FRACTION = 0.90  # Δ recovers >= 90% of dense's average at the longest length
TARGET_GAIN = 30.0  # Δ − sparse >= +30 points
ALPHA = 0.05


def _fmt(x: float | None, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{nd}f}"


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    s = "<0.0001" if p < 1e-4 else f"{p:.4f}"
    return f"**{s}**" if p < ALPHA else s


def _len_name(L: int) -> str:
    return f"{L // 1024}K" if L % 1024 == 0 else str(L)


def _order(methods: Iterable[str], preferred: Sequence[str]) -> list[str]:
    ms = list(dict.fromkeys(methods))
    return [m for m in preferred if m in ms] + sorted(m for m in ms if m not in preferred)


PREFERRED = [
    "dense",
    "sparse",
    "recompute",
    "delta",
    "delta_g16",
    "delta_g32",
    "delta_g128",
    "block",
    "block+delta",
    "vertical_slash",
    "vertical_slash+delta",
    "vs",
    "vs+delta",
]


@dataclass
class RulerData:
    """Sample scores indexed by (task, length, method) -> {(index, seed): score}."""

    scores: dict
    runs: list
    records: list

    @classmethod
    def from_records(cls, records: Iterable[dict]) -> "RulerData":
        scores: dict = defaultdict(dict)
        runs, recs = [], []
        for r in records:
            if r.get("record") == "run":
                runs.append(r)
            elif r.get("record") == "sample":
                key = (int(r["index"]), int(r.get("seed", 0)))
                scores[(r["task"], int(r["length"]), r["method"])][key] = float(r["score"])
                recs.append(r)
        return cls(dict(scores), runs, recs)

    @property
    def tasks(self) -> list[str]:
        ts = {k[0] for k in self.scores}
        return [t for t in TASK_NAMES if t in ts] + sorted(ts - set(TASK_NAMES))

    @property
    def lengths(self) -> list[int]:
        return sorted({k[1] for k in self.scores})

    @property
    def methods(self) -> list[str]:
        return _order((k[2] for k in self.scores), PREFERRED)

    def mean(self, task: str, length: int, method: str) -> float | None:
        s = self.scores.get((task, length, method))
        return 100.0 * statistics.fmean(s.values()) if s else None

    def count(self, task: str, length: int, method: str) -> int:
        return len(self.scores.get((task, length, method), {}))

    def avg(self, length: int, method: str, tasks: Sequence[str] | None = None) -> float | None:
        """Task-averaged score; None unless every task has samples."""
        tasks = tasks or self.tasks
        vals = [self.mean(t, length, method) for t in tasks]
        return None if not vals or any(v is None for v in vals) else statistics.fmean(vals)

    def paired(self, length: int, a: str, b: str, tasks: Sequence[str]) -> tuple[list[float], list[float]]:
        xa, xb = [], []
        for t in tasks:
            sa, sb = self.scores.get((t, length, a), {}), self.scores.get((t, length, b), {})
            for k in sorted(set(sa) & set(sb)):
                xa.append(sa[k])
                xb.append(sb[k])
        return xa, xb


def load_ruler(paths: Sequence[str | Path]) -> RulerData:
    from .records import read_records

    return RulerData.from_records(read_records(paths))


# ---------------------------------------------------------------------------------------------
# RULER tables


def average_table(d: RulerData, methods: Sequence[str] | None = None, dense: str = "dense") -> str:
    methods = list(methods or d.methods)
    head = "| method | " + " | ".join(_len_name(L) for L in d.lengths) + " | avg |"
    lines = [head, "|" + "---|" * (len(d.lengths) + 2)]
    for m in methods:
        vals = [d.avg(L, m) for L in d.lengths]
        ok = [v for v in vals if v is not None]
        cells = []
        for L, v in zip(d.lengths, vals):
            base = d.avg(L, dense)
            pct = f" ({100 * v / base:.0f}%)" if v is not None and base and m != dense else ""
            cells.append(_fmt(v) + pct)
        lines.append(
            f"| {m} | " + " | ".join(cells) + f" | {_fmt(statistics.fmean(ok)) if len(ok) == len(vals) else '–'} |"
        )
    return "\n".join(lines) + "\n\n(task-averaged score × 100; in brackets: % of dense at that length)\n"


def task_table(d: RulerData, length: int, methods: Sequence[str] | None = None) -> str:
    methods = list(methods or d.methods)
    tasks = d.tasks
    lines = [
        "| method | " + " | ".join(DISPLAY_NAMES.get(t, t) for t in tasks) + " | avg | non-QA | QA |",
        "|" + "---|" * (len(tasks) + 4),
    ]
    non_qa = [t for t in tasks if t not in QA_TASKS]
    qa = [t for t in tasks if t in QA_TASKS]
    for m in methods:
        cells = [_fmt(d.mean(t, length, m)) for t in tasks]
        nq = _fmt(d.avg(length, m, non_qa) if non_qa else None)
        q = _fmt(d.avg(length, m, qa) if qa else None)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {_fmt(d.avg(length, m))} | {nq} | {q} |")
    ns = sorted({d.count(t, length, m) for t in tasks for m in methods} - {0})
    return "\n".join(lines) + f"\n\n(samples per cell: {', '.join(map(str, ns)) or '–'})\n"


def default_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    cand = [
        ("delta", "sparse"),
        ("delta", "recompute"),
        ("delta_g16", "sparse"),
        ("delta_g16", "delta"),
        ("recompute", "sparse"),
        ("block+delta", "block"),
        ("vertical_slash+delta", "vertical_slash"),
        ("vs+delta", "vs"),
    ]
    return [(a, b) for a, b in cand if a in methods and b in methods]


def significance_table(
    d: RulerData, pairs: Sequence[tuple[str, str]], *, n_resamples: int = 9999, seed: int = 0, per_task: bool = False
) -> str:
    """One-sided paired permutation tests (H1: A > B), pooled over non-QA / QA / all tasks, per length."""
    from .stats import paired_permutation_test

    tasks = d.tasks
    groups = [
        ("non-QA", [t for t in tasks if t not in QA_TASKS]),
        ("QA", [t for t in tasks if t in QA_TASKS]),
        ("all", tasks),
    ]
    if per_task:
        groups += [(DISPLAY_NAMES.get(t, t), [t]) for t in tasks]
    lines = [
        "| A > B | tasks | " + " | ".join(_len_name(L) for L in d.lengths) + " |",
        "|" + "---|" * (len(d.lengths) + 2),
    ]
    for a, b in pairs:
        for gname, gtasks in groups:
            if not gtasks:
                continue
            cells = []
            for L in d.lengths:
                xa, xb = d.paired(L, a, b, gtasks)
                if not xa:
                    cells.append("–")
                    continue
                r = paired_permutation_test(xa, xb, n_resamples=n_resamples, seed=seed)
                cells.append(f"{100 * r.diff:+.1f} (p {_p(r.p_value)}, n {r.n})")
            lines.append(f"| {a} > {b} | {gname} | " + " | ".join(cells) + " |")
    return (
        "\n".join(lines) + f"\n\n(mean paired difference in points; one-sided paired permutation test, "
        f"{n_resamples} resamples, p < {ALPHA} in bold)\n"
    )


def targets_table(
    d: RulerData,
    *,
    delta: str = "delta",
    sparse: str = "sparse",
    recompute: str = "recompute",
    dense: str = "dense",
    length: int | None = None,
    n_resamples: int = 9999,
) -> str:
    from .stats import paired_permutation_test

    if not d.lengths:
        return "_pending: no RULER results yet._\n"
    L = length or max(d.lengths)
    rows = ["| target (at " + _len_name(L) + ") | value | met? |", "|---|---|---|"]
    av = {m: d.avg(L, m) for m in (delta, sparse, recompute, dense)}

    def verdict(ok):
        return "–" if ok is None else ("**met**" if ok else "**missed**")

    frac = av[delta] / av[dense] if av[delta] is not None and av[dense] else None
    rows.append(
        f"| {delta} recovers ≥ {TARGET_FRACTION:.0%} of {dense}'s average | "
        f"{_fmt(av[delta])} / {_fmt(av[dense])} = {_fmt(None if frac is None else 100 * frac)}% | "
        f"{verdict(None if frac is None else frac >= TARGET_FRACTION)} |"
    )
    for other, need_gain in ((sparse, TARGET_GAIN), (recompute, 0.0)):
        xa, xb = d.paired(L, delta, other, d.tasks)
        if xa and av[delta] is not None and av[other] is not None:
            r = paired_permutation_test(xa, xb, n_resamples=n_resamples)
            gain = av[delta] - av[other]
            ok = gain >= need_gain and r.p_value < ALPHA and (need_gain > 0 or gain > 0)
            want = f"≥ +{need_gain:.0f} pt, " if need_gain else ""
            rows.append(
                f"| {delta} − {other} ({want}p < {ALPHA}, all tasks pooled) | {gain:+.1f} pt, "
                f"p {_p(r.p_value)} (n {r.n}) | {verdict(ok)} |"
            )
        else:
            rows.append(f"| {delta} − {other} | – | – |")
    return "\n".join(rows) + "\n"


def methods_legend(d_methods: Sequence[str], runs: Sequence[dict]) -> str:
    """Each method name with its full configuration (re-parsed with the defaults the runs used)."""
    from .methods import parse_method

    defaults = {}
    for r in runs:
        o = r.get("options", {})
        if "base" in o:
            defaults = {
                "sparse": o["base"],
                "window": o["window"],
                "sink": o["sink"],
                "gamma": o["gamma"],
                "block_size": o["block_size"],
                "vertical_size": o["vertical_size"],
                "slash_size": o["slash_size"],
            }
    lines = []
    for m in d_methods:
        try:
            lines.append(f"- `{m}`: {parse_method(m, defaults).describe()}")
        except Exception as exc:  # a method from an older spec syntax
            lines.append(f"- `{m}`: ({exc})")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# perplexity


def ppl_table(records: Sequence[dict]) -> str:
    recs = [r for r in records if r.get("record") == "ppl"]
    if not recs:
        return "_pending: no perplexity results yet._\n"
    out = []
    for L in sorted({int(r["length"]) for r in recs}):
        rl = [r for r in recs if int(r["length"]) == L]
        edges = rl[0]["edges"]
        methods = _order((r["method"] for r in rl), PREFERRED)
        docs = {m: {r["doc"] for r in rl if r["method"] == m} for m in methods}
        common = set.intersection(*docs.values()) if docs else set()
        ranges = [f"{_len_name(a) if a else '0'}–{_len_name(b)}" for a, b in zip(edges[:-1], edges[1:])]
        out.append(f"**Context {_len_name(L)}** ({len(common)} documents, the same for every method)\n")
        out.append("| method | " + " | ".join(ranges) + " | all |")
        out.append("|" + "---|" * (len(ranges) + 2))
        for m in methods:
            sums = [0.0] * len(ranges)
            toks = [0] * len(ranges)
            causal = True
            for r in rl:
                if r["method"] == m and r["doc"] in common:
                    causal = causal and r.get("causal", True)
                    for i, (s, t) in enumerate(zip(r["nll_sum"], r["tokens"])):
                        sums[i] += s
                        toks[i] += t
            cells = [_fmt(math.exp(s / t), 2) if t else "–" for s, t in zip(sums, toks)]
            tot = _fmt(math.exp(sum(sums) / sum(toks)), 2) if sum(toks) else "–"
            name = m if causal else f"{m} ⚠ non-causal (sees later tokens; not a valid LM score)"
            out.append(f"| {name} | " + " | ".join(cells) + f" | {tot} |")
        out.append("")
    return (
        "\n".join(out) + "\n(perplexity = exp(mean next-token NLL) over the tokens whose position falls in the range)\n"
    )


def ppl_by_method(records: Sequence[dict], length: int) -> dict:
    """method -> overall perplexity at ``length`` over the documents every method has."""
    rl = [r for r in records if r.get("record") == "ppl" and int(r["length"]) == length]
    methods = {r["method"] for r in rl}
    if not methods:
        return {}
    common = set.intersection(*({r["doc"] for r in rl if r["method"] == m} for m in methods))
    out = {}
    for m in methods:
        s = sum(sum(r["nll_sum"]) for r in rl if r["method"] == m and r["doc"] in common)
        t = sum(sum(r["tokens"]) for r in rl if r["method"] == m and r["doc"] in common)
        if t:
            out[m] = math.exp(s / t)
    return out


# ---------------------------------------------------------------------------------------------
# analysis


def analysis_markdown(an: dict) -> str:
    if not an:
        return "_pending: no analysis results yet._\n"
    out = []
    meta = an.get("meta", {})
    out.append(
        f"Prompts: {meta.get('samples', '?')} × `{meta.get('task', '?')}` at {meta.get('prompt_tokens', '?')} "
        f"tokens; sparse base of Δ: {str(meta.get('base', '?')).replace(', sparse only', '')}.\n"
    )
    ds = an.get("delta_similarity")
    if ds:
        gs = ds["gammas"]
        out.append(
            "**Cosine similarity inside γ-blocks** (anchor row vs the other rows of its block, mean over "
            "layers, heads, rows; paper: queries 0.958 at γ=2 … 0.749 at γ=64):\n"
        )
        out.append("| | " + " | ".join(f"γ={g}" for g in gs) + " |")
        out.append("|" + "---|" * (len(gs) + 1))
        out.append("| Δ (delta) | " + " | ".join(_fmt(x, 3) for x in ds["delta_cos_mean"]) + " |")
        out.append("| query | " + " | ".join(_fmt(x, 3) for x in ds["query_cos_mean"]) + " |")
        if ds.get("cross_cos_mean") is not None:
            out.append(
                f"\nΔ of two different prompts at the same positions: cosine {_fmt(ds['cross_cos_mean'], 3)} "
                "(paper ≈ 0.14: the correction is input-specific).\n"
            )
    dr = an.get("drift")
    if dr:
        out.append(
            "\n**Whole-model runs vs dense** (per-layer mean; output cosine over rows past sink+window; "
            "Spearman ρ of the last prompt position's attention row over all keys):\n"
        )
        out.append("| method | out cos (first / mid / last layer, mean) | last-row ρ (first / mid / last, mean) |")
        out.append("|---|---|---|")
        for m, r in dr.items():

            def fmm(v):
                return f"{v[0]:.3f} / {v[len(v) // 2]:.3f} / {v[-1]:.3f}, {statistics.fmean(v):.3f}"

            out.append(f"| {m} | {fmm(r['out_cos'])} | {fmm(r['spearman'])} |")
    sw = an.get("sweep")
    if sw:
        out.append(
            "\n**One layer at a time on the dense run's q/k/v** (mean over layers; cosine and relative L2 "
            "error of the attention output vs dense):\n"
        )
        out.append("| config | cos | rel. error |")
        out.append("|---|---|---|")
        for name, r in sw["configs"].items():
            flag = "" if r.get("causal", True) else " ⚠ non-causal"
            out.append(f"| {name}{flag} | {r['cos_mean']:.4f} | {r['rel_err_mean']:.4f} |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ruler(d: RulerData, path: Path, methods: Sequence[str] | None = None) -> Path | None:
    if not d.lengths:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    methods = list(methods or d.methods)
    axes[0].set_prop_cycle(color=[plt.cm.tab10(i % 10) for i in range(len(methods))])
    for m in methods:
        xs = [L for L in d.lengths if d.avg(L, m) is not None]
        if xs:
            axes[0].plot(xs, [d.avg(L, m) for L in xs], marker="o", label=m)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(d.lengths, [_len_name(L) for L in d.lengths])
    axes[0].set_xlabel("prompt length")
    axes[0].set_ylabel("task-averaged score")
    axes[0].set_title("RULER-style accuracy (SmolLM2-135M)")
    axes[1].set_prop_cycle(color=[plt.cm.tab10(i % 10) for i in range(len(methods))])
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    L = max(d.lengths)
    tasks = d.tasks
    w = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        vals = [d.mean(t, L, m) or 0.0 for t in tasks]
        axes[1].bar([j + i * w for j in range(len(tasks))], vals, width=w, label=m)
    axes[1].set_xticks(
        [j + 0.4 - w / 2 for j in range(len(tasks))], [t.replace("niah_", "") for t in tasks], rotation=60, fontsize=7
    )
    axes[1].set_title(f"per task at {_len_name(L)}")
    axes[1].set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_ppl(records: Sequence[dict], path: Path) -> Path | None:
    recs = [r for r in records if r.get("record") == "ppl"]
    if not recs:
        return None
    plt = _plt()
    L = max(int(r["length"]) for r in recs)
    rl = [r for r in recs if int(r["length"]) == L]
    edges = rl[0]["edges"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    present = _order((r["method"] for r in rl), PREFERRED)
    core = [m for m in present if m in PREFERRED] or present  # variants are in the table and the γ plot
    ax.set_prop_cycle(color=[plt.cm.tab10(i % 10) for i in range(len(core))])
    for m in core:
        sums = [0.0] * (len(edges) - 1)
        toks = [0] * (len(edges) - 1)
        for r in rl:
            if r["method"] == m:
                for i, (s, t) in enumerate(zip(r["nll_sum"], r["tokens"])):
                    sums[i] += s
                    toks[i] += t
        causal = all(r.get("causal", True) for r in rl if r["method"] == m)
        ax.plot(
            range(len(sums)),
            [math.exp(s / t) for s, t in zip(sums, toks)],
            marker="o",
            linestyle="-" if causal else ":",
            label=m + ("" if causal else " (non-causal)"),
        )
    ranges = [f"{_len_name(a) if a else 0}–{_len_name(b)}" for a, b in zip(edges[:-1], edges[1:])]
    ax.set_xticks(range(len(edges) - 1), ranges)
    ax.set_xlabel("token position")
    ax.set_ylabel("perplexity")
    ax.set_title(f"PG-19-style perplexity, {_len_name(L)} context")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_gamma(
    d: RulerData, ppl_records: Sequence[dict], path: Path, *, sparse: str = "sparse", dense: str = "dense"
) -> Path | None:
    """Accuracy (longest length) and perplexity vs γ over the methods named ``delta`` / ``delta_g<γ>``."""
    import re

    def gamma_of(m: str, default: int = 64) -> int | None:
        if m == "delta":
            return default
        mm = re.fullmatch(r"delta_g(\d+)", m)
        return int(mm.group(1)) if mm else None

    acc = {}
    if d.lengths:
        L = max(d.lengths)
        acc = {gamma_of(m): d.avg(L, m) for m in d.methods if gamma_of(m) and d.avg(L, m) is not None}
    pp = {}
    if ppl_records:
        L2 = max(int(r["length"]) for r in ppl_records if r.get("record") == "ppl")
        pp = {gamma_of(m): v for m, v in ppl_by_method(ppl_records, L2).items() if gamma_of(m)}
    if len(acc) < 2 and len(pp) < 2:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if len(acc) >= 2:
        gs = sorted(acc)
        axes[0].plot(gs, [acc[g] for g in gs], marker="o", label="Δ")
        for ref, style in ((dense, "--"), (sparse, ":")):
            v = d.avg(max(d.lengths), ref)
            if v is not None:
                axes[0].axhline(v, linestyle=style, color="gray", label=ref)
        axes[0].set_title(f"accuracy vs γ at {_len_name(max(d.lengths))}")
    if len(pp) >= 2:
        gs = sorted(pp)
        axes[1].plot(gs, [pp[g] for g in gs], marker="o", label="Δ")
        allp = ppl_by_method(ppl_records, L2)
        for ref, style in ((dense, "--"), (sparse, ":")):
            if ref in allp:
                axes[1].axhline(allp[ref], linestyle=style, color="gray", label=ref)
        axes[1].set_title(f"perplexity vs γ at {_len_name(L2)}")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("γ")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# whole documents


def ruler_summary(d: RulerData, *, pairs: Sequence[tuple[str, str]] | None = None, n_resamples: int = 9999) -> str:
    """A Markdown summary of one run directory (averages, per-task tables, significance)."""
    if not d.scores:
        return "_no RULER samples yet._\n"
    parts = ["## Average over tasks\n", average_table(d)]
    for L in d.lengths:
        parts += [f"\n## {_len_name(L)}\n", task_table(d, L)]
    pairs = default_pairs(d.methods) if pairs is None else pairs
    if pairs:
        parts += ["\n## Paired permutation tests\n", significance_table(d, pairs, n_resamples=n_resamples)]
    return "\n".join(parts)


def _runs_summary(runs: Sequence[dict]) -> str:
    if not runs:
        return "- _pending GPU run_\n"
    lines = []
    for r in runs:
        argv = " ".join(r.get("argv", []))
        lines.append(
            f"- `{r.get('run_id')}` {r.get('date', '?')}: {r.get('device_name', '?')} ({r.get('device', '?')}, "
            f"{r.get('dtype', '?')}), torch {r.get('torch', '?')}, transformers {r.get('transformers', '?')}\n"
            f"  `{argv}`"
        )
    return "\n".join(lines) + "\n"


def results_document(
    ruler_paths: Sequence[str | Path],
    ppl_paths: Sequence[str | Path],
    analysis_paths: Sequence[str | Path],
    plots_dir: Path | None,
    *,
    rel_to: Path | None = None,
    n_resamples: int = 9999,
    header: str = "",
) -> str:
    """The full RESULTS.md text (sections say "pending" where there is no data)."""
    from .records import open_text, read_records

    all_recs = list(read_records(ruler_paths))
    d = RulerData.from_records(all_recs)
    ppl_recs = list(read_records(ppl_paths, "ppl"))
    ppl_runs = list(read_records(ppl_paths, "run"))
    an = {}
    for p in analysis_paths:
        p = Path(p)
        files = sorted([*p.glob("*.json"), *p.glob("*.json.gz")]) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                with open_text(f) as fh:
                    an.update(json.load(fh))
    img = {}
    if plots_dir is not None:
        plots_dir.mkdir(parents=True, exist_ok=True)
        for name, fn in (
            ("ruler.png", lambda p: plot_ruler(d, p)),
            ("ppl.png", lambda p: plot_ppl(ppl_recs, p)),
            ("analysis.png", lambda p: plot_analysis(an, p)),
            ("sweep.png", lambda p: plot_sweep(an, p)),
            ("gamma.png", lambda p: plot_gamma(d, ppl_recs, p)),
        ):
            out = fn(plots_dir / name)
            if out is not None:
                img[name] = Path(os.path.relpath(out.resolve(), rel_to)) if rel_to is not None else out

    def pic(name, alt):
        return f"\n![{alt}]({img[name].as_posix()})\n" if name in img else ""

    n_counts = sorted({d.count(t, L, m) for t in d.tasks for L in d.lengths for m in d.methods} - {0})
    parts = [header]
    parts.append("## Runs\n")
    parts.append(_runs_summary(d.runs + ppl_runs))
    if d.scores:
        parts.append(
            f"\nRULER-style: {len(d.tasks)} tasks × lengths {', '.join(_len_name(L) for L in d.lengths)} × "
            f"{len(d.methods)} methods, samples per (task, length, method): {', '.join(map(str, n_counts))} "
            f"({len(d.records)} generations).\n"
        )
        parts.append("\n### Methods\n")
        parts.append(methods_legend(d.methods, d.runs))
    parts.append("\n## Targets\n")
    parts.append(targets_table(d, n_resamples=n_resamples) if d.scores else "_pending GPU run._\n")
    parts.append("\n## RULER-style accuracy: average over the 13 tasks\n")
    parts.append((average_table(d) + pic("ruler.png", "RULER accuracy")) if d.scores else "_pending GPU run._\n")
    parts.append("\n## Per task\n")
    if d.scores:
        for L in d.lengths:
            parts.append(f"\n### {_len_name(L)}\n")
            parts.append(task_table(d, L))
    else:
        parts.append("_pending GPU run._\n")
    parts.append("\n## Significance (paired permutation tests, one-sided, as in the paper)\n")
    pairs = default_pairs(d.methods)
    parts.append(
        significance_table(d, pairs, n_resamples=n_resamples, per_task=True) if pairs else "_pending GPU run._\n"
    )
    parts.append("\n## Perplexity (PG-19 style, public-domain books)\n")
    parts.append(ppl_table(ppl_recs) + pic("ppl.png", "perplexity"))
    parts.append("\n## γ ablation\n")
    parts.append(pic("gamma.png", "gamma ablation") or "_pending GPU run (needs delta_g<γ> methods)._\n")
    parts.append("\n## Analysis (paper Fig. 3 and Fig. 6b on our model)\n")
    parts.append(analysis_markdown(an) + pic("analysis.png", "analysis") + pic("sweep.png", "per-layer sweep"))
    return "\n".join(parts)
