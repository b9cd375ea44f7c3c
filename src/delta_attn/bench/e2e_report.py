"""The report of ``delta-attn bench e2e``: results.json, the Markdown table, the summary lines and plot.png.

Beyond the measured cells (:func:`extrapolate`): dense's N² fit of its measured lengths, extrapolated to the lengths
where dense did not run (labelled so wherever it appears), and Δ's floor line (:func:`floor_curve`). The same report
is written by ``delta-attn bench e2e-report`` for the cells of several runs merged (:mod:`.e2e_merge`).
"""

from __future__ import annotations

import json
import os
import sys

from . import triton_compiles
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


def add_ratios(cells: list[dict]) -> None:
    """``speedup_vs_dense``: dense one-shot TTFT at the same length over the cell's TTFT (a run's own dense; for merged
    runs, the merged dense cell at that length); ``chunked_over_one_shot``: the same method's one-shot TTFT there."""
    dense = {c["n"]: c["ttft_s"] for c in cells if c["method"] == "dense" and c["chunk"] == 0 and "ttft_s" in c}
    one_shot = {(c["n"], c["method"]): c["ttft_s"] for c in cells if c["chunk"] == 0 and "ttft_s" in c}
    for c in cells:
        if "ttft_s" not in c:
            continue
        if c["n"] in dense:
            c["speedup_vs_dense"] = dense[c["n"]] / c["ttft_s"]
        if c["chunk"] and (c["n"], c["method"]) in one_shot:
            c["chunked_over_one_shot"] = c["ttft_s"] / one_shot[(c["n"], c["method"])]


# ---- beyond the measured cells: dense's fit and Δ's floor ----------------------------------------


class ReportInputError(ValueError):
    """A results.json that lacks what the floor line needs (an older or hand-edited file)."""


def delta_config_of(meta: dict):
    """The :class:`~delta_attn.config.DeltaConfig` the run's Δ cells ran with: ``bench e2e`` builds it from
    ``--window/--sink/--gamma`` and the streaming base, every other field at its default, and records those four in
    ``meta["delta"]``."""
    from ..config import DeltaConfig

    spec = meta.get("delta") or {}
    missing = [k for k in ("window", "sink", "gamma", "sparse") if k not in spec]
    if missing:
        raise ReportInputError(
            f"results.json meta.delta lacks {', '.join(missing)}: the floor line needs Δ's config (a results.json "
            "written by `delta-attn bench e2e` records it)"
        )
    return DeltaConfig(window=spec["window"], sink=spec["sink"], gamma=spec["gamma"], sparse=spec["sparse"])


def attention_shape_of(meta: dict) -> dict:
    """``heads`` and ``head_dim`` of the run's model: ``meta["attention"]`` (recorded since e2e-report existed), else,
    for an older run of a random ``--model-shape``, that shape's table entry (the sizes the model was built from)."""
    if "attention" in meta:
        return meta["attention"]
    from .e2e_options import SHAPES

    label = meta.get("model_shape", "")
    shape = label[: -len(" shape")] if label.endswith(" shape") else None
    if meta.get("real_weights") or shape not in SHAPES:
        raise ReportInputError(
            f"results.json of {label!r} records no meta.attention (heads, head_dim) and is not one of the random "
            "shapes: rerun `delta-attn bench e2e` with this version, which records it"
        )
    spec = SHAPES[shape]
    return dict(heads=spec["num_attention_heads"], kv_heads=spec["num_key_value_heads"], head_dim=spec["head_dim"])


def attention_flops(meta: dict, n: int) -> tuple[int, int]:
    """(dense, Δ) attention FLOPs of one ``n``-token prefill of the run's model, every layer's query heads (batch 1),
    from the cost model (:func:`delta_attn.cost.prefill_cost`, docs/algorithm.md §10)."""
    from ..cost import prefill_cost

    config, shape = delta_config_of(meta), attention_shape_of(meta)
    layers = meta["layers"]
    dense = prefill_cost(config.replace(mode="dense"), n).flops(shape["head_dim"], shape["heads"]) * layers
    delta = prefill_cost(config.replace(mode="delta"), n).flops(shape["head_dim"], shape["heads"]) * layers
    return dense, delta


def floor_curve(fit: dict, meta: dict, ns) -> list[float]:
    """Δ's floor (s) at each length of ``ns``: ``a·N + b·N² · (Δ FLOPs / dense FLOPs)``, with ``a``, ``b`` the dense fit
    (:func:`dense_fit`) and the FLOPs from the cost model (:func:`attention_flops`).

    What it assumes: the fit's linear term ``a·N`` is the forward's work outside attention (projections, MLP,
    norms, the LM head's one row), the same for Δ as for dense; its quadratic term ``b·N²`` is dense attention, run at
    the rate (FLOP/s) cuDNN/the chosen SDPA backend reached in the same runs; and Δ's attention runs at that same rate,
    so it takes ``b·N²`` scaled by its share of dense's attention FLOPs. A measured Δ above the line is what Δ's
    kernels lose to dense's attention rate (plus anything Δ adds outside attention); the line is no bound on a Δ
    faster per FLOP than the dense backend."""
    return [floor_at(fit, n, *attention_flops(meta, n)) for n in ns]


