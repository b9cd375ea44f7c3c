"""``RESULTS.md``: assembled from result files, the methodology template, and hand-written notes.

Where each part of the document comes from:

* **Generated from the records**: the title's model, the setup (model, dtype, devices, methods with
  their settings, tasks, lengths, sample counts, prompt reserve, perplexity documents, analysis
  prompts), every table and plot, the list of runs and the commands that started them.
* **The template** (``templates/results.md``): how things are measured, i.e. what the code does; it
  states no run settings (it has placeholders for the few numbers it needs).
* **Hand-written notes** (``--notes``): interpretation. Each notes file names the runs it describes
  in its first line, ``<!-- runs: ID ID ... -->``; the document says so above the notes, and a notes
  file naming a run that is not among the inputs is refused (its prose would describe other data).

**One section per model.** The records are split by model first (:mod:`delta_attn.eval.model_groups`):
two models' records share task, length and method names, and pooling them would average two models
into one cell. With one model the document is that model's alone; with several, a "Models" overview
comes first and then each model's document under its own heading (headings one level down, plots in a
subfolder per model); a notes file goes to the section of the model whose runs it names, and one
naming runs of two models is refused.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from . import tables
from .model_groups import ModelGroup, model_name, slug, split_by_model
from .records import Records, open_text

if TYPE_CHECKING:  # the sweep module imports the methods; the report imports it only when it runs
    from .sweep import SweepData

_RUNS_LINE = re.compile(r"^\s*<!--\s*runs:\s*([\w\s,-]+?)\s*-->\s*$")


class NotesError(ValueError):
    """A notes file without its runs line, or about runs that are not among the inputs."""


@dataclass
class Inputs:
    """Result files found under the ``--inputs`` paths, by kind."""

    ruler: list[Path] = field(default_factory=list)
    ppl: list[Path] = field(default_factory=list)
    analysis: list[Path] = field(default_factory=list)
    sweep: list[Path] = field(default_factory=list)
    needle: list[Path] = field(default_factory=list)  # needle*.json of `eval needle`

    @classmethod
    def find(cls, paths: Sequence[Path]) -> Inputs:
        found = cls()
        for p in map(Path, paths):
            for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
                name = f.name.removesuffix(".gz")
                if name.startswith("ruler") and name.endswith(".jsonl"):
                    found.ruler.append(f)
                elif name.startswith("ppl") and name.endswith(".jsonl"):
                    found.ppl.append(f)
                elif name.startswith("analysis") and name.endswith(".json"):
                    found.analysis.append(f)
                elif name.startswith("sweep") and name.endswith(".jsonl"):
                    found.sweep.append(f)
                elif name.startswith("needle") and name.endswith(".json"):
                    found.needle.append(f)
        return found

    @property
    def count(self) -> int:
        return len(self.ruler) + len(self.ppl) + len(self.analysis) + len(self.needle) + len(self.sweep)


@dataclass(frozen=True)
class Note:
    """A hand-written notes file and the run ids it describes."""

    path: Path
    runs: tuple[str, ...]
    text: str


def read_note(path: Path, text: str) -> Note:
    """Parse a notes file; :class:`NotesError` unless its first line is ``<!-- runs: ID ID ... -->``."""
    first, _, rest = text.partition("\n")
    m = _RUNS_LINE.match(first)
    if not m:
        raise NotesError(
            f"{path}: hand-written notes must name the runs they describe in their first line, "
            "e.g. <!-- runs: b37308580d7a c2d00ac48182 -->"
        )
    return Note(path, tuple(re.split(r"[\s,]+", m.group(1).strip())), rest.strip())


def load_json_files(paths: Sequence[Path]) -> list[dict]:
    """The contents of JSON result files (analysis, needle), in the order given."""
    out = []
    for p in paths:
        with open_text(Path(p)) as fh:
            out.append(json.load(fh))
    return out


def all_runs(ruler: tables.RulerData, ppl: tables.PplData, an: dict, sweep_runs: Sequence[dict] = ()) -> list[dict]:
    runs = ruler.runs + ppl.runs + list(sweep_runs)
    if an.get("meta", {}).get("run"):
        runs.append(an["meta"]["run"])
    return runs


# ---------------------------------------------------------------------------------------------
# generated prose


def _one_or_list(values) -> str:
    vals = sorted({str(v) for v in values if v is not None})
    return ", ".join(vals) if vals else "not recorded"


def _device(run: dict) -> str | None:
    return f"{run['device_name']} ({run.get('device', '?')})" if run.get("device_name") else None


def setup_section(
    d: tables.RulerData, ppl: tables.PplData, an: dict, runs: Sequence[dict], cppl: tables.CpplData | None = None
) -> str:
    """What was run, entirely from the records: model, dtype, hardware, methods, tasks, lengths, samples."""
    configs = [c for c in (*d.configs.values(), *ppl.configs.values()) if c]
    layers = _one_or_list(r.get("model_layers") for r in runs)
    ids = _one_or_list(r.get("model_id") for r in runs)
    lines = [
        "## Setup (from the run records)\n",
        f"- **Model**: {model_name(runs)} ({layers} layers; model file {ids}), "
        f"dtype {_one_or_list([c['dtype'] for c in configs] or [r.get('dtype') for r in runs])}, "
        f"on {_one_or_list(_device(r) for r in runs)}; greedy decoding, "
        "dense over the full cache for every method.",
    ]
    ropes = sorted({str(c.get("rope_scaling", "none")) for c in configs})
    if ropes != ["none"]:  # a setting of the model, not of a method: say it once, above the method legend
        lines.append(
            f"- **Rope scaling**: {', '.join(ropes)} (`--rope-scaling`; rows run past the model's trained context "
            "with it are exploratory; a method run both ways is labelled with its scaling where it was scaled, and "
            "keeps its plain name unscaled)."
        )
    ppl_labels = [m for L in ppl.lengths for m in ppl.common_docs(L)[0]]
    if cppl is not None:
        ppl_labels += [m for L, M in cppl.cells for m in cppl.ppl(L, M)[0]]
    labels = list(dict.fromkeys([*d.methods, *ppl_labels]))
    if labels:
        lines.append("- **Methods**:")
        legend = tables.methods_legend({**ppl.configs, **(cppl.configs if cppl else {}), **d.configs}, labels)
        lines += ["  " + ln for ln in legend.strip().splitlines()]
    if d.scores:
        reserves = {c["prompt"].get("reserve") for c in d.configs.values() if c}
        seeds = {c.get("seed") for c in d.configs.values() if c}
        lines.append(
            f"- **RULER-style tasks**: {len(d.tasks)} task(s) ({', '.join(d.tasks)}) × lengths "
            f"{', '.join(tables.len_name(L) for L in d.lengths)}; prompts of exactly L − "
            f"{_one_or_list(reserves)} tokens, prompt seed {_one_or_list(seeds)}; samples per (task, length, "
            f"method): {', '.join(map(str, d.sample_counts()))} ({len(d.records)} generations)."
        )
    for L in ppl.lengths:
        methods, common = ppl.common_docs(L)
        lines.append(
            f"- **Perplexity**: {len(common)} documents of {tables.len_name(L)} tokens, {len(methods)} methods."
        )
    if cppl is not None:
        for L, M in cppl.cells:
            ppls, n_docs = cppl.ppl(L, M)
            lines.append(
                f"- **Continuation perplexity**: {n_docs} documents of {tables.len_name(L)} tokens, last {M} "
                f"scored, {len(ppls)} methods."
            )
    meta = an.get("meta")
    if meta:
        lines.append(
            f"- **Analysis**: {meta.get('samples', '?')} × `{meta.get('task', '?')}` prompts of "
            f"{meta.get('prompt_tokens', '?')} tokens, dtype {str(meta.get('dtype', '?')).replace('torch.', '')}."
        )
    return "\n".join(lines) + "\n"


def methodology(n_resamples: int) -> str:
    template = resources.files("delta_attn.eval").joinpath("templates/results.md").read_text(encoding="utf-8")
    return template.format(
        resamples=n_resamples,
        target_fraction=f"{tables.TARGET_FRACTION:.0%}",
        target_gain=f"{tables.TARGET_GAIN:.0f}",
        alpha=tables.ALPHA,
    )


def runs_section(runs: Sequence[dict]) -> str:
    if not runs:
        return "- _no run records_\n"
    lines = []
    for r in runs:
        lines.append(
            f"- `{r.get('run_id')}` {r.get('date', '?')}: {r.get('device_name', '?')} ({r.get('device', '?')}, "
            f"{r.get('dtype', '?')}), torch {r.get('torch', '?')}, transformers {r.get('transformers', '?')}"
            f"\n  `{command_of(r)}`"
        )
    return "\n".join(lines) + "\n"


def command_of(run: dict) -> str:
    """The command line that started ``run``, as ``delta-attn ...`` (the recorded argv[0] is a path)."""
    return shlex.join(["delta-attn", *run.get("argv", [])[1:]])


def reproduce_section(runs: Sequence[dict], report_command: str) -> str:
    cmds = "\n".join(dict.fromkeys(command_of(r) for r in runs))
    return (
        "## Reproduce\n\nThe runs were started with these commands (from their run records; paths as on the "
        f"machine that ran them, options such as --time-limit as used there):\n\n```bash\n{cmds}\n```\n\n"
        f"This file is then regenerated with:\n\n```bash\n{report_command}\n```\n"
    )


def notes_section(note: Note) -> str:
    return (
        f"> Hand-written notes on runs {', '.join(f'`{r}`' for r in note.runs)} (`{note.path.as_posix()}`), "
        "not generated from the data.\n\n" + note.text + "\n"
    )


# ---------------------------------------------------------------------------------------------
# one model's results


@dataclass
class ModelResults:
    """One model's results (see :mod:`delta_attn.eval.model_groups`), read as the document's tables read them."""

    variants: tables.RulerData  # every RULER record, the prompt-format variants (task@format) included
    ruler: tables.RulerData  # the default format's records: variants get their own section, not a place in averages
    ppl: tables.PplData
    cppl: tables.CpplData
    sweep: SweepData
    analysis: dict  # the analysis files merged, in input order
    needles: list[dict]

    @classmethod
    def from_group(cls, group: ModelGroup) -> ModelResults:
        from .sweep import SweepData

        analysis: dict = {}
        for result in group.analysis:
            analysis.update(result)
        return cls(
            variants=tables.RulerData.from_records(group.ruler),
            ruler=tables.RulerData.from_records(r for r in group.ruler if "@" not in str(r.get("task", ""))),
            ppl=tables.PplData.from_records(group.ppl),
            cppl=tables.CpplData.from_records(group.ppl),
            sweep=SweepData.from_records(group.sweep),
            analysis=analysis,
            needles=list(group.needles),
        )

    @property
    def runs(self) -> list[dict]:
        needle_runs = [n["meta"]["run"] for n in self.needles if n.get("meta", {}).get("run")]
        return all_runs(self.variants, self.ppl, self.analysis, self.sweep.runs) + needle_runs


def model_sections(
    m: ModelResults,
    *,
    notes: Sequence[Note],
    plots_dir: Path | None,
    rel_to: Path | None,
    n_resamples: int,
    command: str,
) -> tuple[str, list[str]]:
    """(the setup section, every section after the methodology) of one model's results; plots go to ``plots_dir``."""
    from . import plots
    from .format_report import format_section
    from .sweep import sweep_markdown

    d, ppl, cppl, sweep, an, runs = m.ruler, m.ppl, m.cppl, m.sweep, m.analysis, m.runs
    img = {}
    if plots_dir is not None:
        plots_dir.mkdir(parents=True, exist_ok=True)
        for name, fn in (
            ("ruler.png", lambda p: plots.plot_ruler(d, p, model=model_name(d.runs))),
            ("ppl.png", lambda p: plots.plot_ppl(ppl, p)),
            ("analysis.png", lambda p: plots.plot_analysis(an, p)),
            ("sweep.png", lambda p: plots.plot_sweep(an, p)),
            ("gamma.png", lambda p: plots.plot_gamma(d, ppl, p)),
            *((f"sweep_{s}.png", lambda p, s=s: plots.plot_sweep_map(sweep, s, p)) for s, _, _ in sweep.measures()),
        ):
            out = fn(plots_dir / name)
            if out is not None:
                img[name] = Path(os.path.relpath(out.resolve(), rel_to)) if rel_to is not None else out

    def pic(name, alt):
        return f"\n![{alt}]({img[name].as_posix()})\n" if name in img else ""

    parts = [notes_section(n) for n in notes]
    parts += ["## Runs\n", runs_section(runs)]
    parts.append("\n## Targets\n")
    parts.append(tables.targets_table(d, n_resamples=n_resamples) if d.scores else "_no RULER results._\n")
    parts.append(f"\n## RULER-style accuracy: average over the {len(d.tasks)} task(s)\n")
    parts.append(
        (tables.average_table(d) + pic("ruler.png", "RULER accuracy")) if d.scores else "_no RULER results._\n"
    )
    parts.append("\n## Per task\n")
    for L in d.lengths:
        parts += [f"\n### {tables.len_name(L)}\n", tables.task_table(d, L)]
    if not d.scores:
        parts.append("_no RULER results._\n")
    parts.append("\n## Significance (paired permutation tests, one-sided, as in the paper)\n")
    pairs = tables.default_pairs(d.methods)
    parts.append(
        tables.significance_table(d, pairs, n_resamples=n_resamples, per_task=True) if pairs else "_no method pairs._\n"
    )
    extra_pairs = tables.variant_pairs(d.methods)
    if extra_pairs:
        parts.append("\n### Δ variants and other settings (pooled over tasks)\n")
        parts.append(tables.significance_table(d, extra_pairs, n_resamples=n_resamples))
    parts.append("\n## Perplexity (PG-19 style, public-domain books)\n")
    parts.append(tables.ppl_table(ppl) + pic("ppl.png", "perplexity"))
    if cppl.records:
        parts.append("\n## Continuation perplexity (the KV cache the prefill writes)\n")
        parts.append(tables.cppl_table(cppl, n_resamples=n_resamples))
    parts.append("\n## γ ablation\n")
    parts.append(pic("gamma.png", "gamma ablation") or "_no γ ablation (needs delta_g<γ> methods)._\n")
    if sweep.roots:
        sweep_img = {s: img[f"sweep_{s}.png"].as_posix() for s, _, _ in sweep.measures() if f"sweep_{s}.png" in img}
        parts.append("\n## Where Δ wins: window × γ map\n")
        parts.append(sweep_markdown(sweep, sweep_img))
    parts.append("\n## Analysis (paper Fig. 3 and Fig. 6b on our model)\n")
    parts.append(tables.analysis_markdown(an) + pic("analysis.png", "analysis") + pic("sweep.png", "per-layer sweep"))
    parts.append(format_section(m.variants, m.needles, n_resamples=n_resamples))
    parts.append("\n" + reproduce_section(runs, command))
    return setup_section(d, ppl, an, runs, cppl), parts


