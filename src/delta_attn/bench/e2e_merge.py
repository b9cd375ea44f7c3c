"""``delta-attn bench e2e-report``: one report from several ``bench e2e`` runs of one model on one device.

A sweep from 32K to 1M does not fit one run (dense at 1M takes minutes, so Δ chunked at 1M runs on its own); this
merges the runs' results.json into one results.json / results.md / plot.png (:func:`.e2e_report.write`): one
log-log plot over every length, dense's N² fit of all its measured lengths extrapolated across them, and Δ's floor
line (:func:`.e2e_report.floor_curve`).

The runs must describe the same model, device, parallel layout, dtype and Δ config (:data:`MUST_MATCH`; dense's
backend choice too among runs that ran dense): a run on another GPU is refused, naming the field, never merged.
Cells are keyed by (length, method, chunk, cache); a later input's cell replaces an earlier one's and the report
says so, except that a cell a run did not measure (skipped, out of memory) never replaces a measured one. Ratios
to dense are recomputed over the merged cells.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..cli_options import UsageError
from .e2e_report import add_ratios, summary, variant, variant_name, variant_order, write
from .layer import fmt_length

#: meta fields that must be equal in every merged run: the model, the device, how the work is laid out, Δ's config
#: and its kernels' launch configs (absent: the shipped ones)
MUST_MATCH = (
    "model_shape",
    "real_weights",
    "layers",
    "layers_cut",
    "params_b",
    "dtype",
    "device",
    "gpus",
    "parallel",
    "ranks",
    "tp_size",
    "delta",
    "kernel_config",
)
#: fields that may differ between runs but are worth a note (a torch upgrade can move cuDNN's times)
NOTE_IF_DIFFERENT = ("torch", "host")


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="delta-attn bench e2e-report", description=__doc__.splitlines()[0])
    p.add_argument(
        "--inputs",
        nargs="+",
        required=True,
        metavar="PATH",
        help="(required) results of `delta-attn bench e2e`: its --out directories (their results.json) or .json "
        "files; for an identical cell a later input wins",
    )
    p.add_argument(
        "--out",
        default="runs/bench-e2e-report",
        help="directory for the merged results.json, results.md, plot.png (default runs/bench-e2e-report)",
    )
    return p


def load_results(path: str) -> tuple[str, dict]:
    """(the file read, its contents) of one ``--inputs`` entry: a directory's results.json, or a .json file."""
    file = os.path.join(path, "results.json") if os.path.isdir(path) else path
    if not os.path.exists(path):
        raise UsageError(f"--inputs {path}: no such file or directory")
    if not os.path.isfile(file):
        raise UsageError(f"--inputs {path}: no results.json in it (the --out directory of `delta-attn bench e2e`)")
    try:
        with open(file) as f:
            res = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"--inputs {file}: not a readable JSON file ({exc})") from None
    if not isinstance(res, dict) or not isinstance(res.get("meta"), dict) or not isinstance(res.get("cells"), list):
        raise UsageError(f"--inputs {file}: not the results.json of `delta-attn bench e2e` (no meta and cells)")
    if "inputs" in res["meta"]:
        raise UsageError(f"--inputs {file}: already a merged report; pass the runs it was merged from")
    return file, res


def ran_dense(res: dict) -> bool:
    """Whether a run measured any dense cell (its dense-backend choice then matters to a merge)."""
    return any(c["method"] == "dense" and "ttft_s" in c for c in res["cells"])


def check_same_runs(loaded: list[tuple[str, dict]]) -> list[str]:
    """Raise UsageError naming the first :data:`MUST_MATCH` field that differs between the runs (and dense's backend
    choice among the runs that ran dense); return notes on :data:`NOTE_IF_DIFFERENT` fields that differ."""
    first_file, first = loaded[0]
    for file, res in loaded[1:]:
        for field in MUST_MATCH:
            a, b = first["meta"].get(field), res["meta"].get(field)
            if a != b:
                raise UsageError(
                    f"meta field {field!r} differs: {first_file} has {a!r}, {file} has {b!r}; e2e-report merges runs "
                    "of one model on one device with one Δ config only"
                )
    with_dense = [(f, r) for f, r in loaded if ran_dense(r)]
    choices = {r["meta"].get("dense_backend_choice") for _, r in with_dense}
    if len(choices) > 1:
        runs = ", ".join(f"{f}: {r['meta'].get('dense_backend_choice')!r}" for f, r in with_dense)
        raise UsageError(f"meta field 'dense_backend_choice' differs between runs with dense cells ({runs})")
    notes = []
    for field in NOTE_IF_DIFFERENT:
        values = {str(r["meta"].get(field)) for _, r in loaded}
        if len(values) > 1:
            each = ", ".join(f"{f} {r['meta'].get(field)}" for f, r in loaded)
            notes.append(f"{field} differs between the runs: {each}")
    return notes


