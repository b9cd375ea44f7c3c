"""The ``delta-attn`` command line: ``demo``, ``generate``, ``bench``, ``eval``, ``serve``, ``models``.

Each sub-command lives in its own module with a ``register(subparsers)`` function that adds its
parser and sets ``func``; this file only wires them together. Modules keep heavy imports (torch,
transformers) inside their ``func`` so ``delta-attn --help`` stays fast.

A user error (:class:`delta_attn.cli_options.UsageError`, a missing model or text wheel) prints one
line and exits with status 2; argparse reports malformed options the same way (one line naming the
command and ``--help``: the usage block is printed by ``--help`` only). Anything else is a bug and
keeps its traceback.

A command may end its process itself when it is done (``fast_exit`` in its defaults; ``serve`` does):
run as the program (``argv`` None), :func:`main` then flushes and leaves with ``os._exit`` instead of
waiting 1–3 s for the interpreter to tear down torch and transformers.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# OpenMP threads that spin while waiting steal the CPU from each other when the cores are shared (2 busy
# cores: 6 s instead of 0.5 s for generate's first token). Only effective if torch is not imported yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# sub-command -> module providing register(subparsers)
SUBCOMMANDS = {
    "demo": "delta_attn.demo",
    "generate": "delta_attn.cli_generate",
    "bench": "delta_attn.bench.cli",
    "eval": "delta_attn.eval.cli",
    "serve": "delta_attn.serve.cli",
    "models": "delta_attn.models.cli",
}


class OneLineErrors(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``delta-attn generate: error: ... (see delta-attn generate
    --help)``, exit status 2. argparse's default prints the whole usage block (12–22 lines) before it."""

    def error(self, message: str):
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="delta-attn", description="Δ attention: fast and accurate long-context prefill.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"delta-attn {__version__}")
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
    from .cli_options import UsageError
    from .data.texts import TextsMissingError
    from .models import ModelMissingError, RopeScalingError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = int(args.func(args) or 0)
    except (UsageError, ModelMissingError, TextsMissingError, RopeScalingError) as exc:
        sub = (getattr(args, "eval_command", None), getattr(args, "bench_command", None))
        command = " ".join(x for x in (args.command, *sub) if x)
        print(f"delta-attn {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("delta-attn: interrupted", file=sys.stderr)
        return 130
    if argv is None and getattr(args, "fast_exit", False):
        _exit_now(rc)
    return rc


def _exit_now(rc: int) -> None:
    """End the process without the interpreter's teardown: for a command that stopped cleanly (its threads
    finished, its clients answered), the teardown of torch and transformers only adds 1–3 s."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