# ---------------------------------------------------------------------------------------------
# several models


def demote(markdown: str) -> str:
    """Every Markdown heading one level down (``## X`` → ``### X``); lines in fenced code blocks stay as they are."""
    out, fenced = [], False
    for line in markdown.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,5} ", line):
            line = "#" + line
        out.append(line)
    return "\n".join(out)


def models_table(groups: Sequence[ModelGroup], models: Sequence[ModelResults]) -> str:
    """The overview of a document with several models: one row per model (its section follows below)."""
    lines = [
        "## Models\n",
        "Each model has its own section below; no table pools records of two models.\n",
        "| model | lengths | RULER tasks | methods | samples | runs |",
        "|---|---|---|---|---|---|",
    ]
    for g, m in zip(groups, models):
        lengths = {*m.variants.lengths, *m.ppl.lengths, *(L for L, _ in m.cppl.cells), *m.sweep.length}
        samples = []
        if m.ruler.records:  # counted as the model's setup counts them: the default prompt format
            counts = ", ".join(map(str, m.ruler.sample_counts()))
            samples.append(f"RULER {counts} per (task, length, method), {len(m.ruler.records)} generations")
        if len(m.variants.records) > len(m.ruler.records):
            samples.append(f"prompt-format variants {len(m.variants.records) - len(m.ruler.records)} generations")
        docs = {r["doc"] for r in (*m.ppl.records, *m.cppl.records)}
        if docs:
            samples.append(f"perplexity {len(docs)} documents")
        sweep_records = sum(len(v) for per in m.sweep.ruler.values() for v in per.values()) + sum(
            len(v) for v in m.sweep.cppl.values()
        )
        if sweep_records:
            samples.append(f"sweep {sweep_records} records")
        if m.analysis:
            samples.append(f"analysis {m.analysis.get('meta', {}).get('samples', '?')} prompts")
        if m.needles:
            samples.append(f"needle {sum(int(n.get('meta', {}).get('samples', 0) or 0) for n in m.needles)} prompts")
        # method names, not labels: a name run with several settings is one entry here (its section tells them apart)
        names = {r["method"] for r in (*g.ruler, *g.ppl) if r.get("record") != "run" and "method" in r}
        run_ids = {r.get("run_id") for r in m.runs}
        lines.append(
            f"| {g.heading} | {', '.join(tables.len_name(L) for L in sorted(lengths)) or '–'} | "
            f"{len(m.ruler.tasks) or '–'} | {', '.join(f'`{x}`' for x in tables.ordered_methods(names)) or '–'} | "
            f"{'; '.join(samples) or '–'} | {len(run_ids)} |"
        )
    return "\n".join(lines) + "\n"


