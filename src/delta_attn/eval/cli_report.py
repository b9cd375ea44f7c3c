"""``delta-attn eval report``: RESULTS.md from result files (tables, permutation tests, plots).

Every setting and number in the document comes from the records (see
:mod:`delta_attn.eval.document`); hand-written interpretation comes from ``--notes`` files that
name the runs they describe. No result file among the inputs is an error.

Records of several models (told apart by the model id in their configs and run headers, see
:mod:`delta_attn.eval.model_groups`) get one section each under a "Models" overview, never a pooled
table; plots go to ``--plots-dir/<model>/``, each notes file to its model's section, and a notes file
naming runs of two models is an error.
"""

from __future__ import annotations

import shlex
import sys

from ..cli_options import UsageError, read_text_file

NAME = "report"
HELP = "RESULTS.md (tables, permutation tests, plots; one section per model) from result files"


def add_arguments(p) -> None:
    """``eval report``'s options."""
    from pathlib import Path

    from .. import cli_options as opt

    p.add_argument(
        "--inputs",
        nargs="+",
        required=True,
        type=opt.existing_path,
        help="result files or directories: ruler*.jsonl, ppl*.jsonl, sweep*.jsonl, analysis*.json, needle*.json, "
        ".gz too (required)",
    )
    p.add_argument("--out", type=opt.output_path, default=Path("RESULTS.md"), help="output file (default RESULTS.md)")
    p.add_argument(
        "--plots-dir",
        type=opt.output_dir,
        default=None,
        help="write PNG plots here (in a subfolder per model when the inputs hold several) and link them "
        "(default: no plots)",
    )
    p.add_argument("--resamples", type=opt.positive_int, default=9999, help="permutation-test resamples (default 9999)")
    p.add_argument("--status", default=None, help="status line at the top (default: generated from the inputs)")
    p.add_argument(
        "--notes",
        type=opt.existing_path,
        nargs="*",
        default=[],
        help="hand-written Markdown notes placed after the generated overview (of the model whose runs they "
        "name); each must name the run ids it describes in a first line '<!-- runs: ID ID ... -->', runs of "
        "one model (default none)",
    )


def run(args) -> int:
    from .document import Inputs, NotesError, read_note, results_document
    from .records import Records

    inputs = Inputs.find(args.inputs)
    if not inputs.count:
        shown = " ".join(map(str, args.inputs))
        raise UsageError(
            f"no result files (ruler*.jsonl, ppl*.jsonl, sweep*.jsonl, analysis*.json, needle*.json, or .gz) in {shown}"
        )
    try:
        notes = [read_note(p, read_text_file(p)) for p in args.notes]
    except NotesError as exc:
        raise UsageError(str(exc)) from None
    ruler, ppl, sweep = Records.load(inputs.ruler), Records.load(inputs.ppl), Records.load(inputs.sweep)
    for recs in (ruler, ppl, sweep):
        if recs.skipped_note():
            print(f"warning: {recs.skipped_note()}", file=sys.stderr)
    command = ["delta-attn", "eval", "report", "--inputs", *map(str, args.inputs), "--out", str(args.out)]
    if args.plots_dir:
        command += ["--plots-dir", str(args.plots_dir)]
    if args.notes:
        command += ["--notes", *map(str, args.notes)]
    try:
        text = results_document(
            inputs,
            ruler,
            ppl,
            notes=notes,
            plots_dir=args.plots_dir,
            rel_to=args.out.parent.resolve() if args.plots_dir else None,
            n_resamples=args.resamples,
            status=args.status,
            command=shlex.join(command),
            sweep_records=sweep,
        )
    except NotesError as exc:  # a note about runs that are not among the inputs
        raise UsageError(str(exc)) from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
