"""``delta-attn bench ...``: benchmark sub-commands (heavy imports stay inside the functions)."""

from __future__ import annotations

import argparse


def _layer(args: argparse.Namespace) -> int:
    from .layer import run

    return run(args)


def register(subparsers) -> None:
    """Add ``bench`` (with ``layer``) to the ``delta-attn`` command line."""
    from .layer import build_parser

    bench = subparsers.add_parser("bench", help="benchmarks on a CUDA GPU")
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH")
    layer = sub.add_parser(
        "layer",
        help="per-layer prefill latency: SDPA dense vs sparse vs Δ (Llama-3-8B layer)",
        description="Per-layer prefill latency (see delta_attn/bench/layer.py).",
    )
    build_parser(layer)
    layer.set_defaults(func=_layer)
    bench.set_defaults(func=lambda args: bench.print_help() or 2)