def merge(loaded: list[tuple[str, dict]], command: str) -> dict:
    """One results dict of the runs in ``loaded`` (checked by :func:`check_same_runs`): their cells (a later run
    wins for an identical cell, noted in ``meta["merge_notes"]``; each cell's ``run`` is its input's number, from
    1), ratios recomputed, and a meta that keeps each run's command, date, warm-up and repetitions in ``inputs``."""
    from .e2e import describe_dense_backend

    notes = check_same_runs(loaded)
    cells: dict[tuple, dict] = {}
    for i, (file, res) in enumerate(loaded, 1):
        for cell in res["cells"]:
            key = (cell["n"], *variant(cell))
            cell = dict(cell, run=i)
            old = cells.get(key)
            name = f"{fmt_length(cell['n'])} {variant_name(variant(cell))}"
            if old is not None and "ttft_s" in old and "ttft_s" not in cell:
                notes.append(f"{name}: kept run {old['run']}'s measured cell, not run {i}'s unmeasured one ({file})")
                continue
            if old is not None:
                notes.append(f"{name}: run {i} ({file}) replaces run {old['run']}'s cell")
            cells[key] = cell
    merged = sorted(cells.values(), key=lambda c: (c["n"], variant_order(variant(c))))
    for c in merged:  # recomputed over the merged cells
        c.pop("speedup_vs_dense", None)
        c.pop("chunked_over_one_shot", None)
    add_ratios(merged)
    meta = dict(loaded[0][1]["meta"])
    by_length = {
        c["n"]: c["dense_backend"] for c in merged if c["method"] == "dense" and "ttft_s" in c and "dense_backend" in c
    }
    dense_runs = [r["meta"] for _, r in loaded if ran_dense(r)]
    if len(dense_runs) == 1:
        meta["dense_backend"] = dense_runs[0]["dense_backend"]
    elif dense_runs and meta.get("parallel") != "cp":
        meta["dense_backend"] = describe_dense_backend(dense_runs[0]["dense_backend_choice"], by_length)
    meta["dense_backend_choice"] = (dense_runs or [meta])[0].get("dense_backend_choice")
    meta["dense_backend_by_length"] = {fmt_length(n): be for n, be in sorted(by_length.items())}
    keep = ("command", "date", "host", "torch", "reps", "warmup", "wall_s", "time_limit_s", "dense_backend")
    meta["inputs"] = [dict(path=file, **{k: r["meta"].get(k) for k in keep}) for file, r in loaded]
    meta.update(
        command=command,
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        wall_s=sum(r["meta"].get("wall_s") or 0.0 for _, r in loaded),
        merge_notes=notes,
    )
    if any("attention" in r["meta"] for _, r in loaded):  # an older run lacks it; a newer one of the same model has it
        meta["attention"] = next(r["meta"]["attention"] for _, r in loaded if "attention" in r["meta"])
    profiled = [(i, r["profiles"]) for i, (_, r) in enumerate(loaded, 1) if r.get("profiles")]
    if profiled:
        meta["profiles_from_run"] = profiled[-1][0]
    return dict(meta=meta, cells=merged, profiles=profiled[-1][1] if profiled else {})


def run(args: argparse.Namespace) -> int:
    from .e2e_report import ReportInputError

    loaded = [load_results(path) for path in args.inputs]
    # the command rebuilt from the options (sys.argv is another program's under a test or a script)
    command = f"delta-attn bench e2e-report --inputs {' '.join(args.inputs)} --out {args.out}"
    res = merge(loaded, command)
    for note in res["meta"]["merge_notes"]:
        print(f"note: {note}", flush=True)
    try:
        md = write(res, args.out, strict=True)
    except ReportInputError as exc:
        raise UsageError(str(exc)) from None
    print(md, flush=True)
    print(summary(res), flush=True)
    print(f"wrote {os.path.join(args.out, 'results.json')}, results.md, plot.png", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"delta-attn bench e2e-report: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
