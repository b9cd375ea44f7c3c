"""What the ``eval`` commands share: their option builders (each command's ``register``), logging, the checks
that run before the model loads, the device/dtype, reading earlier results, and loading the model."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..cli_options import UsageError, check_device, check_fits_context, setup_threads

START = time.perf_counter()


class Log:
    """``log(msg)``: a timestamped line on stderr and in the command's log file."""

    def __init__(self, log_file: Path | None = None) -> None:
        self.log_file = log_file

    def __call__(self, msg: str) -> None:
        line = f"[{time.perf_counter() - START:7.1f}s] {msg}"
        print(line, file=sys.stderr, flush=True)
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with self.log_file.open("a", encoding="utf-8") as f:
                f.write(line + "\n")


def methods(args, specs: str | None = None, option: str = "--methods"):
    """``--methods`` (or ``specs``) as :class:`~delta_attn.methods.Method` objects; bad specs: UsageError."""
    from ..methods import parse_methods, settings_from_args

    try:
        return parse_methods(args.methods if specs is None else specs, settings_from_args(args))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{option}: {exc}") from None


def device_and_dtype(args) -> tuple:
    """(torch.device, torch.dtype) from ``--device``/``--dtype``/``--threads``, checked (imports torch)."""
    import torch

    check_device(args.device)
    setup_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return device, dtype


def model_info(args):
    """Facts of ``--model`` (context, layers, id for the records) read from its header or config.json; with
    ``--rope-scaling`` the context is the scaled one and the scaling is resolved (``yarn:4`` -> ``yarn:4:32768``)."""
    from ..models import model_info as info

    facts = info(args.model, rope_scaling=getattr(args, "rope_scaling", None))
    if facts.rope_scaling is not None:
        print(
            f"delta-attn: --rope-scaling {facts.rope_spec}: lengths up to {facts.context_length} tokens are allowed"
            f"{facts.context_note}; results past {facts.trained_context} are exploratory",
            file=sys.stderr,
            flush=True,
        )
    return facts


def check_lengths(lengths: Sequence[int], info, args, *, minimum: int = 1, what: str = "--lengths") -> None:
    """Each length >= ``minimum`` and within the context of the model ``info`` describes (a rope-scaled one's is
    factor × its trained context), unless ``--allow-overflow``."""
    for length in lengths:
        if length < minimum:
            raise UsageError(f"{what} {length}: must be at least {minimum}")
        check_fits_context(
            length, info.context_length, args.allow_overflow, what=f"{what} {length}", note=info.context_note
        )


def check_texts(books: Sequence[str], texts_dir) -> None:
    """The public-domain texts ``books`` are installed (else a TextsMissingError with the install hint)."""
    from .corpus import check_available

    check_available(books, texts_dir)


def earlier_records(paths: Sequence[Path], log: Log):
    """Every record of the output file and ``--resume-from``; unreadable lines are logged."""
    from .records import Records

    records = Records.load(paths)
    note = records.skipped_note()
    if note:
        log(note)
    return records


def load_model(args, device, dtype):
    """(model on ``device`` in ``dtype``, tokenizer); the model is parsed on the CPU once per process, and the
    cast keeps the rotary frequencies in float32 (:func:`delta_attn.models.load_model`)."""
    from ..models import load_model as load

    model, tok = load(args.model, device=device, dtype=dtype, rope_scaling=getattr(args, "rope_scaling", None))
    return model.eval(), tok


