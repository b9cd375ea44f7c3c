"""What every ``delta-attn`` command shares: option builders, argument types, user errors.

Rules this module enforces for the command line:

* Every bad input is caught **before** the model loads: argparse types and choices here, explicit
  checks in each command's ``run`` before :func:`delta_attn.models.load_model`. A user error is a
  :class:`UsageError`; ``delta-attn`` prints its one-line message and exits with status 2. Tracebacks
  are for bugs only.
* Nothing here imports torch or transformers at module level: ``delta-attn --help`` builds every
  parser and must stay fast.
* Mode, interpolation and backend names come from :mod:`delta_attn.config`, the one source of truth.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from .config import AUTO_CHUNK_ABOVE, AUTO_CHUNK_SIZE, BACKENDS, INTERPS, MODES

OVERFLOW_OPTION = "--allow-overflow"
#: the model dtypes ``--dtype`` accepts (eval plan's ``--dtype`` too, which matches records by it)
MODEL_DTYPES = ("float32", "bfloat16", "float16")


class UsageError(Exception):
    """A mistake in the command line or its inputs: reported in one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# argument types (argparse turns their ArgumentTypeError into "error: argument --x: <message>")


def positive_int(text: str) -> int:
    """An int >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An int >= 0."""
    return _int_at_least(text, 0)


def chunk_size_or_auto(text: str) -> int | str | None:
    """``--chunk-size`` of ``generate``: "auto" (kept as is, resolved by :func:`delta_attn.generation.prefill`),
    0 (None: the whole prompt in one forward) or tokens per chunk."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto', 0 (one forward) or a chunk size in tokens, got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 'auto' or >= 0 (0: one forward), got {value}")
    return value or None


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def _float(text: str, expected: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _unit_interval(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite float >= 0."""
    value = _float(text, "a number")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A float in [0, 1]."""
    return _unit_interval(_float(text, "a number in [0, 1]"))


def delta_scale(text: str) -> float | str:
    """λ of ``--delta-scale``: a number in [0, 1] or one of ``auto``/``auto-global``."""
    from .config import DELTA_SCALE_MODES

    if text in DELTA_SCALE_MODES:
        return text
    return _unit_interval(_float(text, f"a number in [0, 1] or one of {', '.join(DELTA_SCALE_MODES)}"))


def positive_int_list(text: str) -> list[int]:
    """A comma-separated list of ints >= 1 (``"1024,2048"``), at least one, duplicates dropped."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of positive integers, got nothing")
    values = [positive_int(t) for t in items]
    return list(dict.fromkeys(values))


def dense_layers(text: str) -> int | tuple[int, ...]:
    """``3`` (the first 3 layers) or ``0,5,7`` (those layers): ints >= 0."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected an int or a comma-separated list of ints")
    values = [nonnegative_int(t) for t in items]
    return values[0] if len(values) == 1 and "," not in text else tuple(values)


def device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` (whether CUDA exists is checked by :func:`check_device`)."""
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def _existing(text: str, kind: str = "") -> Path:
    """``text`` as a Path that exists (and, for ``kind`` "file" or "directory", is one)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if (kind == "file" and not path.is_file()) or (kind == "directory" and not path.is_dir()):
        raise argparse.ArgumentTypeError(f"{text} is not a {kind}")
    return path


def existing_path(text: str) -> Path:
    """A file or directory that exists."""
    return _existing(text)


def existing_dir(text: str) -> Path:
    """A directory that exists."""
    return _existing(text, "directory")


def gguf_file(text: str) -> Path:
    """An existing GGUF model file (checked by its 4-byte magic, not by its name)."""
    path = _existing(text, "file")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise argparse.ArgumentTypeError(f"{text} is not a GGUF model file")
    return path


def gguf_model_file(text: str) -> str:
    """``--gguf FILE`` (the deprecated spelling of ``--model FILE``): an existing GGUF file."""
    return str(gguf_file(text))


def output_path(text: str) -> Path:
    """A path to write to: must not be an existing directory, and its parent must be a directory (or creatable)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file name")
    _check_creatable(path.parent, text)
    return path


