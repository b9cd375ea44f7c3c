"""What ``eval ruler``, ``eval ppl`` and ``eval analyze`` share: logging, the checks that run before the
model loads, the device/dtype, reading earlier results, and loading the model."""

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
    from ..models import model_info as info

    return info(args.gguf)


def check_lengths(lengths: Sequence[int], context: int, args, *, minimum: int = 1, what: str = "--lengths") -> None:
    """Each length >= ``minimum`` and within the model's context (unless ``--allow-overflow``)."""
    for length in lengths:
        if length < minimum:
            raise UsageError(f"{what} {length}: must be at least {minimum}")
        check_fits_context(length, context, args.allow_overflow, what=f"{what} {length}")


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
    """(model on ``device`` in ``dtype``, tokenizer); the model is parsed on the CPU once per process."""
    import torch

    from ..models import load_smollm2

    model, tok = load_smollm2(device="cpu", dtype=torch.float32, gguf_path=args.gguf)
    return model.to(device=device, dtype=dtype).eval(), tok


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def prompt_settings(args, info, dtype) -> dict:
    """What an analysis of ``args.samples`` prompts of one task depends on besides its methods (model, dtype,
    seed, prompt): the ``config`` its result file records, compared before redoing it."""
    from . import ruler

    return {
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
