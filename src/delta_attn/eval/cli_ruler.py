"""``delta-attn eval ruler``: RULER-style tasks × lengths × methods; a JSONL record per generation and a
Markdown summary.

Order of work, so that mistakes surface in seconds: options and lengths (against the task's minimum
and the model's context) and the texts are checked, earlier records are matched (only records with the
same settings are reused; the log says how many and why others are not), the prompts some method still
needs are built with the tokenizer alone, and only then does the model load.
"""

from __future__ import annotations

import os
import time

from ..cli_options import UsageError
from . import cli_common as common

NAME = "ruler"
HELP = "RULER-style tasks (13, offline), JSONL + Markdown summary"
METHOD_SPECS = True  # --help ends with the method spec syntax

_POOL_STATE: dict = {}


def _gen_job(job):
    from . import ruler

    builder, (task, length, indices, seed, reserve) = _POOL_STATE["builder"], job
    return [ruler.generate_sample(builder, task, length, i, seed=seed, reserve=reserve) for i in indices]


def build_samples(builder, cells, n, *, seed, reserve, workers: int, log=None, indices=None, prebuilt=None):
    """The prompts of the (task, length) ``cells``, in worker processes (fork) when ``workers > 1``.

    Each cell gets samples ``0 … n − 1``, or only ``indices[(task, length)]`` when given (a resumed run builds
    just the prompts some method still needs); ``prebuilt`` ({(task, length, index): sample}, e.g. from
    :func:`probe_cells`) are used as they are, not built again."""
    from . import ruler

    t0 = time.perf_counter()
    prebuilt = prebuilt or {}
    if any(ruler.task_spec(t).needs_texts for t, _ in cells):
        builder.essay()  # tokenise the essay books once, before forking
    chunk = 10
    jobs = []
    for t, L in cells:
        wanted = [i for i in (indices[t, L] if indices is not None else range(n)) if (t, L, i) not in prebuilt]
        jobs += [(t, L, wanted[i : i + chunk], seed, reserve) for i in range(0, len(wanted), chunk)]
    _POOL_STATE["builder"] = builder
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_gen_job, jobs, chunksize=1)
    else:
        parts = [_gen_job(j) for j in jobs]
    samples = [*prebuilt.values(), *(s for part in parts for s in part)]
    if log:
        log(f"built {len(samples)} prompts in {time.perf_counter() - t0:.1f}s ({workers} workers)")
    return samples


def probe_cells(builder, cells, *, seed: int, reserve: int, option: str = "--lengths", indices=None) -> dict:
    """Build one sample of each cell (its first index in ``indices``, else 0): a length below a task's minimum
    fails here, in seconds, as a UsageError naming ``option``. Returns the samples built,
    {(task, length, index): sample}, for :func:`build_samples` to reuse."""
    from . import ruler

    built = {}
    for task, length in cells:
        index = indices[task, length][0] if indices is not None else 0
        try:
            built[task, length, index] = ruler.generate_sample(builder, task, length, index, seed=seed, reserve=reserve)
        except ValueError as exc:
            raise UsageError(f"{option}: {exc}") from None
    return built


def build_prompts(args, cells, log, *, indices=None, option: str = "--lengths") -> list:
    """The prompts of ``eval ruler`` and ``eval sweep``: the tokenizer of ``--model`` alone, one probe per cell (a
    length too short for a task fails in seconds, naming ``option``), then :func:`build_samples` (only
    ``indices`` when given), reusing the probes' prompts."""
    from ..models import load_tokenizer
    from . import ruler

    builder = ruler.PromptBuilder(load_tokenizer(args.model), texts_dir=args.texts_dir)
    probed = probe_cells(builder, cells, seed=args.seed, reserve=args.reserve, option=option, indices=indices)
    return build_samples(
        builder,
        cells,
        args.samples,
        seed=args.seed,
        reserve=args.reserve,
        workers=args.workers,
        log=log,
        indices=indices,
        prebuilt=probed,
    )


def ruler_configs(methods, *, model_id: str, dtype: str, reserve: int, seed: int, rope_scaling=None) -> dict:
    """Method name -> the config its ``eval ruler`` records carry, which resume compares (one definition for
    ``eval ruler``, ``eval sweep`` and ``eval plan --resume-from``)."""
    from . import ruler
    from .records import record_config

    prompt = {"reserve": reserve, "chat": True, "format": ruler.PROMPT_FORMAT}
    return {
        m.name: record_config(
            m.canonical(), model=model_id, dtype=dtype, prompt=prompt, seed=seed, rope_scaling=rope_scaling
        )
        for m in methods
    }


def ruler_scope(tasks, lengths, samples: int, methods, seed: int) -> set:
    """The keys (task, length, index, method, seed) of every generation a run asks for."""
    return {(t, L, i, m.name, seed) for t in tasks for L in lengths for i in range(samples) for m in methods}


