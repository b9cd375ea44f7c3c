"""``delta-attn eval plan``: estimate the GPU time of the full evaluation from a cost model
(:mod:`delta_attn.eval.plan`)."""

from __future__ import annotations

NAME = "plan"
HELP = "estimate the GPU time of the full evaluation (cost model)"


def add_arguments(p) -> None:
    """``eval plan``'s options."""
    from ..cli_options import nonnegative_float, positive_int

    p.add_argument(
        "--tflops", type=nonnegative_float, default=400.0, help="effective bf16 TFLOP/s of big matmuls (default 400)"
    )
    p.add_argument(
        "--attn-tflops", type=nonnegative_float, default=250.0, help="effective TFLOP/s of attention (default 250)"
    )
    p.add_argument(
        "--step-ms", type=nonnegative_float, default=20.0, help="ms per decode step (HF, 30 layers; default 20)"
    )
    p.add_argument("--samples", type=positive_int, default=50, help="samples per task and length (default 50)")


def run(args) -> int:
    from .plan import print_plan

    print_plan(args)
    return 0
