"""Result records as data and as Markdown tables (no plotting, no files): RULER scores, perplexity,
significance, targets, the analysis.

Comparisons are paired: a method pair is compared on the samples both have (same task, length, index,
seed). Averages are over tasks (each task weighted equally, RULER's convention), scores × 100.

Methods are labelled by their name. If records of one name were computed with different settings
(their ``config``, see :mod:`delta_attn.eval.records`), each setting gets its own label, the name plus
what differs (``delta (window 64)``, ``delta (window 2000)``), so two settings are never averaged into
one row.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from .records import config_of, flatten
from .ruler import DISPLAY_NAMES, QA_TASKS, TASK_NAMES

TARGET_FRACTION = 0.90  # Δ recovers >= 90% of dense's average at RulerData.headline_length
TARGET_GAIN = 20.0  # Δ − sparse >= +20 points (the 16K–32K target; the paper reports +36 at 131K on an 8B model)
ALPHA = 0.05

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


def _fmt(x: float | None, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{nd}f}"


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    s = "<0.0001" if p < 1e-4 else f"{p:.4f}"
    return f"**{s}**" if p < ALPHA else s


def len_name(L: int) -> str:
    return f"{L // 1024}K" if L % 1024 == 0 else str(L)


def _order(methods: Iterable[str], preferred: Sequence[str]) -> list[str]:
    ms = list(dict.fromkeys(methods))
    return [m for m in preferred if m in ms] + sorted(m for m in ms if m not in preferred)


def ordered_methods(methods: Iterable[str]) -> list[str]:
    """Method names in the tables' order: the :data:`PREFERRED` ones first, then the others sorted."""
    return _order(methods, PREFERRED)


# ---------------------------------------------------------------------------------------------
# method labels


def method_labels(records: Sequence[dict], runs: dict[str, dict]) -> tuple[list[str], dict[str, dict | None]]:
    """(a label per record, config per label): the method name, plus what differs when one name has several
    configs among ``records``. The one config that sets none of the differing fields (the unscaled model beside
    a ``rope_scaling`` run, say) keeps the plain name, so that the default setting's rows, comparisons and
    targets read as they do without the extra runs."""
    configs = [config_of(r, runs) for r in records]
    seen: dict[str, dict[str, dict | None]] = defaultdict(dict)  # name -> config json -> config
    keys = []
    for r, c in zip(records, configs):
        key = json.dumps(c, sort_keys=True)
        seen[r["method"]][key] = c
        keys.append(key)
    label_of: dict[tuple[str, str], str] = {}
    by_label: dict[str, dict | None] = {}
    for name, variants in seen.items():
        flats = {k: flatten(c) if c is not None else {} for k, c in variants.items()}
        varying = sorted({f for fl in flats.values() for f in fl if len({str(x.get(f)) for x in flats.values()}) > 1})
        plain = [k for k, c in variants.items() if c is not None and not any(f in flats[k] for f in varying)]
        for k, c in variants.items():
            label = name
            if len(variants) > 1 and plain != [k]:
                shown = [f"{f.removeprefix('method.')} {flats[k].get(f, '–')}" for f in varying]
                label = f"{name} ({', '.join(shown) or 'no recorded config'})"
            label_of[name, k] = label
            by_label[label] = c
    return [label_of[r["method"], k] for r, k in zip(records, keys)], by_label


# ---------------------------------------------------------------------------------------------
# RULER


