"""``delta-attn eval ruler|ppl|calibrate|sweep|analyze|needle|report|pack-texts|plan``: the evaluation commands.

Examples::

    delta-attn eval ruler --tasks niah_single_1,vt --lengths 1024,2048 --samples 50 \\
        --methods dense,sparse,delta --out runs/r1
    delta-attn eval ppl --lengths 8192 --docs 29 --methods dense,sparse,recompute,delta,delta_linear --out runs/p1
    delta-attn eval ppl --lengths 8192 --docs 29 --continuation 256,1024 --methods dense,sparse,delta --out runs/c1
    delta-attn eval calibrate --model qwen2.5-coder-1.5b --sink 128 --window 2048 --out runs/cal1
    delta-attn eval sweep --windows 128,256,512,1024 --gammas 8,16,32,64 --length 8192 --samples 20 \\
        --continuation 1024 --ppl-docs 8 --methods delta,recompute --out runs/s1
    delta-attn eval analyze --task niah_single_2 --length 4096 --samples 4 --out runs/a1
    delta-attn eval report --inputs runs/r1 runs/p1 runs/a1 --out RESULTS.md --plots-dir docs/results

Method specs (``--methods``) are documented in :mod:`delta_attn.methods`: ``dense``, ``sparse``,
``recompute``, ``delta``, ``delta_g16``, ``block``, ``block+delta``, ``vs+delta``, ``delta_ema0.9`` ...
Each command is one module (``cli_ruler``, ``cli_ppl``, ``cli_calibrate``, ``cli_sweep``, ``cli_analyze``,
``cli_needle``, ``cli_report``, ``cli_pack_texts``, ``cli_plan``): its ``NAME`` and ``HELP``, its options
(``add_arguments``; the shared ones are built in ``cli_common``) and ``run(args)``; this module only assembles
them. Heavy imports (torch, transformers) happen inside ``run``.
"""

from __future__ import annotations


def register(subparsers) -> None:
    from .. import cli_options as opt
    from .. import methods
    from . import (
        cli_analyze,
        cli_calibrate,
        cli_needle,
        cli_pack_texts,
        cli_plan,
        cli_ppl,
        cli_report,
        cli_ruler,
        cli_sweep,
    )

    p = opt.add_command(subparsers, "eval", "evaluation: RULER-style tasks, perplexity, analysis, report", __doc__)
    sub = p.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND", required=True)
    commands = (
        cli_ruler,
        cli_ppl,
        cli_calibrate,
        cli_sweep,
        cli_analyze,
        cli_needle,
        cli_report,
        cli_pack_texts,
        cli_plan,
    )
    for command in commands:
        parser = opt.add_command(sub, command.NAME, command.HELP, command.__doc__)
        if getattr(command, "METHOD_SPECS", False):  # --help ends with the spec syntax
            parser.epilog = "method specs:\n" + methods.__doc__.split("\n", 2)[2]
        command.add_arguments(parser)
        parser.set_defaults(func=command.run)
