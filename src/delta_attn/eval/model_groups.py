"""Which model a result record belongs to, and the records of several models split by model.

Two models' records share task, length and method names (``dense``, ``delta`` ...), so a report that
pooled them would average two models into one cell. ``eval report`` therefore splits its inputs by
model first (:func:`split_by_model`) and writes one section per model.

A model is known by what the records carry:

* a record's ``config["model"]``, the model id ``<file name>@sha256:<12 hex>`` (records since configs
  were recorded, see :mod:`delta_attn.eval.records`);
* otherwise its run header (by ``run_id``): the header's ``model_id``, or, in runs older than model ids,
  its ``--model`` option (``smollm2``);
* an analysis or needle file: its ``meta["run"]`` header.

A file whose sha256 is a named model's (:data:`~delta_attn.models.registry.NAMED_MODELS`) is that model
under any file name (a model reassembled as ``model.gguf`` on a GPU machine); other files are known by
their model id, hash included, so two different files of one name are never pooled. Records that name
no model at all (no config model, no run header that names one) form one group of their own, ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..models.registry import NAMED_MODELS
from .records import UNKNOWN_MODEL

# a run's model (its --model option in older runs, its GGUF file name or registry name in newer ones) -> display name
MODEL_NAMES = {"smollm2": "SmolLM2-135M-Instruct"} | {
    key: m.title for m in NAMED_MODELS.values() for key in (m.name, m.file_name)
}
# a named model's file under another name (e.g. reassembled on a GPU machine) is known by its hash
MODEL_NAMES_BY_SHA = {m.sha256[:12]: m.title for m in NAMED_MODELS.values()}

#: how the document names runs that name no model
UNNAMED_MODEL = "an unnamed model"
#: the heading of the section of records that name no model (runs older than model ids and --model options)
UNNAMED_GROUP = "Records that name no model (older runs)"


def _identify(model_id: str | None, option: str | None = None) -> tuple[str, str] | None:
    """(display name, group key) of a model id or, without one, of a run's ``--model`` option; None if neither.

    The key is the display name for a named model (by hash or by name) and the model id itself otherwise,
    so that two unnamed files with the same name but different contents stay apart.
    """
    if model_id:
        key, sha = model_id.partition("@")[0], model_id.partition("@sha256:")[2]
        if sha in MODEL_NAMES_BY_SHA:
            return MODEL_NAMES_BY_SHA[sha], MODEL_NAMES_BY_SHA[sha]
        if key in MODEL_NAMES:
            return MODEL_NAMES[key], MODEL_NAMES[key]
        return key, model_id
    if option:
        name = MODEL_NAMES.get(option, option)
        return name, name
    return None


def _run_identity(run: dict) -> tuple[str, str] | None:
    return _identify(run.get("model_id"), run.get("options", {}).get("model"))


def model_name(runs: Sequence[dict]) -> str:
    """The display name(s) of the models that ``runs`` (run headers) ran, ``A / B`` for several."""
    names = {ident[0] for ident in map(_run_identity, runs) if ident is not None}
    return " / ".join(sorted(names)) or UNNAMED_MODEL


def run_model(run: dict) -> str | None:
    """The group key of the model a run header names (None: it names none)."""
    ident = _run_identity(run)
    return ident[1] if ident else None


def record_model(rec: dict, runs: dict[str, dict]) -> str | None:
    """The group key of a record's model: its config's model id, else its run header's (``runs`` by id)."""
    if rec.get("record") == "run":
        return run_model(rec)
    model_id = (rec.get("config") or {}).get("model")
    if model_id and model_id != UNKNOWN_MODEL:  # UNKNOWN_MODEL: a config rebuilt for an old record, not a model
        return _identify(model_id)[1]
    run = runs.get(rec.get("run_id", ""))
    return run_model(run) if run is not None else None


def slug(key: str | None) -> str:
    """A folder name for a group's plots: ``qwen2.5-coder-1.5b-instruct``, ``unnamed-model``."""
    text = re.sub(r"[^a-z0-9.]+", "-", (key or "unnamed model").lower()).strip("-.")
    return text or "model"


@dataclass
class ModelGroup:
    """One model's share of the inputs: its records of each kind, and its analysis and needle results."""

    key: str | None  # None: records that name no model
    ruler: list[dict] = field(default_factory=list)
    ppl: list[dict] = field(default_factory=list)
    sweep: list[dict] = field(default_factory=list)
    analysis: list[dict] = field(default_factory=list)  # analysis*.json contents, in input order
    needles: list[dict] = field(default_factory=list)  # needle*.json contents, in input order

    @property
    def heading(self) -> str:
        return self.key or UNNAMED_GROUP


def split_by_model(
    ruler: Iterable[dict],
    ppl: Iterable[dict],
    sweep: Iterable[dict],
    analysis: Iterable[dict] = (),
    needles: Iterable[dict] = (),
) -> list[ModelGroup]:
    """The inputs split by model, each kind in its input order; named models sorted by name, then the records
    that name no model. Every record lands in exactly one group."""
    ruler, ppl, sweep = list(ruler), list(ppl), list(sweep)
    runs = {r["run_id"]: r for r in (*ruler, *ppl, *sweep) if r.get("record") == "run" and "run_id" in r}
    groups: dict[str | None, ModelGroup] = {}

    def group(key: str | None) -> ModelGroup:
        return groups.setdefault(key, ModelGroup(key))

    for kind, recs in (("ruler", ruler), ("ppl", ppl), ("sweep", sweep)):
        for r in recs:
            getattr(group(record_model(r, runs)), kind).append(r)
    for kind, results in (("analysis", analysis), ("needles", needles)):
        for res in results:
            run = res.get("meta", {}).get("run")
            getattr(group(run_model(run) if run else None), kind).append(res)
    return sorted(groups.values(), key=lambda g: (g.key is None, g.key or ""))
