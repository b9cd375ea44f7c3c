"""``delta-attn eval plan``: the GPU minutes an ``eval ruler`` run will take, per method and length, from a cost
model of the model's shape (:mod:`delta_attn.eval.plan`), optionally calibrated on measured result files.

The model's shape (layers, widths, heads, vocabulary) is read without loading weights: a named model's from
the registry (no download needed), a .gguf file's from its header, a folder's from config.json.

``--calibrate PATH...`` fits the rates to the batch timings that ``eval ruler`` records carry and prints
recorded vs predicted seconds per method and length. Processes that shared one GPU slowed each other down:
``--concurrency auto`` (default) lays the runs of one PATH on a timeline from their start times and predicts
each recorded time as the batch's own GPU time plus the other runs' work meanwhile (a time-sliced GPU);
``--concurrency K`` predicts K times the batch's own time. The plan is in GPU minutes of exclusive use.

``--resume-from PATH...`` leaves out the generations earlier records already hold with the planned settings
(model, ``--dtype``, prompt, ``--seed`` and each method's config, matched as a resumed ``eval ruler`` matches
them): what is left of a run that goes on over several sessions.

Example (the 13 RULER tasks at 16K and 32K, 7 methods, 30 samples, on Qwen, calibrated on an H100 run, less
what the 2026-12-07 runs hold):

    delta-attn eval plan --model qwen2.5-coder-1.5b --lengths 16K,32K --samples 30 \\
        --methods dense,sparse,recompute,delta,delta_auto,delta_l0.5,delta_g16 \\
        --window 2048 --sink 128 --calibrate results/h100-2026-12-07b \\
        --resume-from results/h100-2026-12-07 results/h100-2026-12-07b
"""

from __future__ import annotations

import argparse

NAME = "plan"
HELP = "estimate the GPU minutes of an eval ruler run (cost model, calibratable from result files)"


def length_list(text: str) -> list[int]:
    """``--lengths``: comma-separated token counts, ``K`` = 1024 (``16K,32K`` = 16384,32768)."""
    values = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        scale = 1024 if item[-1] in "kK" else 1
        try:
            value = int(item[:-1] if scale > 1 else item) * scale
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected lengths like 4096 or 16K, got {item!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"lengths must be >= 1, got {item!r}")
        values.append(value)
    if not values:
        raise argparse.ArgumentTypeError("expected a comma-separated list of lengths, got nothing")
    return list(dict.fromkeys(values))


def concurrency(text: str) -> float | str:
    """``--concurrency``: ``auto`` or a number >= 1."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number >= 1, got {text!r}") from None
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def add_arguments(p) -> None:
    """``eval plan``'s options."""
    from .. import cli_options as opt
    from . import cli_common as common
    from .plan import DEFAULT_BATCH_SPEC, DEFAULT_PREFILL_TOKENS, DEFAULT_RATES

    g = p.add_argument_group("the run to plan")
    g.add_argument(
        "--model",
        type=opt.model_spec,
        default=None,
        metavar="NAME|PATH",
        help="smollm2-135m (default), qwen2.5-coder-1.5b (no download needed), a .gguf file or a Hugging Face folder",
    )
    common.add_tasks_option(g, "all", "comma list of tasks, or all / niah / qa / non_qa (default all)")
    g.add_argument(
        "--lengths",
        type=length_list,
        default=[1024, 2048, 4096, 8192],
        help="nominal lengths; K = 1024 (default 1024,2048,4096,8192)",
    )
    g.add_argument("--samples", type=opt.positive_int, default=50, help="samples per task and length (default 50)")
    g.add_argument(
        "--batch-size",
        type=common.batch_sizes,
        default=None,
        help="as eval ruler's (default: with --calibrate, as many tokens per batch as the records' largest batch "
        f"of this model; else eval ruler's default {DEFAULT_BATCH_SPEC})",
    )
    g.add_argument(
        "--prefill-tokens",
        type=opt.positive_int,
        default=None,
        help=f"as eval ruler's (default {DEFAULT_PREFILL_TOKENS})",
    )
    from .ruler import DEFAULT_RESERVE

    g.add_argument(
        "--reserve",
        type=opt.nonnegative_int,
        default=DEFAULT_RESERVE,
        help=f"prompt = length − reserve tokens, as eval ruler's (default {DEFAULT_RESERVE})",
    )
    g.add_argument(
        "--resume-from",
        type=opt.existing_path,
        nargs="+",
        default=None,
        metavar="PATH",
        help="earlier eval ruler result files or folders: generations they hold with the planned settings are "
        "left out of the plan, as a resumed eval ruler leaves them out (default none)",
    )
    g.add_argument(
        "--dtype",
        choices=opt.MODEL_DTYPES,
        default="bfloat16",
        help="the dtype the planned run uses, for --resume-from: records of another dtype are not counted "
        "(default bfloat16, eval ruler's on a GPU)",
    )
    g.add_argument("--seed", type=int, default=0, help="as eval ruler's, for --resume-from (default 0)")
    common.add_method_opts(p, "dense,sparse,recompute,delta")
    r = p.add_argument_group("rates (the starting point of --calibrate; defaults: an H200)")
    for flag, what in (
        ("--tflops", "prefill linear layers, effective TFLOP/s"),
        ("--attn-tflops", "prefill attention, effective TFLOP/s"),
        ("--layer-overhead-ms", "ms per layer and prefill forward of a non-dense method"),
        ("--step-layer-ms", "ms per layer and decode step (launches, Python)"),
        ("--hbm-tbs", "decode memory traffic (weights + 3 passes over the KV cache), TB/s"),
    ):
        dest = flag[2:].replace("-", "_")
        r.add_argument(
            flag,
            type=opt.nonnegative_float,
            default=DEFAULT_RATES[dest],
            help=f"{what} (default {DEFAULT_RATES[dest]:.3g})",
        )
    c = p.add_argument_group("calibration")
    c.add_argument(
        "--calibrate",
        type=opt.existing_path,
        nargs="+",
        default=None,
        metavar="PATH",
        help="eval ruler result files or folders (.jsonl[.gz]) whose batch timings the rates are fitted to "
        "(default none: the rates above)",
    )
    c.add_argument(
        "--concurrency",
        type=concurrency,
        default="auto",
        help="how the calibration runs shared the GPU: auto (the runs of one PATH time-sliced it, placed by their "
        "start times; default) or K (every batch took K times its own GPU time)",
    )


def run(args) -> int:
    from .plan import print_plan

    print_plan(args)
    return 0