@dataclass
class RulerData:
    """Sample scores indexed by (task, length, method label) -> {(index, seed): score}."""

    scores: dict
    runs: list
    records: list
    configs: dict = field(default_factory=dict)  # method label -> config (None when unknown)

    @classmethod
    def from_records(cls, records: Iterable[dict]) -> RulerData:
        records = list(records)
        runs = [r for r in records if r.get("record") == "run"]
        samples = [r for r in records if r.get("record") == "sample"]
        labels, configs = method_labels(samples, {r["run_id"]: r for r in runs if "run_id" in r})
        scores: dict = defaultdict(dict)
        for r, label in zip(samples, labels):
            key = (int(r["index"]), int(r.get("seed", 0)))
            scores[(r["task"], int(r["length"]), label)][key] = float(r["score"])
        return cls(dict(scores), runs, samples, configs)

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

    def headline_length(self, methods: Sequence[str] = ("dense", "sparse", "recompute", "delta")) -> int:
        """The longest length at which each of ``methods`` that has results at all has a task average: the
        length of the targets, the per-task plot and the γ ablation. (An exploratory longer length, run with a
        few tasks or methods, would otherwise leave them blank.)"""
        present = [m for m in methods if m in self.methods]
        complete = [n for n in self.lengths if present and all(self.avg(n, m) is not None for m in present)]
        return max(complete or self.lengths)

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

    def sample_counts(self) -> list[int]:
        """The distinct numbers of samples per (task, length, method) cell."""
        return sorted({self.count(t, L, m) for t in self.tasks for L in self.lengths for m in self.methods} - {0})


def average_table(d: RulerData, methods: Sequence[str] | None = None, dense: str = "dense") -> str:
    methods = list(methods or d.methods)
    head = "| method | " + " | ".join(len_name(L) for L in d.lengths) + " | avg |"
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
        ("delta_g16", "recompute"),
        ("recompute", "sparse"),
        ("block+delta", "block"),
        ("vertical_slash+delta", "vertical_slash"),
        ("vs+delta", "vs"),
    ]
    return [(a, b) for a, b in cand if a in methods and b in methods]


def variant_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs that decide a recommendation among Δ's variants (pooled tests only, no per-task rows).

    Methods group by their base prefix (``streaming_w512_s64+delta`` is in the group ``streaming_w512_s64+``;
    unprefixed names in the group "") and by the setting :func:`method_labels` appends (``delta (rope_scaling
    yarn:4:32768)`` is in the group of the suffix `` (rope_scaling yarn:4:32768)``): only methods run alike are
    compared. In each group: Δ against sparse and recompute where :func:`default_pairs` does not already test
    them, then every other ``delta_*`` variant V as "Δ > V" and "V > recompute" — is the paper's λ = 1 better
    than V, and does V beat recompute.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for m in methods:
        label, paren, setting = m.partition(" (")
        prefix, _, core = label.rpartition("+")
        groups.setdefault((prefix + "+" if prefix else "", paren + setting), []).append(core)
    done = set(default_pairs(methods))
    out: list[tuple[str, str]] = []
    for (prefix, suffix), cores in groups.items():
        name = {c: prefix + c + suffix for c in cores}
        if "delta" not in name:
            continue
        cand = [("delta", "sparse"), ("delta", "recompute"), ("recompute", "sparse")]
        for v in sorted(c for c in cores if c.startswith("delta_") and c != "delta_g16"):
            cand += [("delta", v), (v, "recompute")]
        for a, b in cand:
            pair = (name.get(a), name.get(b))
            if None not in pair and pair not in done:
                out.append(pair)
    return out


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
        "| A > B | tasks | " + " | ".join(len_name(L) for L in d.lengths) + " |",
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
        return "_no RULER results._\n"
    L = length or d.headline_length((dense, sparse, recompute, delta))
    rows = ["| target (at " + len_name(L) + ") | value | met? |", "|---|---|---|"]
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


def methods_legend(configs: dict[str, dict | None], labels: Sequence[str]) -> str:
    """Each method label with its settings, from the records' configs."""
    from ..methods import describe_config

    lines = []
    for m in labels:
        c = configs.get(m)
        lines.append(f"- `{m}`: " + (describe_config(c["method"]) if c else "(settings not recorded)"))
    return "\n".join(lines) + "\n"


def ruler_summary(d: RulerData, *, pairs: Sequence[tuple[str, str]] | None = None, n_resamples: int = 9999) -> str:
    """A Markdown summary of one run directory (averages, per-task tables, significance)."""
    if not d.scores:
        return "_no RULER samples yet._\n"
    parts = ["## Average over tasks\n", average_table(d)]
    for L in d.lengths:
        parts += [f"\n## {len_name(L)}\n", task_table(d, L)]
    pairs = default_pairs(d.methods) if pairs is None else pairs
    if pairs:
        parts += ["\n## Paired permutation tests\n", significance_table(d, pairs, n_resamples=n_resamples)]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# perplexity


