"""``delta-attn eval needle``: where the needle goes under each method (see :mod:`delta_attn.eval.needle`);
writes ``needle.json`` (+ ``needle.md``, and ``needle.png`` with ``--plots``).

Per layer and method: the cosine to dense of the needle tokens' keys and values in the prefilled
cache, the attention mass the first decode query puts on the needle, and for Δ methods the cosine
between consecutive anchors' Δ. The prompts are those of ``eval ruler`` (format variants included,
e.g. ``--task niah_single_1@noheader``); the needle's token positions come from the prompt builder.
A complete ``needle.json`` with the same settings in ``--out`` is not redone (``--force`` redoes it).
"""

from __future__ import annotations

import json
import time

from ..cli_options import UsageError
from . import cli_common as common

NAME = "needle"
HELP = "needle keys/values, decode attention on the needle, Δ per layer"
METHOD_SPECS = True  # --help ends with the method spec syntax


def task_name(text: str) -> str:
    """``--task``: a RULER task name, format suffixes allowed (canonical spelling), for argparse."""
    import argparse

    from .ruler import task_spec

    try:
        return task_spec(text.strip()).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _settings(args, info, dtype, methods) -> dict:
    return {**common.prompt_settings(args, info, dtype), "methods": {m.name: m.canonical() for m in methods}}


def add_arguments(p) -> None:
    """``eval needle``'s options."""
    task = dict(type=task_name, default="niah_single_1", help="NIAH task, formats allowed (default %(default)s)")
    methods = "dense,sparse,recompute,delta"
    common.add_prompt_opts(p, task=task, length=8192, samples=8, samples_help="prompts (default 8)", methods=methods)
    common.add_redo_opts(
        p,
        result="needle",
        plots="needle.png",
        force_help="redo a complete analysis with the same settings (default off)",
        time_limit_help="seconds; later prompts skipped (default none)",
    )


def run(args) -> int:
    import torch

    from . import analysis, needle, ruler
    from .corpus import ESSAY_BOOKS
    from .records import run_info
    from .runner import Deadline

    deadline = Deadline(args.time_limit, start=common.START)
    methods = common.methods(args)
    info = common.model_info(args)
    common.check_lengths([args.length], info, args, minimum=args.reserve + ruler.MIN_PROMPT_TOKENS, what="--length")
    spec = ruler.task_spec(args.task)
    if spec.family != "niah":
        raise UsageError(f"--task {args.task}: the needle analysis needs a NIAH task (it has needle positions)")
    if spec.needs_texts:
        common.check_texts(ESSAY_BOOKS, args.texts_dir)
    device, dtype = common.device_and_dtype(args)
    out_file = args.out / "needle.json"
    log = common.Log()
    settings = _settings(args, info, dtype, methods)
    if out_file.is_file() and not args.force:
        earlier, complete = common.result_meta(out_file)
        if earlier == settings and complete:
            log(f"{out_file} holds a complete needle analysis with the same settings; nothing to do (--force redoes)")
            return 0
        if earlier != settings:
            raise UsageError(f"{out_file} holds a needle analysis with other settings; use another --out or --force")

    samples = common.task_prompts(args)
    model, _ = common.load_model(args, device, dtype)
    to_cpu = device.type == "cpu"
    t0 = time.perf_counter()
    per_method: dict[str, list[dict]] = {m.name: [] for m in methods}
    complete = True
    for s in samples:
        if not deadline.allows(15.0):
            log(f"time limit: stopping after {len(per_method[methods[0].name])} of {len(samples)} prompts")
            complete = False
            break
        ids = torch.tensor([s.input_ids], dtype=torch.long, device=device)
        positions = needle.needle_positions(s.meta["needle_spans"])
        dense = analysis.capture_run(model, ids, None, to_cpu=to_cpu)
        for m in methods:
            run = dense if m.is_dense else analysis.capture_run(model, ids, m.config, to_cpu=to_cpu)
            per_method[m.name].append(needle.needle_metrics(dense, run, positions, config=m.config))
            del run
        del dense
        log(f"prompt {s.index} done ({time.perf_counter() - t0:.1f}s)")
    result = {
        "meta": {
            "kind": "needle",
            "task": spec.name,
            "length": args.length,
            "prompt_tokens": len(samples[0].input_ids),
            "samples": len(per_method[methods[0].name]),
            "depths": [s.meta["depths"][0] for s in samples],
            "device": str(device),
            "dtype": str(dtype),
            "run": run_info(args, model, model_info=info),
            "config": settings,
            "complete": complete,
        },
        "methods": {name: needle.summarize(rows) for name, rows in per_method.items()},
        "per_prompt": per_method,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=1))
    if not args.no_summary:
        from .format_report import needle_markdown

        (args.out / "needle.md").write_text(needle_markdown(result))
    if args.plots:
        from . import plots

        plots.plot_needle(result, args.out / "needle.png")
    log(f"wrote {out_file}")
    return 0
