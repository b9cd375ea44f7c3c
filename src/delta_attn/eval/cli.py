"""``delta-attn eval ruler|ppl|sweep|analyze|report|pack-texts|plan``: the parsers.

Examples::

    delta-attn eval ruler --tasks niah_single_1,vt --lengths 1024,2048 --samples 50 \\
        --methods dense,sparse,delta --out runs/r1
    delta-attn eval ppl --lengths 8192 --docs 29 --methods dense,sparse,recompute,delta,delta_linear --out runs/p1
    delta-attn eval ppl --lengths 8192 --docs 29 --continuation 256,1024 --methods dense,sparse,delta --out runs/c1
    delta-attn eval sweep --windows 128,256,512,1024 --gammas 8,16,32,64 --length 8192 --samples 20 \\
        --continuation 1024 --ppl-docs 8 --methods delta,recompute --out runs/s1
    delta-attn eval analyze --task niah_single_2 --length 4096 --samples 4 --out runs/a1
    delta-attn eval report --inputs runs/r1 runs/p1 runs/a1 --out RESULTS.md --plots-dir docs/results

Method specs (``--methods``) are documented in :mod:`delta_attn.methods`: ``dense``, ``sparse``,
``recompute``, ``delta``, ``delta_g16``, ``block``, ``block+delta``, ``vs+delta``, ``delta_ema0.9`` ...
Each command lives in its own module (``cli_ruler``, ``cli_ppl``, ``cli_analyze``, ``cli_report``);
heavy imports (torch, transformers) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import cli_options as opt
from ..cli_options import nonnegative_float, nonnegative_int, positive_int, positive_int_list
from .ruler import DEFAULT_RESERVE, TASK_NAMES


def _tasks(text: str) -> list[str]:
    from .ruler import parse_tasks

    try:
        return parse_tasks(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _batch_sizes(text: str) -> str:
    from .runner import parse_batch_sizes

    try:
        parse_batch_sizes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _model_opts(p: argparse.ArgumentParser) -> None:
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


def _method_opts(p: argparse.ArgumentParser, default_methods: str) -> None:
    p.add_argument(
        "--methods", default=default_methods, help=f"comma-separated method specs (default {default_methods})"
    )
    opt.add_method_options(p, window=256, sink=64, gamma=64, base_option="--base")
    g = p.add_argument_group("other sparse bases (see delta_attn.methods for the spec syntax)")
    g.add_argument("--block-size", type=positive_int, default=512, help="block base: block size (default 512)")
    g.add_argument("--vertical-size", type=nonnegative_int, default=512, help="vertical_slash: columns (default 512)")
    g.add_argument("--slash-size", type=nonnegative_int, default=512, help="vertical_slash: diagonals (default 512)")
    opt.add_backend_option(g)


def _run_opts(p: argparse.ArgumentParser, *, stem: str) -> None:
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
        type=nonnegative_float,
        default=None,
        help="seconds since start after which no new batch is started (default none; the run can be resumed)",
    )
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars (default: bars on)")
    g.add_argument("--plots", action="store_true", help="also write PNG plots next to the summary (default off)")
    g.add_argument(
        "--no-summary",
        action="store_true",
        help="no Markdown summary, e.g. on a GPU machine without scipy (default: write one)",
    )


def _seed_reserve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="prompt seed (default 0)")
    p.add_argument(
        "--reserve",
        type=nonnegative_int,
        default=DEFAULT_RESERVE,
        help=f"prompt = length − reserve tokens, room for the answer (default {DEFAULT_RESERVE})",
    )


def register(subparsers) -> None:
    from .. import methods as _methods
    from . import cli_analyze, cli_ppl, cli_report, cli_ruler, cli_sweep

    spec_help = "method specs:\n" + _methods.__doc__.split("\n", 2)[2]
    p = subparsers.add_parser(
        "eval",
        help="evaluation: RULER-style tasks, perplexity, analysis, report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND", required=True)
    epilog = {"epilog": spec_help, "formatter_class": argparse.RawDescriptionHelpFormatter}

    r = sub.add_parser(
        "ruler",
        help="RULER-style tasks (13, offline), JSONL + Markdown summary",
        description=cli_ruler.__doc__,
        **epilog,
    )
    r.add_argument(
        "--tasks", type=_tasks, default="all", help="comma list of tasks, or all / niah / qa / non_qa (default all)"
    )
    r.add_argument(
        "--lengths",
        type=positive_int_list,
        default="1024,2048,4096,8192",
        help="nominal lengths, most important first (default 1024,2048,4096,8192)",
    )
    r.add_argument("--samples", type=positive_int, default=50, help="samples per task and length (default 50)")
    _seed_reserve(r)
    r.add_argument(
        "--batch-size",
        type=_batch_sizes,
        default="1024:256,2048:256,4096:160,8192:96",
        help="decode batch size, or per length: '1024:256,8192:96' (default 1024:256,2048:256,4096:160,8192:96)",
    )
    r.add_argument(
        "--prefill-tokens",
        type=positive_int,
        default=262144,
        help="prefill in micro-batches of at most this many tokens (default 262144)",
    )
    r.add_argument(
        "--workers",
        type=positive_int,
        default=max(1, min(12, (os.cpu_count() or 2) - 2)),
        help="processes building prompts (default cpu_count − 2, at least 1, at most 12)",
    )
    r.add_argument(
        "--resamples", type=positive_int, default=9999, help="permutation-test resamples in the summary (default 9999)"
    )
    _model_opts(r)
    _method_opts(r, "dense,sparse,recompute,delta")
    _run_opts(r, stem="sample")
    r.set_defaults(func=cli_ruler.run)

    q = sub.add_parser("ppl", help="PG-19-style perplexity by position range", description=cli_ppl.__doc__, **epilog)
    q.add_argument("--lengths", type=positive_int_list, default="8192", help="context lengths (default 8192)")
    q.add_argument(
        "--docs", type=positive_int, default=29, help="documents (windows of public-domain works; default 29)"
    )
    q.add_argument(
        "--batch-size", type=positive_int, default=None, help="documents per forward (default 16384 // length)"
    )
    q.add_argument(
        "--continuation",
        type=positive_int_list,
        default=None,
        metavar="M[,M2]",
        help="continuation perplexity instead of the row-wise one: prefill the first L − M tokens of each window "
        "with the method, score the last M densely against that cache, as decoding would (default off)",
    )
    _model_opts(q)
    _method_opts(q, "dense,sparse,recompute,delta,delta_g16")
    _run_opts(q, stem="ppl")
    q.set_defaults(func=cli_ppl.run)

    sw = sub.add_parser(
        "sweep",
        help="where Δ wins: a window × γ map of two methods on RULER tasks and continuation perplexity",
        description=cli_sweep.__doc__,
        **epilog,
    )
    sw.add_argument(
        "--windows", type=positive_int_list, default="128,256,512,1024", help="sparse windows (default %(default)s)"
    )
    sw.add_argument(
        "--gammas", type=positive_int_list, default="8,16,32,64", help="anchor strides γ (default %(default)s)"
    )
    sw.add_argument(
        "--first-window",
        type=positive_int,
        default=256,
        help="the window whose row runs first; the others follow nearest first (default 256)",
    )
    sw.add_argument("--length", type=positive_int, default=8192, help="prompt / window length (default 8192)")
    sw.add_argument(
        "--tasks",
        type=_tasks,
        default="niah_single_1,niah_single_2,niah_multikey_1,vt",
        help="RULER tasks (default %(default)s)",
    )
    sw.add_argument(
        "--samples", type=nonnegative_int, default=20, help="samples per task and cell; 0: no RULER (default 20)"
    )
    _seed_reserve(sw)
    sw.add_argument(
        "--continuation",
        type=positive_int_list,
        default="1024",
        metavar="M[,M2]",
        help="continuation-perplexity tail lengths (default 1024)",
    )
    sw.add_argument(
        "--ppl-docs", type=nonnegative_int, default=8, help="perplexity documents per cell; 0: none (default 8)"
    )
    sw.add_argument(
        "--batch-size",
        type=_batch_sizes,
        default="1024:256,2048:256,4096:160,8192:96",
        help="RULER decode batch size, or per length (default 1024:256,2048:256,4096:160,8192:96)",
    )
    sw.add_argument(
        "--ppl-batch-size",
        type=positive_int,
        default=None,
        help="perplexity documents per forward (default 16384 // length)",
    )
    sw.add_argument(
        "--prefill-tokens", type=positive_int, default=262144, help="prefill micro-batch tokens (default 262144)"
    )
    sw.add_argument(
        "--workers",
        type=positive_int,
        default=max(1, min(12, (os.cpu_count() or 2) - 2)),
        help="processes building prompts (default cpu_count − 2, at least 1, at most 12)",
    )
    _model_opts(sw)
    _method_opts(sw, "delta,recompute")
    _run_opts(sw, stem="sample and cppl")
    sw.set_defaults(func=cli_sweep.run)

    a = sub.add_parser(
        "analyze",
        help="the paper's analyses (Δ similarity vs γ, drift, Fig. 3) on captured q/k/v",
        description=cli_analyze.__doc__,
        **epilog,
    )
    a.add_argument(
        "--task",
        default="niah_single_2",
        choices=TASK_NAMES,
        help="task whose prompts are analysed (default %(default)s)",
    )
    a.add_argument("--length", type=positive_int, default=4096, help="nominal prompt length (default 4096)")
    a.add_argument(
        "--samples", type=positive_int, default=4, help="prompts (>= 2 for the cross-input cosine; default 4)"
    )
    _seed_reserve(a)
    a.add_argument(
        "--gammas",
        type=positive_int_list,
        default="2,4,8,16,32,64,128",
        help="γs of the similarity (default %(default)s)",
    )
    a.add_argument(
        "--sweep",
        default=cli_analyze.DEFAULT_SWEEP,
        help="method specs of the per-layer sweep ('' to skip; default: 17 configs)",
    )
    _model_opts(a)
    _method_opts(a, "sparse,recompute,delta,delta_g16")
    a.add_argument("--out", type=opt.output_dir, required=True, help="output directory (required)")
    a.add_argument("--plots", action="store_true", help="also write analysis.png and sweep.png (default off)")
    a.add_argument("--no-summary", action="store_true", help="no analysis.md (default: write one)")
    a.add_argument(
        "--force", action="store_true", help="redo even if an analysis with the same settings exists (default off)"
    )
    a.add_argument(
        "--resume-from",
        type=opt.existing_path,
        nargs="*",
        default=[],
        help="earlier result folders: an analysis there with the same settings is not redone (default none)",
    )
    a.add_argument(
        "--time-limit",
        type=nonnegative_float,
        default=None,
        help="seconds since start; later stages are skipped (default none)",
    )
    a.set_defaults(func=cli_analyze.run)

    from . import cli_needle  # eval needle: where the needle goes under each method (prompt formats)

    nd = sub.add_parser("needle", help="needle keys/values, decode attention on the needle, Δ per layer", **epilog)
    nd.description = cli_needle.__doc__
    nd.add_argument(
        "--task",
        type=cli_needle.task_name,
        default="niah_single_1",
        help="NIAH task, formats allowed (default %(default)s)",
    )
    nd.add_argument("--length", type=positive_int, default=8192, help="nominal prompt length (default 8192)")
    nd.add_argument("--samples", type=positive_int, default=8, help="prompts (default 8)")
    _seed_reserve(nd)
    _model_opts(nd)
    _method_opts(nd, "dense,sparse,recompute,delta")
    nd.add_argument("--out", type=opt.output_dir, required=True, help="output directory (required)")
    nd.add_argument("--plots", action="store_true", help="also write needle.png (default off)")
    nd.add_argument("--no-summary", action="store_true", help="no needle.md (default: write one)")
    nd.add_argument(
        "--force", action="store_true", help="redo a complete analysis with the same settings (default off)"
    )
    nd.add_argument(
        "--time-limit", type=nonnegative_float, default=None, help="seconds; later prompts skipped (default none)"
    )
    nd.set_defaults(func=cli_needle.run)

    rep = sub.add_parser(
        "report",
        help="RESULTS.md (tables, permutation tests, plots) from result files",
        description=cli_report.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rep.add_argument(
        "--inputs",
        nargs="+",
        required=True,
        type=opt.existing_path,
        help="result files or directories: ruler*.jsonl, ppl*.jsonl, sweep*.jsonl, analysis*.json, needle*.json, "
        ".gz too (required)",
    )
    rep.add_argument("--out", type=opt.output_path, default=Path("RESULTS.md"), help="output file (default RESULTS.md)")
    rep.add_argument(
        "--plots-dir", type=opt.output_dir, default=None, help="write PNG plots here and link them (default: no plots)"
    )
    rep.add_argument("--resamples", type=positive_int, default=9999, help="permutation-test resamples (default 9999)")
    rep.add_argument("--status", default=None, help="status line at the top (default: generated from the inputs)")
    rep.add_argument(
        "--notes",
        type=opt.existing_path,
        nargs="*",
        default=[],
        help="hand-written Markdown notes placed after the generated overview; each must name the run ids it "
        "describes in a first line '<!-- runs: ID ID ... -->' (default none)",
    )
    rep.set_defaults(func=cli_report.run)

    pk = sub.add_parser(
        "pack-texts",
        help="copy the texts the evaluation reads into one folder (for offline machines)",
        description="Copy the public-domain texts the evaluation reads into one folder (8 MB).",
    )
    pk.add_argument(
        "--out", type=opt.output_dir, default=Path(".data/texts"), help="target folder (default .data/texts)"
    )
    pk.add_argument(
        "--texts-dir", type=opt.existing_dir, default=None, help="source texts (default ~/.cache/delta-attn/texts)"
    )
    pk.set_defaults(func=_pack_texts)

    pl = sub.add_parser(
        "plan",
        help="estimate the GPU time of the full evaluation (cost model)",
        description="Estimate the GPU time of the full evaluation from a cost model (delta_attn.eval.cost).",
    )
    pl.add_argument(
        "--tflops", type=nonnegative_float, default=400.0, help="effective bf16 TFLOP/s of big matmuls (default 400)"
    )
    pl.add_argument(
        "--attn-tflops", type=nonnegative_float, default=250.0, help="effective TFLOP/s of attention (default 250)"
    )
    pl.add_argument(
        "--step-ms", type=nonnegative_float, default=20.0, help="ms per decode step (HF, 30 layers; default 20)"
    )
    pl.add_argument("--samples", type=positive_int, default=50, help="samples per task and length (default 50)")
    pl.set_defaults(func=_plan)


def _pack_texts(args) -> int:
    from .corpus import pack_texts

    out = pack_texts(args.out, args.texts_dir)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"packed {sum(1 for f in out.rglob('*.txt'))} texts ({size / 1e6:.1f} MB) into {out}")
    return 0


def _plan(args) -> int:
    from .cost import print_plan

    print_plan(args)
    return 0