def floor_at(fit: dict, n: int, dense_flops: int, delta_flops: int) -> float:
    """:func:`floor_curve` at one length whose attention FLOPs are known."""
    return fit["a"] * n + fit["b"] * n * n * (delta_flops / dense_flops)


def curve_lengths(lengths, points: int = 48) -> list[int]:
    """Lengths to draw a curve through: ``points`` log-spaced from the shortest to the longest of ``lengths``, and
    those lengths themselves."""
    lo, hi = min(lengths), max(lengths)
    if lo == hi:
        return [lo]
    step = (hi / lo) ** (1 / (points - 1))
    return sorted({*lengths, *(round(lo * step**i) for i in range(points))})


def extrapolate(res: dict, strict: bool = True) -> None:
    """Add what lies beyond the measured cells to ``res``: ``dense_fit`` (:func:`dense_fit`, or None),
    ``speedup_vs_dense_fit`` on every measured non-dense cell at a length without a measured one-shot dense (its TTFT
    against the fit there: extrapolated, never mixed with the measured ``speedup_vs_dense``), and ``floor``: at every
    cell length, the dense fit, the attention FLOPs and Δ's floor (:func:`floor_curve`). ``floor_error`` says why
    there is no floor (a fit with a negative term; with ``strict=False`` also a results.json that lacks the Δ config
    or head counts: ``strict`` raises :class:`ReportInputError` then)."""
    cells = res["cells"]
    for c in cells:
        c.pop("speedup_vs_dense_fit", None)
    res.pop("floor", None)
    res.pop("floor_error", None)
    fit = res["dense_fit"] = dense_fit(cells)
    if fit is None:
        res["floor_error"] = "no dense fit: fewer than 2 measured one-shot dense lengths"
        return
    fitted = fitted_dense_lengths(cells, fit)
    for c in cells:
        if "ttft_s" in c and c["method"] != "dense" and c["n"] in fitted:
            c["speedup_vs_dense_fit"] = dense_fit_at(fit, c["n"]) / c["ttft_s"]
    if fit["a"] < 0 or fit["b"] < 0:
        res["floor_error"] = (
            f"the dense fit has a negative term (a = {fit['a']:.3g} s/token, b = {fit['b']:.3g} s/token²): it does not "
            "split into work outside attention and attention, so there is no floor line"
        )
        return
    ns = sorted({c["n"] for c in cells})
    try:
        flops = [attention_flops(res["meta"], n) for n in ns]
    except ReportInputError as exc:
        if strict:
            raise
        res["floor_error"] = str(exc)
        return
    res["floor"] = [
        dict(n=n, dense_fit_s=dense_fit_at(fit, n), dense_flops=fl[0], delta_flops=fl[1], floor_s=floor_at(fit, n, *fl))
        for n, fl in zip(ns, flops)
    ]


def compiled_texts(cell: dict) -> list[str]:
    """What a cell compiled during its timed runs, if anything: torch.compile graphs, then Triton kernels (a
    length-specialised launch); empty after a warm-up that compiled everything."""
    texts = [f"compiled {cell['graphs_compiled']} graph(s)"] if cell.get("graphs_compiled") else []
    return texts + ([triton_compiles.describe(cell["triton_compiled"])] if cell.get("triton_compiled") else [])


def _graphs_in_cells_text(cells: list[dict]) -> str:
    """The compiled run's check that no cell compiled: graphs torch.compile compiled during the timed cells (runs
    from before the count was recorded say nothing)."""
    counts = [c["graphs_compiled"] for c in cells if "graphs_compiled" in c]
    if not counts:
        return ""
    total = sum(counts)
    return (
        " No graph compiled during the timed cells."
        if not total
        else (f" **{total} graph(s) compiled during the timed cells** (marked in the notes).")
    )


