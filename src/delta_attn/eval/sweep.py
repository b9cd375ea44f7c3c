"""Where Δ wins: a (window, γ) map of two methods (default Δ and recompute) on RULER tasks and continuation ppl.

A **cell** is one (window, γ) pair; it runs the compared methods (``--methods``, default ``delta,recompute``)
with that window and γ. Besides the cells, ``sparse`` runs once per window and ``dense`` once: the
references every cell is read against. Each run is a :class:`~delta_attn.methods.Method` named
``SPEC@wW/gG`` (``sparse@wW``, ``dense@sweep``) whose config carries the window and γ, so records resume
and report like any other (:mod:`delta_attn.eval.records`); other runs' records (plain method names) are
never counted as sweep cells, even when read from the same ``--resume-from`` folder.

**Order** (a time-limited run gets the most informative part first): ``dense``, then the row of
``first_window`` (256 by default: issue 8's 8K setting, sink 64 + window 256) — its ``sparse`` and then
every γ of it in the order given — then the other windows, nearest to ``first_window`` first (in log
scale), each row the same way. Within a cell, RULER runs before continuation perplexity.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..methods import Method, parse_method
from .records import config_of

DEFAULT_FIRST_WINDOW = 256


@dataclass(frozen=True)
class Cell:
    """One unit of sweep work: ``methods`` at (window, gamma); window/gamma None for the references."""

    window: int | None
    gamma: int | None
    methods: tuple[Method, ...]

    @property
    def name(self) -> str:
        if self.window is None:
            return "dense"
        return f"w{self.window}" + ("" if self.gamma is None else f"/g{self.gamma}")


def sweep_cells(
    specs: Sequence[str],
    windows: Sequence[int],
    gammas: Sequence[int],
    defaults: dict,
    first_window: int = DEFAULT_FIRST_WINDOW,
) -> list[Cell]:
    """Every cell of the sweep in run order (see the module docstring); bad specs raise ValueError."""
    windows, gammas = list(dict.fromkeys(windows)), list(dict.fromkeys(gammas))
    order = sorted(windows, key=lambda w: (w != first_window, abs(math.log2(w / first_window)), w))
    # "dense@sweep", not "dense": a sweep's records never mix with (or resume from) other runs' method names
    cells = [Cell(None, None, (Method("dense@sweep", None),))]
    for w in order:
        sparse = parse_method("sparse", {**defaults, "window": w})
        cells.append(Cell(w, None, (Method(f"sparse@w{w}", sparse.config),)))
        for g in gammas:
            ms = []
            for spec in specs:
                m = parse_method(spec, {**defaults, "window": w, "gamma": g})
                ms.append(Method(f"{spec}@w{w}/g{g}", m.config))
            cells.append(Cell(w, g, tuple(ms)))
    return cells


# ---------------------------------------------------------------------------------------------
# results


def _root(name: str) -> str:
    return name.partition("@")[0]


@dataclass
class SweepData:
    """Sweep records by (spec root, window, γ): RULER task means and continuation perplexities."""

    ruler: dict = field(default_factory=dict)  # (root, w, g) -> {task: [scores]}
    cppl: dict = field(default_factory=dict)  # (root, w, g, M) -> {doc: mean NLL per token}
    length: set = field(default_factory=set)
    runs: list = field(default_factory=list)

    @classmethod
    def from_records(cls, records: Iterable[dict], length: int | None = None) -> SweepData:
        """The sweep records (method names with ``@``) at ``length`` (default: the longest present); a record
        read twice (an output folder also given to ``--resume-from``) counts once."""
        records = list(records)
        runs = [r for r in records if r.get("record") == "run" and r.get("kind") == "sweep"]
        by_id = {r["run_id"]: r for r in records if r.get("record") == "run" and "run_id" in r}
        ours = [r for r in records if r.get("record") in ("sample", "cppl") and "@" in str(r.get("method", ""))]
        if length is None:
            length = max((int(r["length"]) for r in ours), default=None)
        d = cls(runs=runs)
        ruler: dict = defaultdict(lambda: defaultdict(dict))
        cppl: dict = defaultdict(dict)
        for r in ours:
            if int(r["length"]) != length:
                continue
            cfg = (config_of(r, by_id) or {}).get("method", {})
            key = (_root(r["method"]), cfg.get("window"), cfg.get("gamma"))
            d.length.add(length)
            if r["record"] == "sample":
                ruler[key][r["task"]][(int(r["index"]), int(r.get("seed", 0)))] = float(r["score"])
            else:
                cppl[(*key, int(r["cont"]))][r["doc"]] = float(r["nll_sum"]) / int(r["tokens"])
        d.ruler = {k: {t: list(v.values()) for t, v in per.items()} for k, per in ruler.items()}
        d.cppl = dict(cppl)
        return d

    @property
    def windows(self) -> list[int]:
        return sorted({k[1] for k in [*self.ruler, *self.cppl] if k[1] is not None and k[2] is not None})

    @property
    def gammas(self) -> list[int]:
        return sorted({k[2] for k in [*self.ruler, *self.cppl] if k[2] is not None})

    @property
    def roots(self) -> list[str]:
        """The compared specs (not the references), in first-seen order."""
        keys = [*self.ruler, *self.cppl]
        return list(dict.fromkeys(k[0] for k in keys if k[2] is not None))

    @property
    def conts(self) -> list[int]:
        return sorted({k[3] for k in self.cppl})

    @property
    def tasks(self) -> list[str]:
        return sorted({t for v in self.ruler.values() for t in v})

    def score(self, root: str, w, g) -> float | None:
        """Task-averaged RULER score × 100 (None unless every task has samples)."""
        per = self.ruler.get((root, w, g))
        if not per or any(t not in per for t in self.tasks):
            return None
        return 100.0 * statistics.fmean(statistics.fmean(per[t]) for t in self.tasks)

    def ppl(self, root: str, w, g, cont: int) -> float | None:
        docs = self.cppl.get((root, w, g, cont))
        return math.exp(statistics.fmean(docs.values())) if docs else None

    def measures(self) -> list[tuple[str, str, bool]]:
        """(measure id, title, higher is better) for every measure with data."""
        out = []
        if self.ruler:
            out.append(("ruler", f"RULER score × 100, average of {len(self.tasks)} tasks", True))
        out += [(f"cppl{m}", f"continuation perplexity, last {m} tokens", False) for m in self.conts]
        return out

    def value(self, measure: str, root: str, w, g) -> float | None:
        if measure == "ruler":
            return self.score(root, w, g)
        return self.ppl(root, w, g, int(measure.removeprefix("cppl")))

    def grid(self, measure: str, a: str, b: str) -> list[list[float | None]]:
        """``a − b`` per (window row, γ column)."""
        rows = []
        for w in self.windows:
            row = []
            for g in self.gammas:
                va, vb = self.value(measure, a, w, g), self.value(measure, b, w, g)
                row.append(None if va is None or vb is None else va - vb)
            rows.append(row)
        return rows


def _f(x: float | None, nd: int) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def sweep_markdown(d: SweepData, images: dict[str, str] | None = None) -> str:
    """``sweep.md``: per measure a window × γ table of ``A / B (A − B)``, the references, the heat map link."""
    if len(d.roots) < 1:
        return "_no sweep results._\n"
    a, b = (d.roots + [None])[:2]
    lengths = ", ".join(str(L) for L in sorted(d.length))
    n_samples = sorted({len(v) for per in d.ruler.values() for v in per.values()})
    n_docs = sorted({len(v) for v in d.cppl.values()})
    out = [
        f"Cells: window × γ at {lengths} tokens; compared: `{a}`" + (f" vs `{b}`" if b else "") + "; references: "
        "`sparse` per window, `dense` once. "
        + (f"RULER tasks: {', '.join(d.tasks)}; samples per task and cell: {n_samples}. " if d.tasks else "")
        + (f"Continuation perplexity: documents per cell: {n_docs}." if n_docs else "")
        + "\n"
    ]
    for measure, title, higher in d.measures():
        nd = 1 if measure == "ruler" else 3
        better = "higher" if higher else "lower"
        out.append(f"**{title}** ({better} is better; cells: `{a}` / `{b}` (difference))\n")
        out.append("| window | " + " | ".join(f"γ={g}" for g in d.gammas) + " | sparse |")
        out.append("|" + "---|" * (len(d.gammas) + 2))
        for w in d.windows:
            cells = []
            for g in d.gammas:
                va = d.value(measure, a, w, g)
                vb = d.value(measure, b, w, g) if b else None
                diff = None if va is None or vb is None else va - vb
                cells.append(f"{_f(va, nd)} / {_f(vb, nd)} ({'–' if diff is None else f'{diff:+.{nd}f}'})")
            out.append(f"| {w} | " + " | ".join(cells) + f" | {_f(d.value(measure, 'sparse', w, None), nd)} |")
        out.append(f"\ndense: {_f(d.value(measure, 'dense', None, None), nd)}\n")
        if images and measure in images:
            out.append(f"![{title}: {a} − {b}]({images[measure]})\n")
    return "\n".join(out)
