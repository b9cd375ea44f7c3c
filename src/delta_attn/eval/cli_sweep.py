"""``delta-attn eval sweep``: where Δ wins — every (window, γ) cell on RULER tasks and continuation perplexity.

Each cell runs the compared methods (``--methods``, default ``delta,recompute``) at one window and γ;
``sparse`` runs once per window and ``dense`` once (:mod:`delta_attn.eval.sweep` says in which order: the
``--first-window`` row first). Records go to ``OUT/sweep.jsonl`` through the same runners as ``eval ruler``
and ``eval ppl --continuation``, each with its full config, so ``--time-limit`` (checked between batches and
between cells) and a rerun with the same ``--out`` resume where the last run stopped. Then ``sweep.md`` and
one heat map per measure (``sweep_ruler.png``, ``sweep_cppl<M>.png``: the first method − the second).
``--window`` and ``--gamma`` are set per cell; the other method options (``--sink``, ``--base``,
``--interp`` ...) apply to every cell.
"""

from __future__ import annotations

import time

from ..cli_options import UsageError
from . import cli_common as common

NAME = "sweep"
HELP = "where Δ wins: a window × γ map of two methods on RULER tasks and continuation perplexity"
METHOD_SPECS = True  # --help ends with the method spec syntax


def add_arguments(p) -> None:
    """``eval sweep``'s options."""
    from ..cli_options import nonnegative_int, positive_int

    common.add_int_list_option(p, "--windows", "128,256,512,1024", "sparse windows (default %(default)s)")
    common.add_int_list_option(p, "--gammas", "8,16,32,64", "anchor strides γ (default %(default)s)")
    p.add_argument(
        "--first-window",
        type=positive_int,
        default=256,
        help="the window whose row runs first; the others follow nearest first (default 256)",
    )
    p.add_argument("--length", type=positive_int, default=8192, help="prompt / window length (default 8192)")
    common.add_tasks_option(p, "niah_single_1,niah_single_2,niah_multikey_1,vt", "RULER tasks (default %(default)s)")
    p.add_argument(
        "--samples", type=nonnegative_int, default=20, help="samples per task and cell; 0: no RULER (default 20)"
    )
    common.add_seed_reserve(p)
    common.add_int_list_option(
        p, "--continuation", "1024", "continuation-perplexity tail lengths (default 1024)", metavar="M[,M2]"
    )
    p.add_argument(
        "--ppl-docs", type=nonnegative_int, default=8, help="perplexity documents per cell; 0: none (default 8)"
    )
    p.add_argument(
        "--ppl-batch-size",
        type=positive_int,
        default=None,
        help="perplexity documents per forward (default 16384 // length)",
    )
    common.add_ruler_work_opts(p, what="RULER decode batch size")
    common.add_run_opts(p, methods="delta,recompute", stem="sample and cppl")