def task_prompts(args) -> list:
    """The ``--samples`` prompts of ``--task`` at ``--length`` (``--seed``, ``--reserve``) that ``eval analyze`` and
    ``eval needle`` study, built with the tokenizer alone; a length the task does not fit is a UsageError."""
    from ..models import load_tokenizer
    from . import ruler

    builder = ruler.PromptBuilder(load_tokenizer(args.model), texts_dir=args.texts_dir)
    try:
        return [
            ruler.generate_sample(builder, args.task, args.length, i, seed=args.seed, reserve=args.reserve)
            for i in range(args.samples)
        ]
    except ValueError as exc:
        raise UsageError(f"--length: {exc}") from None


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def prompt_settings(args, info, dtype) -> dict:
    """What an analysis of ``args.samples`` prompts of one task depends on besides its methods (model, dtype,
    seed, prompt): the ``config`` its result file records, compared before redoing it."""
    from . import ruler

    settings = {
        "model": info.model_id,
        "dtype": dtype_name(dtype),
        "seed": args.seed,
        "prompt": {
            "task": args.task,
            "length": args.length,
            "samples": args.samples,
            "reserve": args.reserve,
            "format": ruler.PROMPT_FORMAT,
        },
    }
    if info.rope_spec is not None:  # only when set: results written before the option keep matching unscaled runs
        settings["rope_scaling"] = info.rope_spec
    return settings


def result_meta(path: Path) -> tuple[dict | None, bool]:
    """(recorded config, complete?) of an analysis result file (JSON, or .gz); (None, False) if unreadable."""
    import json

    from .records import open_text

    try:
        with open_text(path) as f:
            meta = json.load(f).get("meta", {})
    except (OSError, ValueError):
        return None, False
    return meta.get("config"), bool(meta.get("complete"))


# ---------------------------------------------------------------------------------------------
# option builders every eval command's ``register`` uses (nothing heavy is imported: ``--help`` stays fast)


