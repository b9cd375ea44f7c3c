"""The ``delta-attn`` command line: ``demo``, ``generate``, ``bench``, ``eval``.

Each sub-command lives in its own module with a ``register(subparsers)`` function that adds its
parser and sets ``func``; this file only wires them together. Modules keep heavy imports (torch,
transformers) inside their ``func`` so ``delta-attn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command -> module providing register(subparsers)
SUBCOMMANDS = {
    "demo": "delta_attn.demo",
    "generate": "delta_attn.generate",
    "bench": "delta_attn.bench.cli",
    "eval": "delta_attn.eval.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="delta-attn", description="Δ attention: fast and accurate long-context prefill."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS.values():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("delta_attn"):
                continue  # sub-command not part of this build
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