def run(args) -> int:
    cells = _cells(args)  # first: a bad method is reported before the imports below load torch

    from . import ruler
    from .cli_ppl import check_continuations
    from .cli_ruler import build_prompts, ruler_configs, ruler_scope, run_batches
    from .corpus import ESSAY_BOOKS, PPL_BOOKS
    from .cppl import run_cppl
    from .ppl import DOC_FORMAT, ppl_documents
    from .records import JsonlWriter, cppl_key, record_config, run_info, sample_key
    from .resume import plan_resume
    from .runner import Deadline

    deadline = Deadline(args.time_limit, start=common.START)
    methods = [m for c in cells for m in c.methods]
    info = common.model_info(args)
    length, tasks = args.length, (args.tasks if args.samples else [])
    if tasks:
        common.check_lengths([length], info, args, minimum=args.reserve + ruler.MIN_PROMPT_TOKENS, what="--length")
    else:
        common.check_lengths([length], info, args, minimum=2, what="--length")
    conts = check_continuations(args.continuation, [length]) if args.ppl_docs else []
    if any(ruler.TASKS[t].params.get("haystack") == "essay" or ruler.TASKS[t].is_qa for t in tasks):
        common.check_texts(ESSAY_BOOKS, args.texts_dir)
    if conts:
        common.check_texts(PPL_BOOKS[: args.ppl_docs], args.texts_dir)
    device, dtype = common.device_and_dtype(args)
    out_jsonl = args.out / "sweep.jsonl"
    log = common.Log(args.out / "sweep.log")
    log(
        f"sweep: {len(cells)} cells ({', '.join(c.name for c in cells)}) at {length} tokens; tasks {tasks} × "
        f"{args.samples} samples; continuation M = {conts} on {args.ppl_docs} documents; on {device}"
    )
    dtype_s = common.dtype_name(dtype)
    rope = info.rope_spec
    ruler_cfg = ruler_configs(
        methods, model_id=info.model_id, dtype=dtype_s, reserve=args.reserve, seed=args.seed, rope_scaling=rope
    )
    cppl_cfg = {
        m.name: record_config(
            m.canonical(), model=info.model_id, dtype=dtype_s, prompt={"format": DOC_FORMAT}, rope_scaling=rope
        )
        for m in methods
    }
    scope = ruler_scope(tasks, [length], args.samples, methods, args.seed)
    earlier = common.earlier_records([out_jsonl, *args.resume_from], log)
    ruler_plan = plan_resume(earlier, "sample", sample_key, ruler_cfg, scope)
    cppl_plan = plan_resume(earlier, "cppl", cppl_key, cppl_cfg)
    for what, plan in (("RULER", ruler_plan), ("continuation ppl", cppl_plan)):
        for line in plan.lines():
            log(f"{what}: {line}")
    todo_ruler = scope - ruler_plan.done
    n_cppl = len(methods) * len(conts) * args.ppl_docs
    names = {m.name for m in methods}
    cppl_done = sum(k[1] == length and k[2] in conts and k[3] in names for k in cppl_plan.done)
    if not todo_ruler and cppl_done >= n_cppl:
        log("nothing to do: every cell is done")
    elif args.time_limit is not None and args.time_limit < 60:
        log(f"time limit {args.time_limit:.0f}s is too short to load the model and run a batch; skipping")
    else:
        samples = []
        if todo_ruler:
            samples = build_prompts(args, [(t, length) for t in tasks], log, option="--length")
        model, tok = common.load_model(args, device, dtype)
        docs = ppl_documents(tok, length, args.ppl_docs, args.texts_dir) if conts else []
        log(f"model loaded ({time.perf_counter() - common.START:.0f}s since start)")
        with JsonlWriter(out_jsonl, warn=log) as w:
            header = run_info(
                args,
                model,
                {"kind": "sweep", "methods": {m.name: m.config_dict() for m in methods}},
                model_info=info,
            )
            w.write([header])
            for cell in cells:
                if not deadline.allows(0.0):
                    log(f"time limit: stopping before cell {cell.name}; rerun with the same --out to resume")
                    break
                t0 = time.perf_counter()
                stats = run_batches(
                    args,
                    model,
                    tok,
                    samples,
                    cell.methods,
                    w,
                    [length],
                    ruler_plan.done,
                    ruler_cfg,
                    header,
                    deadline,
                    log,
                )
                if stats.stopped_by_deadline:
                    break
                n = run_cppl(
                    model,
                    docs,
                    cell.methods,
                    w,
                    length=length,
                    conts=conts,
                    batch_size=args.ppl_batch_size or max(1, 16384 // length),
                    done=cppl_plan.done,
                    configs=cppl_cfg,
                    run_id=header["run_id"],
                    log=log,
                    deadline=deadline,
                )
                if stats.done or n:
                    log(
                        f"cell {cell.name}: {stats.done} generations, {n} continuation windows "
                        f"in {time.perf_counter() - t0:.0f}s"
                    )
    if not args.no_summary:
        write_summary(args.out, common.earlier_records([out_jsonl, *args.resume_from], log).items)
        log(f"summary: {args.out / 'sweep.md'}")
    return 0


def _cells(args):
    """The sweep's cells from the options; bad method specs or an unknown --first-window: UsageError."""
    from ..methods import settings_from_args
    from .sweep import sweep_cells

    specs = [s.strip() for s in args.methods.split(",") if s.strip()]
    if not specs:
        raise UsageError("--methods: no methods given")
    try:
        cells = sweep_cells(specs, args.windows, args.gammas, settings_from_args(args), args.first_window)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--methods: {exc}") from None
    for m in (m for c in cells if c.gamma is not None for m in c.methods):
        if m.is_dense or m.config.mode == "sparse":
            raise UsageError(
                f"--methods {m.name.partition('@')[0]}: dense and sparse run as references anyway; "
                "name methods with anchors (delta, recompute, their variants)"
            )
    return cells


def write_summary(out, records) -> dict[str, str]:
    """``sweep.md`` and a heat map per measure in ``out``; returns measure -> PNG file name."""
    from . import plots
    from .sweep import SweepData, sweep_markdown

    data = SweepData.from_records(records)
    images = {}
    for measure, _, _ in data.measures():
        png = plots.plot_sweep_map(data, measure, out / f"sweep_{measure}.png")
        if png is not None:
            images[measure] = png.name
    (out / "sweep.md").write_text("# Where Δ wins: window × γ\n\n" + sweep_markdown(data, images), encoding="utf-8")
    return images
