"""``delta-attn bench ...``: benchmark sub-commands (heavy imports stay inside the functions)."""

from __future__ import annotations

import argparse

# help texts of `bench layer` options that bench/layer.py leaves short; every one states its default
LAYER_HELP = {
    "methods": "any of cudnn, flash, sparse, delta, recompute, rows (dense-rows kernel alone), and Δ variants "
    "delta_<parts> (l<λ>, auto, global, x<percent> joined by '_', e.g. delta_l0.5, delta_x25) "
    "(default the first six)",
    "batch": "batch size (default 1)",
    "heads": "query heads (default 32, Llama-3-8B)",
    "kv_heads": "key/value heads (default 8)",
    "head_dim": "head dimension (default 128)",
    "dtype": "input dtype (default bf16)",
    "gamma": "anchor stride γ of delta / recompute (default 64)",
    "window": "sliding window of the sparse base (default 2048)",
    "sink": "attention-sink tokens of the sparse base (default 128)",
    "reps": "timed repetitions, fewer when one call is slow (default 10)",
    "budget": "seconds of timed calls per method and length (default 2)",
    "dense_once_above": "time dense SDPA from one call above this length (default 256K)",
    "dense_max": "skip dense SDPA above this length (default 1M)",
    "flash_max": "skip the FlashAttention-2 backend above this length (default 256K)",
    "nan_check": "--no-nan-check skips the finite-output check (default: checked)",
    "out": "directory for results.json, results.md, plot.png (default runs/bench-layer)",
}


def _layer(args: argparse.Namespace) -> int:
    from .layer import run

    return run(args)


def _e2e(args: argparse.Namespace) -> int:
    from .e2e import run

    return run(args)


def _e2e_report(args: argparse.Namespace) -> int:
    from .e2e_merge import run

    return run(args)


def register(subparsers) -> None:
    """Add ``bench`` (with ``layer``, ``e2e`` and ``e2e-report``) to the ``delta-attn`` command line."""
    from .layer import build_parser

    bench = subparsers.add_parser(
        "bench", help="benchmarks on a CUDA GPU", description="Benchmarks on a CUDA GPU (see BENCHMARKS.md)."
    )
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH")
    layer = sub.add_parser(
        "layer",
        help="per-layer prefill latency: SDPA dense vs sparse vs Δ (Llama-3-8B layer)",
        description="Per-layer prefill latency (see delta_attn/bench/layer.py).",
    )
    build_parser(layer)
    for action in layer._actions:
        action.help = LAYER_HELP.get(action.dest, action.help)
    layer.set_defaults(func=_layer)
    from .e2e_options import build_parser as build_e2e_parser

    e2e = sub.add_parser(
        "e2e",
        help="end-to-end prefill of a random-weight model (Llama-3-8B shape): dense vs sparse vs Δ vs recompute",
        description="End-to-end prefill: time to first token, tokens/s, peak memory (see delta_attn/bench/e2e.py).",
    )
    build_e2e_parser(e2e)
    e2e.set_defaults(func=_e2e)
    from .e2e_merge import build_parser as build_e2e_report_parser

    report = sub.add_parser(
        "e2e-report",
        help="one report (JSON, Markdown, log-log plot with dense's N² fit and Δ's floor) from several bench e2e runs",
        description="Merge the results.json of several `bench e2e` runs of one model on one device into one "
        "results.json, results.md and plot.png (see delta_attn/bench/e2e_merge.py).",
    )
    build_e2e_report_parser(report)
    report.set_defaults(func=_e2e_report)
    bench.set_defaults(func=lambda args: bench.print_help() or 2)