def labelled_records(records: Iterable[dict], kind: str) -> tuple[list, list, list, dict]:
    """(the ``kind`` records, their method labels, the run headers, config per label)."""
    records = list(records)
    runs = [r for r in records if r.get("record") == "run"]
    recs = [r for r in records if r.get("record") == kind]
    labels, configs = method_labels(recs, {r["run_id"]: r for r in runs if "run_id" in r})
    return recs, labels, runs, configs


@dataclass
class LabelledRecords:
    """Records of one kind (``KIND``), each with its method label (see :func:`method_labels`), their run ids and
    the method configs."""

    KIND: ClassVar[str] = ""
    records: list
    labels: list
    runs: list
    configs: dict = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: Iterable[dict]):
        return cls(*labelled_records(records, cls.KIND))


@dataclass
class PplData(LabelledRecords):
    """Perplexity records, each with its method label (see :func:`method_labels`)."""

    KIND: ClassVar[str] = "ppl"

    @property
    def lengths(self) -> list[int]:
        return sorted({int(r["length"]) for r in self.records})

    def at(self, length: int) -> list[tuple[str, dict]]:
        """(label, record) of every record at ``length``."""
        return [(m, r) for m, r in zip(self.labels, self.records) if int(r["length"]) == length]

    def common_docs(self, length: int) -> tuple[list[str], set]:
        """(method labels in table order, the documents every one of them has) at ``length``."""
        rows = self.at(length)
        methods = _order((m for m, _ in rows), PREFERRED)
        docs = [{r["doc"] for m2, r in rows if m2 == m} for m in methods]
        return methods, set.intersection(*docs) if docs else set()

    def by_range(self, length: int, method: str) -> tuple[list[float], list[int], bool]:
        """(NLL sums, token counts) per position range over the common documents, and causality."""
        _, common = self.common_docs(length)
        rows = [r for m, r in self.at(length) if m == method and r["doc"] in common]
        n = len(rows[0]["edges"]) - 1 if rows else 0
        sums, toks = [0.0] * n, [0] * n
        for r in rows:
            for i, (s, t) in enumerate(zip(r["nll_sum"], r["tokens"])):
                sums[i] += s
                toks[i] += t
        return sums, toks, all(r.get("causal", True) for r in rows)


def ppl_table(data: PplData) -> str:
    if not data.records:
        return "_no perplexity results._\n"
    out = []
    for L in data.lengths:
        methods, common = data.common_docs(L)
        edges = next(r for _, r in data.at(L))["edges"]
        ranges = [f"{len_name(a) if a else '0'}–{len_name(b)}" for a, b in zip(edges[:-1], edges[1:])]
        out.append(f"**Context {len_name(L)}** ({len(common)} documents, the same for every method)\n")
        out.append("| method | " + " | ".join(ranges) + " | all |")
        out.append("|" + "---|" * (len(ranges) + 2))
        for m in methods:
            sums, toks, causal = data.by_range(L, m)
            cells = [_fmt(math.exp(s / t), 2) if t else "–" for s, t in zip(sums, toks)]
            tot = _fmt(math.exp(sum(sums) / sum(toks)), 2) if sum(toks) else "–"
            name = m if causal else f"{m} ⚠ non-causal (sees later tokens; not a valid LM score)"
            out.append(f"| {name} | " + " | ".join(cells) + f" | {tot} |")
        out.append("")
    return (
        "\n".join(out) + "\n(perplexity = exp(mean next-token NLL) over the tokens whose position falls in the range)\n"
    )


def ppl_by_method(data: PplData, length: int) -> dict:
    """method label -> overall perplexity at ``length`` over the documents every method has."""
    methods, _ = data.common_docs(length)
    out = {}
    for m in methods:
        sums, toks, _ = data.by_range(length, m)
        if sum(toks):
            out[m] = math.exp(sum(sums) / sum(toks))
    return out