def notes_by_model(notes: Sequence[Note], groups: Sequence[ModelGroup], models: Sequence[ModelResults]) -> list[list]:
    """Each group's notes (a list per group): a note goes to the model whose runs it names.

    Raises :class:`NotesError` for a note naming a run that is not among the inputs, or runs of two models.
    """
    group_of: dict[str, set[int]] = {}
    for i, m in enumerate(models):
        for r in m.runs:
            group_of.setdefault(r.get("run_id"), set()).add(i)
    out: list[list] = [[] for _ in groups]
    for note in notes:
        unknown = [r for r in note.runs if r not in group_of]
        if unknown:
            raise NotesError(f"{note.path} describes run(s) {', '.join(unknown)}, which are not among the inputs")
        owners = sorted({i for r in note.runs for i in group_of[r]})
        if len(owners) > 1:
            named = "; ".join(
                f"{groups[i].heading}: {', '.join(r for r in note.runs if i in group_of[r])}" for i in owners
            )
            raise NotesError(
                f"{note.path} names runs of {len(owners)} models ({named}); the report writes one section per "
                "model, so write one notes file per model, each naming only that model's runs"
            )
        out[owners[0]].append(note)
    return out


# ---------------------------------------------------------------------------------------------
# the document


def results_document(
    inputs: Inputs,
    ruler_records: Records,
    ppl_records: Records,
    *,
    notes: Sequence[Note] = (),
    plots_dir: Path | None = None,
    rel_to: Path | None = None,
    n_resamples: int = 9999,
    status: str | None = None,
    command: str = "delta-attn eval report",
    sweep_records: Records | None = None,
) -> str:
    """The full RESULTS.md text from the records of ``inputs.ruler`` and ``inputs.ppl`` and the analysis files.

    The records are split by model first (:func:`~delta_attn.eval.model_groups.split_by_model`). With one
    model the document is that model's; with several it has a "Models" overview and then one section per
    model (every heading of the one-model document one level down; plots in ``plots_dir/<model slug>``).

    Raises :class:`NotesError` when a note describes a run that is not among the inputs, or runs of two models.
    """
    groups = split_by_model(
        ruler_records.items,
        ppl_records.items,
        sweep_records.items if sweep_records is not None else [],
        load_json_files(inputs.analysis),
        load_json_files(inputs.needle),
    ) or [ModelGroup(None)]
    models = [ModelResults.from_group(g) for g in groups]
    notes_of = notes_by_model(notes, groups, models)
    status = status or (
        f"**Status:** generated {time.strftime('%Y-%m-%d')} from {len(inputs.ruler)} RULER, "
        f"{len(inputs.ppl)} perplexity, {len(inputs.sweep)} sweep and {len(inputs.analysis)} analysis result files."
    )

    def head(models_named: str) -> list[str]:
        return [
            f"# Results: Δ attention on {models_named} (offline RULER-style suite)\n",
            status + "\n",
            "This file is generated by `delta-attn eval report` from the result files; every setting and number "
            f"in it comes from their records, except the hand-written notes, which say so.\nRegenerate: `{command}`\n",
        ]

    options = dict(rel_to=rel_to, n_resamples=n_resamples, command=command)
    if len(models) == 1:
        setup, rest = model_sections(models[0], notes=notes_of[0], plots_dir=plots_dir, **options)
        return "\n".join([*head(model_name(models[0].runs)), setup, methodology(n_resamples), *rest])
    names = [g.key or "records that name no model" for g in groups]
    parts = [*head(", ".join(names[:-1]) + " and " + names[-1]), models_table(groups, models)]
    for g, m, own_notes in zip(groups, models, notes_of):
        model_plots = plots_dir / slug(g.key) if plots_dir is not None else None
        setup, rest = model_sections(m, notes=own_notes, plots_dir=model_plots, **options)
        # the one-model document's content, the methodology included: it speaks of "the setup above"
        parts += [f"## {g.heading}\n", demote("\n".join([setup, methodology(n_resamples), *rest]))]
    return "\n".join(parts)