def task_list(text: str) -> list[str]:
    """``--tasks``: a comma list of RULER tasks or groups, for argparse."""
    import argparse

    from .ruler import parse_tasks

    try:
        return parse_tasks(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def batch_sizes(text: str) -> str:
    """``--batch-size``: one size or per length (``1024:256,8192:96``), checked, for argparse."""
    import argparse

    from .runner import parse_batch_sizes

    try:
        parse_batch_sizes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_tasks_option(p, default: str, help: str) -> None:
    """``--tasks``: RULER tasks or groups (:func:`task_list`)."""
    p.add_argument("--tasks", type=task_list, default=default, help=help)


def add_int_list_option(p, flag: str, default: str | None, help: str, **more) -> None:
    """``flag``: a comma-separated list of positive ints (lengths, windows, γs ...)."""
    from ..cli_options import positive_int_list

    p.add_argument(flag, type=positive_int_list, default=default, help=help, **more)


def add_model_opts(p) -> None:
    """The model (``--model --device --dtype --threads``), the texts folder and ``--allow-overflow``."""
    from .. import cli_options as opt

    opt.add_model_options(p, dtype=True)
    g = p.add_argument_group("data")
    g.add_argument(
        "--texts-dir",
        type=opt.existing_dir,
        default=None,
        help="public-domain texts (default ~/.cache/delta-attn/texts; "
        "a folder made by `delta-attn eval pack-texts` works offline anywhere)",
    )
    opt.add_overflow_option(p)


def add_method_opts(p, default_methods: str, *, flag: str = "--methods", what: str = "method specs") -> None:
    """``--methods`` (or ``flag``) and the defaults their specs start from (the base, window, sink, γ, ...,
    backend)."""
    from .. import cli_options as opt

    p.add_argument(flag, default=default_methods, help=f"comma-separated {what} (default {default_methods})")
    opt.add_method_options(p, window=256, sink=64, gamma=64, base_option="--base")
    g = p.add_argument_group("other sparse bases (see delta_attn.methods for the spec syntax)")
    g.add_argument("--block-size", type=opt.positive_int, default=512, help="block base: block size (default 512)")
    g.add_argument(
        "--vertical-size", type=opt.nonnegative_int, default=512, help="vertical_slash: columns (default 512)"
    )
    g.add_argument(
        "--slash-size", type=opt.nonnegative_int, default=512, help="vertical_slash: diagonals (default 512)"
    )
    opt.add_backend_option(g)


def add_run_opts(
    p,
    *,
    methods: str,
    stem: str,
    methods_flag: str = "--methods",
    methods_what: str = "method specs",
    progress: bool = True,
    summary: bool = True,
) -> None:
    """The model and method options (``methods``: the default ``--methods``, or of ``methods_flag``), then
    ``--out --resume-from --time-limit`` of a resumable run (``stem``: what its records are), ``--no-progress``
    where it shows bars (``progress``) and ``--plots --no-summary`` where it writes a summary (``summary``)."""
    from .. import cli_options as opt

    add_model_opts(p)
    add_method_opts(p, methods, flag=methods_flag, what=methods_what)
    g = p.add_argument_group("run")
    g.add_argument("--out", type=opt.output_dir, required=True, help="output directory (required)")
    g.add_argument(
        "--resume-from",
        type=opt.existing_path,
        nargs="*",
        default=[],
        help=f"earlier result files/directories: their {stem} records with the same settings are not run again "
        "(default none; the output directory is always read)",
    )
    g.add_argument(
        "--time-limit",
        type=opt.nonnegative_float,
        default=None,
        help="seconds since start after which no new batch is started (default none; the run can be resumed)",
    )
    if progress:
        g.add_argument("--no-progress", action="store_true", help="no tqdm bars (default: bars on)")
    if not summary:
        return
    g.add_argument("--plots", action="store_true", help="also write PNG plots next to the summary (default off)")
    g.add_argument(
        "--no-summary",
        action="store_true",
        help="no Markdown summary, e.g. on a GPU machine without scipy (default: write one)",
    )


def add_seed_reserve(p) -> None:
    """``--seed`` of the prompts and ``--reserve`` (the answer's room)."""
    from ..cli_options import nonnegative_int
    from .ruler import DEFAULT_RESERVE

    p.add_argument("--seed", type=int, default=0, help="prompt seed (default 0)")
    p.add_argument(
        "--reserve",
        type=nonnegative_int,
        default=DEFAULT_RESERVE,
        help=f"prompt = length − reserve tokens, room for the answer (default {DEFAULT_RESERVE})",
    )


def add_ruler_work_opts(p, *, what: str = "decode batch size") -> None:
    """``--batch-size --prefill-tokens --workers``: how RULER prompts are built and run."""
    import os

    from ..cli_options import positive_int

    default = "1024:256,2048:256,4096:160,8192:96"
    p.add_argument(
        "--batch-size",
        type=batch_sizes,
        default=default,
        help=f"{what}, or per length: '1024:256,8192:96' (default {default})",
    )
    p.add_argument(
        "--prefill-tokens",
        type=positive_int,
        default=262144,
        help="prefill in micro-batches of at most this many tokens (default 262144)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=max(1, min(12, (os.cpu_count() or 2) - 2)),
        help="processes building prompts (default cpu_count − 2, at least 1, at most 12)",
    )


def add_prompt_opts(p, *, task: dict, length: int, samples: int, samples_help: str, methods: str) -> None:
    """``--task --length --samples --seed --reserve`` of an analysis of one task's prompts (``task``: the
    ``add_argument`` keywords of ``--task``), then the model and method options (default ``--methods``)."""
    from ..cli_options import positive_int

    p.add_argument("--task", **task)
    p.add_argument("--length", type=positive_int, default=length, help=f"nominal prompt length (default {length})")
    p.add_argument("--samples", type=positive_int, default=samples, help=samples_help)
    add_seed_reserve(p)
    add_model_opts(p)
    add_method_opts(p, methods)


def add_redo_opts(p, *, result: str, plots: str, force_help: str, time_limit_help: str) -> None:
    """``--out --plots --no-summary --force --time-limit`` of an analysis written as one ``result``.json."""
    from .. import cli_options as opt

    p.add_argument("--out", type=opt.output_dir, required=True, help="output directory (required)")
    p.add_argument("--plots", action="store_true", help=f"also write {plots} (default off)")
    p.add_argument("--no-summary", action="store_true", help=f"no {result}.md (default: write one)")
    p.add_argument("--force", action="store_true", help=force_help)
    p.add_argument("--time-limit", type=opt.nonnegative_float, default=None, help=time_limit_help)