def markdown(res: dict) -> str:
    meta = res["meta"]
    cut = " (cut with --layers)" if meta["layers_cut"] else ""
    inputs = list(enumerate(meta.get("inputs") or [], 1))
    gpus = f" ({meta['gpus']} GPU)" if meta["gpus"] else ""
    lines = [
        f"Model: {meta['model_shape']}, {meta['layers']} layers{cut}, {meta['params_b']:.2f} B "
        f"{'real' if meta.get('real_weights') else 'random'} weights, "
        f"{meta['dtype']}, on {meta['device']}{gpus}; torch {meta['torch']}, {meta['date']}."
        + (
            " Decoder layers compiled (torch.compile, --compile), attention eager in every column."
            + _graphs_in_cells_text(res["cells"])
            if meta.get("compiled")
            else ""
        ),
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
        *(
            run_lines(meta)
            if "inputs" not in meta
            else [f"Run {i}: " + run_lines(run)[0] + f" Command: `{run['command']}`" for i, run in inputs]
        ),
        *([] if "inputs" not in meta else merge_lines(meta)),
        f"Command: `{meta['command']}`",
        "",
        "| N | method | chunk | TTFT s | tokens/s | × vs dense | chunked ÷ one-shot | peak GB | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    fit = res["dense_fit"] if "dense_fit" in res else dense_fit(res["cells"])  # extrapolate() stores it
    fitted = fitted_dense_lengths(res["cells"], fit) if fit else set()

    def fitted_row(n: int) -> str:  # dense from the fit, at a length where it did not run: labelled so
        return (
            f"| {fmt_length(n)} | dense | one-shot | {dense_fit_at(fit, n):.3f} **{fit_word(fit, n)}** | — | 1.00 "
            f"| — | — | {fit['note']} |"
        )

    for i, c in enumerate(res["cells"]):
        if i and res["cells"][i - 1]["n"] != c["n"] and res["cells"][i - 1]["n"] in fitted:  # after its length
            lines.append(fitted_row(res["cells"][i - 1]["n"]))
        chunk = "one-shot" if not c["chunk"] else str(c["chunk"]) + (" (dynamic)" if c["cache"] == "dynamic" else "")
        if "ttft_s" not in c:
            note = c.get("error") or c.get("skipped", "")
            lines.append(f"| {c['label']} | {c['method']} | {chunk} | — | — | — | — | — | {note} |")
            continue
        notes = [f"run {c['run']}"] if "run" in c else []
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
        notes += [f"**{text}**" for text in compiled_texts(c)]  # the first call paid for it
        lines.append(
            f"| {c['label']} | {c['method']} | {chunk} | {c['ttft_s']:.3f} | {c['tokens_per_s']:.0f} | "
            f"{speedup_text(c, fit)} | {_f(c.get('chunked_over_one_shot'))} | {_f(c.get('peak_gb'), '.1f')} "
            f"| {'; '.join(notes)} |"
        )
    if res["cells"] and res["cells"][-1]["n"] in fitted:
        lines.append(fitted_row(res["cells"][-1]["n"]))
    lines += floor_markdown(res)
    lines += profile_markdown(res.get("profiles") or {})
    return "\n".join(lines) + "\n"


def run_lines(meta: dict) -> list[str]:
    """The warm-up and repetitions of one run (its meta, or one entry of a merged report's ``inputs``)."""
    warm = meta["warmup"]
    return [
        (
            f"Warm-up excluded: every method and chunk size ran once at {fmt_length(warm['length'])} tokens "
            f"({warm['seconds']:.1f} s) before the timed cells"
            if warm["done"]
            else "No warm-up: the first cell of each method includes compilation"
        )
        + f"; {meta['reps']} timed run(s) per cell, the fastest reported. TTFT = one forward with "
        "logits_to_keep=1 (or chunked_prefill) + the first token's argmax."
    ]


def merge_lines(meta: dict) -> list[str]:
    """What a merged report says of its merge: the runs' dates and hosts, the cells a later run replaced."""
    out = [
        f"Merged by `delta-attn bench e2e-report` from {len(meta['inputs'])} runs of the same model, device and Δ "
        "config (" + "; ".join(f"run {i}: {r['path']}, {r['date']}" for i, r in enumerate(meta["inputs"], 1)) + "). "
        "× vs dense: against the measured dense cell at the same length among the merged cells."
    ]
    out += [f"Note: {note}" for note in meta.get("merge_notes", [])]
    return out


def fit_word(fit: dict, n: int) -> str:
    """``extrapolated`` beyond the fitted lengths, ``interpolated`` between them."""
    return "interpolated" if min(fit["lengths"]) < n < max(fit["lengths"]) else "extrapolated"


def fitted_dense_lengths(cells: list[dict], fit: dict | None) -> set[int]:
    """The lengths whose dense row comes from the fit (:func:`dense_fit` of ``cells``): measured non-dense cells, no
    measured one-shot dense (and a positive time there: a fit with a negative N² term, of overhead-bound tiny runs,
    falls below 0 further out)."""
    measured = {c["n"] for c in cells if c["method"] == "dense" and not c["chunk"] and "ttft_s" in c}
    wanted = {c["n"] for c in cells if "ttft_s" in c and c["method"] != "dense"} - measured
    return {n for n in wanted if fit is not None and dense_fit_at(fit, n) > 0}


def speedup_text(cell: dict, fit: dict | None) -> str:
    """The × vs dense column: measured, or against the dense fit and labelled so."""
    if "speedup_vs_dense" in cell:
        return _f(cell["speedup_vs_dense"])
    if fit is not None and "speedup_vs_dense_fit" in cell:
        return f"{cell['speedup_vs_dense_fit']:.2f} ({fit_word(fit, cell['n'])})"
    return "—"


def floor_markdown(res: dict) -> list[str]:
    """The floor table (:func:`floor_curve`): dense's fit, Δ's share of dense's attention FLOPs, the floor, and the
    measured Δ cells against it."""
    if not res.get("floor"):
        return ["", f"No floor line: {res['floor_error']}."] if res.get("floor_error") else []
    fit = res["dense_fit"]
    deltas = {}
    for c in res["cells"]:
        if c["method"] == "delta" and "ttft_s" in c:
            deltas.setdefault(c["n"], []).append(c)
    lines = [
        "",
        f"Δ's floor: t = a·N + b·N² · (Δ attention FLOPs ÷ dense's), a = {fit['a']:.4g} s/token, "
        f"b = {fit['b']:.4g} s/token² from the dense fit ({fit['note']}); Δ's attention at the rate dense's SDPA "
        "reached in these runs, the rest of the forward as dense's (a lower line for Δ's kernels, not a measurement):",
        "",
        "| N | dense s (fit) | Δ ÷ dense attention FLOPs | floor s | Δ measured s | Δ ÷ floor |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in res["floor"]:
        n = row["n"]
        measured = deltas.get(n, [])
        lines.append(
            f"| {fmt_length(n)} | {row['dense_fit_s']:.3f} | {row['delta_flops'] / row['dense_flops']:.4f} | "
            f"{row['floor_s']:.3f} | "
            + (", ".join(f"{variant_name(variant(c))} {c['ttft_s']:.3f}" for c in measured) or "—")
            + " | "
            + (", ".join(f"{c['ttft_s'] / row['floor_s']:.2f}" for c in measured) or "—")
            + " |"
        )
    return lines


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


FIT_LABEL = "dense, N² fit of the measured lengths (extrapolated beyond them)"
FLOOR_LABEL = "Δ at dense's attention rate (floor)"


def plot(res: dict, path: str) -> None:
    """Log-log time to first token vs N per method/chunk/cache (left) and the speed-up over dense (right). With a
    dense fit (:func:`extrapolate`): the fit as a dashed line over the whole N range, Δ's floor line, and on the right
    the cells beyond the measured dense lengths against the fit (hollow markers, dashed, labelled extrapolated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
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
        ours = [c for c in res["cells"] if variant(c) == key]
        fitted = [(c["n"], c["speedup_vs_dense_fit"]) for c in ours if "speedup_vs_dense_fit" in c]
        if fitted:
            hollow = dict(style, linestyle="--", markerfacecolor="none")
            ax2.plot(*zip(*fitted), label=f"{label} vs dense fit (extrapolated)", **hollow)
    ns = sorted({c["n"] for c in res["cells"]})
    fit = res.get("dense_fit")
    if fit and ns:
        xs = curve_lengths(ns)
        ax1.plot(xs, [dense_fit_at(fit, n) for n in xs], color="C0", linestyle="--", linewidth=1, label=FIT_LABEL)
    if res.get("floor"):
        xs = curve_lengths(ns)
        floor = floor_curve(fit, res["meta"], xs)
        floor_style = dict(color="C2", linestyle="-.", linewidth=1.2)
        ax1.plot(xs, floor, label=FLOOR_LABEL, **floor_style)
        ceiling = [dense_fit_at(fit, n) / t for n, t in zip(xs, floor)]
        ax2.plot(xs, ceiling, label="dense fit ÷ Δ floor (extrapolated beyond the dense lengths)", **floor_style)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [fmt_length(n) for n in ns])
        ax.set_xlabel("prompt tokens N")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    ax1.set_yscale("log")
    ax1.set_ylabel("time to first token (s)")
    per_length = res["meta"].get("dense_backend_choice") == "auto"
    meta = res["meta"]
    how = ["fastest backend at each N"] if per_length else []
    how += ["merged cells"] if meta.get("inputs") else ["same run"]
    ax2.set_ylabel(f"speed-up over dense SDPA\n({', '.join(how)})")
    runs = f", {len(meta['inputs'])} runs merged" if meta.get("inputs") else ""
    model = f"{meta['model_shape']} ({meta['layers']} layers), {meta['dtype']}"
    fig.suptitle(
        f"end-to-end prefill, {model} — {meta['device']}{runs}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(res: dict, out: str, strict: bool = False) -> str:
    """results.json, results.md and plot.png of ``res`` in ``out``, with the dense fit and Δ's floor added
    (:func:`extrapolate`; ``strict``: a results.json without what the floor needs raises instead of saying so)."""
    extrapolate(res, strict=strict)
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
