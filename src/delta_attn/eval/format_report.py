"""The report's "Why the prompt format matters" section, and ``needle.md`` (no torch here).

From RULER records of the prompt-format variants (``niah_single_1@noheader`` ..., see
:data:`delta_attn.eval.ruler.FORMATS`) with the default format's records of the same task, and from
``needle.json`` files of ``eval needle``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .ruler import FORMATS
from .stats import paired_permutation_test
from .tables import RulerData, len_name

#: the methods compared with recompute in the format table (when present)
DELTA_METHODS = ("delta", "delta_auto")
METRICS = ("k_cos", "v_cos", "mass", "delta_cos")


def _f(x, nd: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def format_name(task: str) -> str:
    _, at, suffix = task.partition("@")
    return "@" + suffix if at else "RULER default"


def _format_order(task: str) -> tuple:
    _, _, suffix = task.partition("@")
    fs = suffix.split("+") if suffix else []
    return (len(fs), [list(FORMATS).index(f) if f in FORMATS else 99 for f in fs])


def variant_tasks(d: RulerData) -> dict[str, list[str]]:
    """base task -> [the base itself if it has records, then its format variants], for bases with variants."""
    out: dict[str, list[str]] = {}
    for t in d.tasks:
        if "@" in t:
            out.setdefault(t.partition("@")[0], []).append(t)
    return {b: ([b] if b in d.tasks else []) + sorted(v, key=_format_order) for b, v in out.items()}


def format_table(d: RulerData, base: str, length: int, tasks: Sequence[str], *, n_resamples: int = 9999) -> str:
    """Format × method accuracy (× 100, n), and each Δ method − recompute with a two-sided paired test."""
    methods = [m for m in d.methods if any(d.count(t, length, m) for t in tasks)]
    deltas = [m for m in DELTA_METHODS if m in methods and "recompute" in methods]
    head = "| format | " + " | ".join(methods) + "".join(f" | {m} − recompute (p)" for m in deltas) + " |"
    lines = [f"**{base}, {len_name(length)}**\n", head, "|---" * (1 + len(methods) + len(deltas)) + "|"]
    for t in tasks:
        cells = [f"{_f(d.mean(t, length, m), 1)} (n={d.count(t, length, m)})" for m in methods]
        for m in deltas:
            a, b = d.paired(length, m, "recompute", [t])
            if not a:
                cells.append("–")
                continue
            r = paired_permutation_test(a, b, n_resamples=n_resamples, alternative="two-sided")
            cells.append(f"{100 * r.diff:+.1f} (p={r.p_value:.3g}, n={r.n})")
        lines.append(f"| {format_name(t)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _peak_layer(result: dict) -> int | None:
    """The layer in the upper half of the model where the dense run's last row looks at the needle most."""
    dense = result.get("methods", {}).get("dense")
    if not dense:
        return None
    layers, mass = dense["layers"], dense["mass"]
    half = [i for i in range(len(layers)) if i >= len(layers) // 2]
    return layers[max(half, key=lambda i: mass[i])] if half else None


def needle_summary(results: Sequence[dict]) -> str:
    """One row per (needle file, method): means over layers, and the needle mass at the dense run's peak layer."""
    lines = [
        "| task | prompts | method | needle key cos | needle value cos | needle mass (mean) | needle mass (peak "
        "layer) | consecutive-anchor Δ cos |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        meta, peak = res.get("meta", {}), _peak_layer(res)
        for name, s in res.get("methods", {}).items():
            at_peak = s["mass"][s["layers"].index(peak)] if peak is not None else None
            lines.append(
                f"| {meta.get('task', '?')} | {meta.get('samples', '?')} × {meta.get('prompt_tokens', '?')} | {name} | "
                f"{_f(s.get('k_cos_mean'), 4)} | {_f(s.get('v_cos_mean'), 4)} | {_f(s.get('mass_mean'))} | "
                f"{_f(at_peak)}{f' (layer {peak})' if peak is not None else ''} | {_f(s.get('delta_cos_mean'))} |"
            )
    return "\n".join(lines) + "\n"


def format_section(d: RulerData, needles: Sequence[dict], *, n_resamples: int = 9999) -> str:
    """The "Why the prompt format matters" section (when there are variant records) and the "Needle analysis"
    section (when there are needle files); '' when there are neither."""
    groups = variant_tasks(d)
    if not groups and not needles:
        return ""
    parts = []
    if groups:
        parts += [
            "\n## Why the prompt format matters\n",
            "The same NIAH task in prompt-format variants (task-name suffixes: "
            + "; ".join(f"`@{f}`: {why}" for f, why in FORMATS.items())
            + "). A variant's sample i has the default format's value and needle depth. Accuracy × 100 with the "
            "number of samples; Δ − recompute is the paired mean difference (points) with a two-sided paired "
            "permutation test.\n",
        ]
    for base, tasks in groups.items():
        for L in d.lengths:
            if any(d.count(t, L, m) for t in tasks for m in d.methods):
                parts.append(format_table(d, base, L, tasks, n_resamples=n_resamples))
    if needles:
        parts.append("\n## Needle analysis\n")
        parts.append(
            "Needle analysis (`eval needle`): per method, the cosine to dense of the needle tokens' keys and "
            "values in the prefilled cache, the attention mass the first decode query puts on the needle "
            "(computed densely over the method's cache), and the cosine between consecutive anchors' Δ; means "
            "over layers and prompts.\n"
        )
        parts.append(needle_summary(needles))
    return "\n".join(parts)


def needle_markdown(result: dict, layers: Sequence[int] | None = None) -> str:
    """needle.md: per method the metrics' means over layers, and per layer the last row's needle mass."""
    methods = result.get("methods", {})
    if not methods:
        return "_no needle analysis._\n"
    meta = result.get("meta", {})
    lines = [
        f"Needle analysis: {meta.get('samples', '?')} × `{meta.get('task', '?')}` prompts of "
        f"{meta.get('prompt_tokens', '?')} tokens (needle depths {meta.get('depths', '?')}).\n",
        needle_summary([result]),
        "(key/value cosine to the dense run over the needle's tokens and KV heads)\n",
    ]
    all_layers = next(iter(methods.values()))["layers"]
    shown = list(layers) if layers is not None else all_layers
    rows = ["| layer | " + " | ".join(f"mass {m}" for m in methods) + " |", "|---|" + "---|" * len(methods)]
    for li in shown:
        i = all_layers.index(li)
        rows.append(f"| {li} | " + " | ".join(_f(s["mass"][i]) for s in methods.values()) + " |")
    return "\n".join(lines + rows) + "\n"