def output_dir(text: str) -> Path:
    """A directory to write into: an existing directory, or one that can be created."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    _check_creatable(path, text)
    return path


def _check_creatable(path: Path, text: str) -> None:
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise argparse.ArgumentTypeError(f"cannot create {text}: {p} is not a directory")
            return


def read_text_file(path: str | Path) -> str:
    """The UTF-8 text of ``path``; a missing, directory, binary or non-UTF-8 file is a :class:`UsageError`."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p} does not exist")
    if p.is_dir():
        raise UsageError(f"{p} is a directory, not a text file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {p}: {exc.strerror or exc}") from None
    return decode_text(data, str(p))


def decode_text(data: bytes, name: str) -> str:
    """``data`` as UTF-8 text; binary (NUL bytes) or undecodable input is a :class:`UsageError` naming ``name``."""
    if b"\x00" in data:
        raise UsageError(f"{name} looks binary (it contains NUL bytes); give a UTF-8 text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{name} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "convert it first, e.g. iconv -f latin1 -t utf-8"
        ) from None


# ---------------------------------------------------------------------------------------------
# checks that need more than one argument (run before the model loads)


def check_device(name: str | None) -> None:
    """``--device cuda`` on a machine without CUDA is a :class:`UsageError` (imports torch)."""
    if name is None or not name.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    index = int(name.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def check_fits_context(
    tokens: int, context: int, allow_overflow: bool, *, what: str = "the prompt", note: str = ""
) -> None:
    """The shared context-length check of ``generate``, ``demo`` and ``eval``.

    ``tokens`` (a prompt, or a nominal length) longer than the model's ``context`` is a
    :class:`UsageError` naming the option that allows it, unless ``allow_overflow``. ``note`` says where a
    rope-scaled context comes from (:attr:`delta_attn.models.ModelInfo.context_note`).
    """
    if tokens > context and not allow_overflow:
        raise UsageError(
            f"{what}: {tokens} tokens exceed the model's context of {context}{note}; shorten it, or pass "
            f"{OVERFLOW_OPTION} to run past the context anyway (outputs degrade)"
        )


def config_or_usage_error(make: Callable, what: str):
    """``make()``, with a ``ValueError``/``TypeError`` of :class:`DeltaConfig` validation turned into a UsageError."""
    try:
        return make()
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{what}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# option builders


def model_spec(text: str) -> str:
    """``--model``: a named model (``delta-attn models list``), a ``.gguf`` file or a Hugging Face folder.

    Checked cheaply here (no hashing, no download): an unknown name lists the names."""
    from .models.registry import check_spec

    try:
        return check_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def rope_scaling(text: str):
    """``--rope-scaling``: ``none``, ``yarn:FACTOR`` or ``yarn:FACTOR:ORIGINAL_CONTEXT``, as a
    :class:`~delta_attn.models.rope.RopeScaling` (None for ``none``)."""
    from .models.rope import parse_rope_scaling

    try:
        return parse_rope_scaling(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_command(subparsers, name: str, help: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of command ``name``: ``help`` in the command list, ``doc`` (its module docstring) as written
    at the top of its ``--help``."""
    return subparsers.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_dense_layers_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dense-layers",
        type=dense_layers,
        default=0,
        help="layers kept dense: an int k (the first k) or a list like 0,1,5 (default 0)",
    )


def add_model_options(p: argparse.ArgumentParser, *, dtype: bool = False, rope: bool = True) -> None:
    """``--model --device --threads`` (``--dtype`` and ``--rope-scaling`` too when asked): which model runs where."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        type=model_spec,
        default=None,
        metavar="NAME|PATH",
        help="smollm2-135m (default), qwen2.5-coder-1.5b (fetch it first: delta-attn models pull NAME), "
        "a .gguf file or a Hugging Face model folder",
    )
    if rope:
        g.add_argument(
            "--rope-scaling",
            type=rope_scaling,
            default=None,
            metavar="none|yarn:F[:N]",
            help="stretch RoPE to run past the trained context: yarn:4 (factor 4 over the model's context) or "
            "yarn:4:32768 (over N tokens); applied as the model loads, recorded with every result (default none)",
        )
    # the option's old name, for GGUF files only (kept so existing scripts run; not shown in --help)
    g.add_argument("--gguf", dest="model", type=gguf_model_file, help=argparse.SUPPRESS)
    g.add_argument(
        "--device", type=device, default=None, help="cpu, cuda or cuda:N (default cuda if available, else cpu)"
    )
    if dtype:
        g.add_argument(
            "--dtype",
            default=None,
            choices=MODEL_DTYPES,
            help="model dtype (default bfloat16 on CUDA, float32 on CPU)",
        )
    g.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")


def add_method_options(
    p: argparse.ArgumentParser,
    *,
    window: int,
    sink: int,
    gamma: int,
    interps: Sequence[str] = INTERPS,
    base_option: str = "--sparse",
) -> None:
    """The sparse base and Δ parameters: ``--sparse/--base --window --sink --gamma --interp --tail``."""
    g = p.add_argument_group("prefill method")
    g.add_argument(
        base_option,
        dest="sparse",
        metavar=base_option.lstrip("-").upper(),
        default="streaming",
        help="sparse base: streaming, vertical_slash, topk, block or dense (default streaming)",
    )
    g.add_argument("--window", type=positive_int, default=window, help=f"sliding window of the base (default {window})")
    g.add_argument("--sink", type=nonnegative_int, default=sink, help=f"attention-sink tokens (default {sink})")
    g.add_argument("--gamma", type=positive_int, default=gamma, help=f"anchor stride γ (default {gamma})")
    g.add_argument(
        "--interp",
        default="repeat",
        choices=tuple(interps),
        help="how Δ spreads over a γ-block (default repeat, the paper's)",
    )
    g.add_argument("--tail", type=nonnegative_int, default=None, help="minimum exact tail rows (default max(128, γ))")
    g.add_argument(
        "--delta-scale",
        type=delta_scale,
        default=1.0,
        help="λ of the Δ broadcast: a number in [0, 1] (0 = recompute), auto (causal least squares per head) "
        "or auto-global (non-causal) (default 1.0, the paper's)",
    )
    g.add_argument(
        "--extra-anchors",
        type=fraction,
        default=0.0,
        help="fraction of γ-blocks given a second dense row where Δ changes most (non-causal; default 0)",
    )


def delta_config(args: argparse.Namespace, what: str = "prefill method", **overrides):
    """The :class:`DeltaConfig` of the method options in ``args`` (every field the command has, see
    :func:`delta_attn.methods.settings_from_args`) with ``overrides``; invalid settings: a :class:`UsageError`."""
    from .config import DeltaConfig
    from .methods import settings_from_args

    return config_or_usage_error(lambda: DeltaConfig(**{**settings_from_args(args), **overrides}), what)


def add_mode_option(p: argparse.ArgumentParser, default: str = "delta") -> None:
    p.add_argument(
        "--mode", default=default, choices=MODES, help=f"prefill method (default {default}); decode is always dense"
    )


def add_backend_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="delta_attention backend (default auto: Triton on CUDA, else the PyTorch reference)",
    )


def add_chunk_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--chunk-size",
        type=positive_int,
        default=None,
        help="prefill in chunks of this many tokens (default: the whole prompt in one chunk)",
    )


def add_auto_chunk_option(p: argparse.ArgumentParser) -> None:
    """``--chunk-size`` defaulting to "auto" (:func:`delta_attn.generation.resolve_chunk_size`'s rule)."""
    p.add_argument(
        "--chunk-size",
        type=chunk_size_or_auto,
        default="auto",
        help=f"prefill in chunks of this many tokens into the in-place KV cache; 0: the whole prompt in one "
        f"forward (default auto: chunks of {AUTO_CHUNK_SIZE} for prompts over {AUTO_CHUNK_ABOVE} tokens with "
        "causal settings, which bounds activation memory at about the one-shot time; one forward otherwise)",
    )


def add_overflow_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        OVERFLOW_OPTION,
        action="store_true",
        help="allow prompts longer than the model's context (default: such a prompt is an error)",
    )


def setup_threads(threads: int | None) -> None:
    """Apply ``--threads`` (imports torch)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
