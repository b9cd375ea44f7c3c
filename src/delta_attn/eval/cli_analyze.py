"""``delta-attn eval analyze``: the paper's analyses on captured q/k/v (Δ similarity vs γ, drift of whole-model
runs, a per-layer sweep of configs); writes ``analysis.json`` (+ ``analysis.md``, plots).

The analysis records its full settings (``meta.config``); an earlier complete analysis in ``--out`` or
``--resume-from`` with the same settings is reused, one with other settings is not (the log says how
they differ), and an ``analysis.json`` in ``--out`` with other settings is only replaced with ``--force``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..cli_options import UsageError
from . import cli_common as common

NAME = "analyze"
HELP = "the paper's analyses (Δ similarity vs γ, drift, Fig. 3) on captured q/k/v"
METHOD_SPECS = True  # --help ends with the method spec syntax

DEFAULT_METHODS = "sparse,recompute,delta,delta_g16"
#: the per-layer sweep: the γ ablation, interpolation variants, and Δ on three bases
DEFAULT_SWEEP = (
    "sparse,recompute,delta_g8,delta_g16,delta_g32,delta,delta_g128,delta_g256,delta_linear,delta_ema0.5,"
    "delta_ema0.75,delta_ema0.95,delta_abg,block,block+delta,vs,vs+delta"
)


def _earlier(paths: list[Path]) -> list[Path]:
    found = []
    for p in paths:
        for f in [p] if p.is_file() else sorted([*p.rglob("analysis*.json"), *p.rglob("analysis*.json.gz")]):
            if f.is_file() and f.name.startswith("analysis"):
                found.append(f)
    return found


def add_arguments(p) -> None:
    """``eval analyze``'s options."""
    from .. import cli_options as opt
    from .ruler import TASK_NAMES

    task = dict(
        default="niah_single_2", choices=TASK_NAMES, help="task whose prompts are analysed (default %(default)s)"
    )
    samples_help = "prompts (>= 2 for the cross-input cosine; default 4)"
    common.add_prompt_opts(p, task=task, length=4096, samples=4, samples_help=samples_help, methods=DEFAULT_METHODS)
    common.add_int_list_option(p, "--gammas", "2,4,8,16,32,64,128", "γs of the similarity (default %(default)s)")
    p.add_argument(
        "--sweep",
        default=DEFAULT_SWEEP,
        help="method specs of the per-layer sweep ('' to skip; default: 17 configs)",
    )
    common.add_redo_opts(
        p,
        result="analysis",
        plots="analysis.png and sweep.png",
        force_help="redo even if an analysis with the same settings exists (default off)",
        time_limit_help="seconds since start; later stages are skipped (default none)",
    )
    p.add_argument(
        "--resume-from",
        type=opt.existing_path,
        nargs="*",
        default=[],
        help="earlier result folders: an analysis there with the same settings is not redone (default none)",
    )


def run(args) -> int:
    import torch

    from . import analysis, ruler, tables
    from .corpus import ESSAY_BOOKS
    from .records import config_difference, run_info
    from .runner import Deadline

    deadline = Deadline(args.time_limit, start=common.START)
    methods = common.methods(args)
    sweep = common.methods(args, args.sweep, "--sweep") if args.sweep.strip() else []
    (base,) = common.methods(args, "sparse", "--base")
    info = common.model_info(args)
    common.check_lengths([args.length], info, args, minimum=args.reserve + ruler.MIN_PROMPT_TOKENS, what="--length")
    if ruler.task_spec(args.task).needs_texts:
        common.check_texts(ESSAY_BOOKS, args.texts_dir)
    device, dtype = common.device_and_dtype(args)
    out_file = args.out / "analysis.json"
    log = common.Log(args.out / "analysis.log")
    config = {
        **common.prompt_settings(args, info, dtype),
        "base": base.canonical(),
        "gammas": args.gammas,
        "methods": {m.name: m.canonical() for m in methods},
        "sweep": {m.name: m.canonical() for m in sweep},
    }
    for path in _earlier([args.out, *args.resume_from]):
        earlier, complete = common.result_meta(path)
        if earlier == config and complete and not args.force:
            log(f"{path} holds a complete analysis with the same settings; nothing to do (--force to redo)")
            return 0
        why = (
            "it stopped at its time limit"
            if earlier == config
            else f"it differs in {config_difference(earlier, config)}"
        )
        log(f"not reusing {path}: {why}")
        if path == out_file and earlier != config and not args.force:
            raise UsageError(
                f"{out_file} holds an analysis with other settings; use another --out, or --force to replace it"
            )

    samples = common.task_prompts(args)
    model, tok = common.load_model(args, device, dtype)
    ids = torch.tensor([s.input_ids for s in samples], dtype=torch.long, device=device)
    to_cpu = device.type == "cpu"
    t0 = time.perf_counter()
    dense = analysis.capture_run(model, ids, None, to_cpu=to_cpu)
    result: dict = {
        "meta": {
            "task": args.task,
            "length": args.length,
            "prompt_tokens": ids.shape[1],
            "samples": len(samples),
            "base": base.describe(),
            "device": str(device),
            "dtype": str(dtype),
            "run": run_info(args, model, model_info=info),
            "config": config,
            "complete": False,
        }
    }
    result["delta_similarity"] = analysis.delta_similarity(dense, base.config, args.gammas)
    log(f"delta similarity done ({time.perf_counter() - t0:.1f}s)")
    first_row = analysis.first_row(base.config)
    nl = model.config.num_hidden_layers
    scatter_layers = sorted({0, nl // 2, nl - 1})
    result["drift"] = {}
    complete = True
    for m in methods:
        if m.is_dense:
            continue
        if not deadline.allows(10.0):
            log(f"time limit: drift stops before {m.name}")
            complete = False
            break
        run = analysis.capture_run(model, ids, m.config, to_cpu=to_cpu)
        result["drift"][m.name] = analysis.drift(dense, run, first_row=first_row, scatter_layers=scatter_layers)
        del run
        log(f"drift {m.name} done ({time.perf_counter() - t0:.1f}s)")
    if sweep and deadline.allows(20.0):
        configs = {s.name: s.config for s in sweep if not s.is_dense}
        result["sweep"] = analysis.config_sweep(dense, configs, first_row=first_row)
        log(f"config sweep done ({time.perf_counter() - t0:.1f}s)")
    elif sweep:
        complete = False
    result["meta"]["complete"] = complete
    out_file.write_text(json.dumps(result, indent=1))
    if not args.no_summary:
        (args.out / "analysis.md").write_text(tables.analysis_markdown(result))
    if args.plots:
        from . import plots

        plots.plot_analysis(result, args.out / "analysis.png")
        plots.plot_sweep(result, args.out / "sweep.png")
    log(f"wrote {out_file}")
    return 0