# ---------------------------------------------------------------------------------------------
# continuation perplexity


@dataclass
class CpplData(LabelledRecords):
    """Continuation-perplexity records (``"cppl"``), each with its method label (see :func:`method_labels`)."""

    KIND: ClassVar[str] = "cppl"

    @property
    def cells(self) -> list[tuple[int, int]]:
        """(length L, continuation M) pairs present, sorted."""
        return sorted({(int(r["length"]), int(r["cont"])) for r in self.records})

    def per_doc(self, length: int, cont: int) -> dict[str, dict[str, float]]:
        """method label -> {document: mean NLL per scored token} at (L, M)."""
        out: dict[str, dict[str, float]] = defaultdict(dict)
        for m, r in zip(self.labels, self.records):
            if int(r["length"]) == length and int(r["cont"]) == cont:
                out[m][r["doc"]] = float(r["nll_sum"]) / int(r["tokens"])
        return dict(out)

    def causal(self, method: str) -> bool:
        return all(r.get("causal", True) for m, r in zip(self.labels, self.records) if m == method)

    def ppl(self, length: int, cont: int) -> tuple[dict[str, float], int]:
        """(method label -> perplexity over the documents every method has, number of those documents)."""
        docs = self.per_doc(length, cont)
        common = set.intersection(*(set(d) for d in docs.values())) if docs else set()
        # every window scores M tokens, so the pooled perplexity is exp of the mean per-document NLL
        return {m: math.exp(statistics.fmean(d[k] for k in common)) for m, d in docs.items() if common}, len(common)


def cppl_table(data: CpplData, *, ref: str = "delta", dense: str = "dense", n_resamples: int = 9999) -> str:
    """Per (L, M): continuation perplexity per method, ratio to dense, and a paired test per document vs ``ref``."""
    from .stats import paired_permutation_test

    if not data.records:
        return "_no continuation-perplexity results._\n"
    out = []
    for L, M in data.cells:
        ppl, n_docs = data.ppl(L, M)
        docs = data.per_doc(L, M)
        out.append(
            f"**Context {len_name(L)}, last M = {M} tokens scored** ({n_docs} documents, the same for every method)\n"
        )
        out.append(f"| method | ppl | ÷ {dense} | NLL/token − {ref} (two-sided p, n) |")
        out.append("|---|---|---|---|")
        for m in _order(ppl, PREFERRED):
            ratio = _fmt(ppl[m] / ppl[dense], 3) if dense in ppl else "–"
            test = "–"
            if ref in docs and m != ref:
                keys = sorted(set(docs[m]) & set(docs[ref]))
                if len(keys) == 1:  # a permutation test needs two pairs at least
                    test = f"{docs[m][keys[0]] - docs[ref][keys[0]]:+.4f} (n 1)"
                elif keys:
                    r = paired_permutation_test(
                        [docs[m][k] for k in keys],
                        [docs[ref][k] for k in keys],
                        n_resamples=n_resamples,
                        alternative="two-sided",
                    )
                    test = f"{r.diff:+.4f} (p {_p(r.p_value)}, n {r.n})"
            name = m if data.causal(m) else f"{m} ⚠ non-causal"
            out.append(f"| {name} | {_fmt(ppl[m], 3)} | {ratio} | {test} |")
        out.append("")
    return "\n".join(out) + (
        "\n(each window's first L − M tokens are prefilled with the method as one prompt; its last M tokens are "
        "scored teacher-forced with dense attention against that cache, as decoding would read it. ppl = "
        "exp(mean NLL per token); the paired permutation test compares each method's per-document mean NLL "
        f"with {ref}'s: a negative difference means lower NLL than {ref}; p < {ALPHA} in bold)\n"
    )


# ---------------------------------------------------------------------------------------------
# analysis


def analysis_markdown(an: dict) -> str:
    if not an:
        return "_no analysis results._\n"
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