def add_arguments(p) -> None:
    """``eval ruler``'s options."""
    from ..cli_options import positive_int

    common.add_tasks_option(p, "all", "comma list of tasks, or all / niah / qa / non_qa (default all)")
    common.add_int_list_option(
        p, "--lengths", "1024,2048,4096,8192", "nominal lengths, most important first (default 1024,2048,4096,8192)"
    )
    p.add_argument("--samples", type=positive_int, default=50, help="samples per task and length (default 50)")
    common.add_seed_reserve(p)
    common.add_ruler_work_opts(p)
    p.add_argument(
        "--resamples", type=positive_int, default=9999, help="permutation-test resamples in the summary (default 9999)"
    )
    common.add_run_opts(p, methods="dense,sparse,recompute,delta", stem="sample")


def run_batches(args, model, tok, samples, methods, writer, lengths, done, configs, header, deadline, log):
    """:func:`~delta_attn.eval.runner.run_ruler` with the run options of ``eval ruler``/``eval sweep`` (batch
    sizes, seed, progress bars, prefill micro-batches) and the run id of ``header``."""
    from .runner import parse_batch_sizes, run_ruler

    return run_ruler(
        model,
        tok,
        samples,
        methods,
        writer,
        lengths=lengths,
        batch_size=parse_batch_sizes(args.batch_size),
        done=done,
        configs=configs,
        run_id=header["run_id"],
        seed=args.seed,
        deadline=deadline,
        progress=not args.no_progress,
        log=log,
        prefill_tokens=args.prefill_tokens,
    )


def run(args) -> int:
    methods = common.methods(args)  # first: a bad method is reported before the imports below load torch

    from . import ruler
    from .corpus import ESSAY_BOOKS
    from .records import JsonlWriter, run_info, sample_key
    from .resume import plan_resume
    from .runner import Deadline

    deadline = Deadline(args.time_limit, start=common.START)
    tasks, lengths = args.tasks, args.lengths
    info = common.model_info(args)
    common.check_lengths(lengths, info, args, minimum=args.reserve + ruler.MIN_PROMPT_TOKENS)
    if any(ruler.task_spec(t).needs_texts for t in tasks):
        common.check_texts(ESSAY_BOOKS, args.texts_dir)
    device, dtype = common.device_and_dtype(args)
    out_jsonl = args.out / "ruler.jsonl"
    log = common.Log(args.out / "ruler.log")
    log(
        f"ruler: {len(tasks)} tasks × {lengths} × {args.samples} samples × methods {[m.name for m in methods]} "
        f"on {device} ({common.dtype_name(dtype)})"
    )
    configs = ruler_configs(
        methods,
        model_id=info.model_id,
        dtype=common.dtype_name(dtype),
        reserve=args.reserve,
        seed=args.seed,
        rope_scaling=info.rope_spec,
    )
    scope = ruler_scope(tasks, lengths, args.samples, methods, args.seed)
    plan = plan_resume(
        common.earlier_records([out_jsonl, *args.resume_from], log), "sample", sample_key, configs, scope
    )
    for line in plan.lines():
        log(line)
    # the prompts some method still needs, per (task, length): a resumed run builds no others
    needed: dict[tuple, set] = {}
    for key in scope - plan.done:
        needed.setdefault(key[:2], set()).add(key[2])
    indices = {cell: sorted(i) for cell, i in needed.items()}
    cells = [(t, L) for L in lengths for t in tasks if (t, L) in indices]
    if not cells:
        log(f"nothing to do: all {len(scope)} generations are done")
        return 0
    if args.time_limit is not None and args.time_limit < 60:
        log(
            f"time limit {args.time_limit:.0f}s is too short to load the model and run a batch; skipping "
            f"({len(cells)} (task, length) cells still have work)"
        )
        return 0
    samples = build_prompts(args, cells, log, indices=indices)
    model, tok = common.load_model(args, device, dtype)
    log(f"model loaded ({time.perf_counter() - common.START:.0f}s since start)")
    with JsonlWriter(out_jsonl, warn=log) as w:
        header = run_info(
            args, model, {"kind": "ruler", "methods": {m.name: m.config_dict() for m in methods}}, model_info=info
        )
        w.write([header])
        stats = run_batches(args, model, tok, samples, methods, w, lengths, plan.done, configs, header, deadline, log)
    log(
        f"ruler: {stats.done} generations in {stats.batches} batches (prefill {stats.prefill_s:.1f}s, decode "
        f"{stats.decode_s:.1f}s / {stats.decode_steps} steps); {len(plan.done)} already done; "
        f"{stats.left_for_later} left for a resumed run; {stats.failed} failed"
    )
    for e in stats.errors:
        log(f"FAILED: {e}")
    if not args.no_summary:
        from . import plots, tables

        data = tables.RulerData.from_records(common.earlier_records([out_jsonl, *args.resume_from], log).items)
        (args.out / "ruler_summary.md").write_text(tables.ruler_summary(data, n_resamples=args.resamples))
        if args.plots:
            plots.plot_ruler(data, args.out / "ruler.png", model=info.title)
        log(f"summary: {args.out / 'ruler_summary.md'}")
    return 0
