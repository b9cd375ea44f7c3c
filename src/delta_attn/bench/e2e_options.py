"""The options of ``delta-attn bench e2e``: model shapes, methods, lengths, the parser and its checks (``validate``)."""

from __future__ import annotations

import argparse
import os

from ..cli_options import UsageError, add_backend_option, check_device, model_spec, nonnegative_float, positive_int
from .layer import parse_length

# the attention-relevant shape of each model family; weights are random, so only the sizes matter
SHAPES = {
    "llama-3-8b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        rope_theta=500000.0,
    ),
    "llama-3.2-1b": dict(
        model_type="llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
    "llama-3.2-3b": dict(
        model_type="llama",
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
    "qwen2.5-7b": dict(
        model_type="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        head_dim=128,
        vocab_size=152064,
        rope_theta=1000000.0,
    ),
    "tiny": dict(  # CPU tests: the same code path in seconds
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=256,
        rope_theta=10000.0,
    ),
}
METHODS = ("dense", "sparse", "delta", "recompute")
LENGTHS = "32K,64K,128K,256K"
SDPA_BACKENDS = ("cudnn", "flash", "efficient")
CHUNK_CACHES = ("preallocated", "dynamic")


# ---- the command line ----------------------------------------------------------------------------


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="delta-attn bench e2e", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model-shape", default="llama-3-8b", help=f"one of {', '.join(SHAPES)} (default llama-3-8b; random weights)"
    )
    p.add_argument(
        "--model",
        type=model_spec,
        default=None,
        metavar="NAME|PATH",
        help="time a real model instead of a random shape: a name (delta-attn models list), a .gguf file or a "
        "Hugging Face folder; one device or --parallel cp (default: none, --model-shape's random weights)",
    )
    p.add_argument("--layers", type=positive_int, default=None, help="keep only the first L layers (default all)")
    p.add_argument("--lengths", default=LENGTHS, help=f"comma-separated prompt lengths, K = 1024 (default {LENGTHS})")
    p.add_argument("--methods", default=",".join(METHODS), help=f"any of {', '.join(METHODS)} (default all)")
    p.add_argument(
        "--chunk-size",
        default="0",
        help="comma-separated chunk sizes for chunked_prefill; 0 = one forward (default 0; e.g. 0,16384)",
    )
    p.add_argument(
        "--chunk-methods",
        default="sparse,delta,recompute",
        help="methods that also run chunked (default sparse,delta,recompute; dense never does)",
    )
    p.add_argument("--chunk-lengths", default="", help="lengths at which chunked cells run (default: every length)")
    p.add_argument(
        "--chunk-cache",
        default="preallocated",
        help="KV cache of the chunked cells: preallocated (written in place; default), dynamic "
        "(transformers' DynamicCache: concatenates per chunk), or both",
    )
    p.add_argument("--gamma", type=positive_int, default=64, help="anchor stride γ (default 64)")
    p.add_argument("--window", type=positive_int, default=2048, help="sliding window of the sparse base (default 2048)")
    p.add_argument("--sink", type=positive_int, default=128, help="attention-sink tokens (default 128)")
    p.add_argument(
        "--reps", type=positive_int, default=1, help="timed runs per cell; the fastest is reported (default 1)"
    )
    p.add_argument("--warmup-length", default="4096", help="tokens of the untimed warm-up runs (default 4096)")
    p.add_argument(
        "--profile-length",
        default="",
        help="after the timed cells, profile one one-shot prefill per method at this length (K/M suffixes) under "
        "torch.profiler: device time per kernel category (attention, matmul, copy, other) and the top kernels "
        "(default: no profile; one device only)",
    )
    p.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the warm-up: the first cell of each method pays compilation (default: warm-up on)",
    )
    p.add_argument(
        "--dense-backend",
        default="auto",
        help="SDPA backend of dense: auto (default: at each length, one call of the model's attention is timed per "
        "backend and the fastest runs that length's dense cell; the cells record their backend and the timings) or "
        "one of cudnn, flash, efficient (forced at every length)",
    )
    p.add_argument("--time-limit", type=nonnegative_float, default=0.0, help="seconds for all cells (default 0: none)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (tiny sizes: the code path, for tests)")
    p.add_argument(
        "--parallel",
        default="none",
        help="none (one device, default), cp (context parallel) or tp (tensor parallel) over the ranks of torchrun",
    )
    p.add_argument(
        "--tp-dir",
        default="",
        help="where --parallel tp saves the random model for the ranks to load (default: a folder in the temp dir)",
    )
    p.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        choices=("inductor", "inductor-stock"),
        help="torch.compile each decoder layer (delta_attn.compiled.compile_layers) with the attention call left "
        "eager, in every column (dense through the same SDPA function): fuses the model's own elementwise work, "
        "so the columns differ in attention only. inductor (what --compile alone means): int64 indexing where a "
        "size depends on the prompt length, so no length recompiles; inductor-stock: inductor's own int32 guards "
        "(default: eager layers; one device only)",
    )
    p.add_argument("--seed", type=int, default=0, help="weights and prompt seed (default 0)")
    add_backend_option(p)  # Δ's backend: auto (Triton on CUDA), triton, fa4 (FlashAttention 4's kernels), reference
    p.add_argument(
        "--kernel-config",
        default="",
        help='JSON file {"dense": {...}, "sparse": {...}} of launch configs for the Triton kernels (what '
        "`python -m delta_attn.bench.launch` writes as best_<N>.json; default: the ones in the code)",
    )
    p.add_argument(
        "--out",
        default="runs/bench-e2e",
        help="directory for results.json, results.md, plot.png (default runs/bench-e2e)",
    )
    return p


def model_label(args) -> str:
    """How results name the model: ``--model`` as given, else the random shape's name."""
    return str(args.model) if getattr(args, "model", None) is not None else f"{args.model_shape} shape"


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def validate(args: argparse.Namespace) -> dict:
    """Check every option before anything heavy runs; returns the parsed lists. Raises UsageError."""
    if args.model_shape not in SHAPES:
        raise UsageError(f"--model-shape {args.model_shape!r}: choose one of {', '.join(SHAPES)}")
    methods = _csv(args.methods)
    bad = [m for m in methods if m not in METHODS]
    if not methods or bad:
        raise UsageError(f"--methods: unknown {bad or 'empty list'}; choose from {', '.join(METHODS)}")
    try:
        lengths = [parse_length(x) for x in _csv(args.lengths)]
        warm = parse_length(args.warmup_length)
        chunks = [int(x) for x in _csv(args.chunk_size)]
    except (ValueError, IndexError):
        raise UsageError(
            "--lengths / --warmup-length / --chunk-size: expected integers (K/M suffixes for lengths), "
            f"got {args.lengths!r} / {args.warmup_length!r} / {args.chunk_size!r}"
        ) from None
    chunk_methods = _csv(args.chunk_methods)
    if [m for m in chunk_methods if m not in METHODS or m == "dense"]:
        raise UsageError(f"--chunk-methods: choose from sparse, delta, recompute, got {args.chunk_methods!r}")
    try:
        chunk_lengths = [parse_length(x) for x in _csv(args.chunk_lengths)] or None
    except (ValueError, IndexError):
        raise UsageError(
            f"--chunk-lengths: expected lengths (K/M suffixes allowed), got {args.chunk_lengths!r}"
        ) from None
    try:
        profile_length = parse_length(args.profile_length) if args.profile_length else None
    except (ValueError, IndexError):
        raise UsageError(
            f"--profile-length: expected a length (K/M suffixes allowed), got {args.profile_length!r}"
        ) from None
    if profile_length is not None and args.parallel != "none":
        raise UsageError("--profile-length profiles on one device: leave out --parallel")
    if getattr(args, "compile", False) and args.parallel != "none":
        raise UsageError("--compile runs on one device: leave out --parallel")
    if getattr(args, "kernel_config", "") and not os.path.isfile(args.kernel_config):
        raise UsageError(f"--kernel-config {args.kernel_config!r}: no such file")
    chunk_caches = _csv(args.chunk_cache)
    if not chunk_caches or [x for x in chunk_caches if x not in CHUNK_CACHES]:
        raise UsageError(f"--chunk-cache: choose from {', '.join(CHUNK_CACHES)}, got {args.chunk_cache!r}")
    if not lengths or min(lengths) < 2:
        raise UsageError(f"--lengths: expected prompt lengths >= 2, got {args.lengths!r}")
    if warm < 2:
        raise UsageError(f"--warmup-length must be >= 2, got {args.warmup_length!r}")
    if not chunks or min(chunks) < 0:
        raise UsageError(f"--chunk-size: expected sizes >= 0 (0 = one forward), got {args.chunk_size!r}")
    if args.dense_backend not in ("auto", *SDPA_BACKENDS):
        raise UsageError(f"--dense-backend {args.dense_backend!r}: choose auto or one of {', '.join(SDPA_BACKENDS)}")
    if args.device not in ("cuda", "cpu") and not args.device.startswith("cuda:"):
        raise UsageError(f"--device {args.device!r}: use cuda, cuda:N or cpu")
    if args.parallel not in ("none", "cp", "tp"):
        raise UsageError(f"--parallel {args.parallel!r}: choose none, cp or tp")
    if args.parallel != "none" and "WORLD_SIZE" not in os.environ:
        raise UsageError(
            f"--parallel {args.parallel} runs one process per GPU: launch it with torchrun, e.g. python -m "
            f"torch.distributed.run --standalone --nproc-per-node 2 -m delta_attn.bench.e2e --parallel {args.parallel}"
        )
    if args.parallel == "cp":
        if any(chunks):
            raise UsageError("--parallel cp prefills in one call per rank: use --chunk-size 0")
    n_layers = SHAPES[args.model_shape]["num_hidden_layers"]
    if getattr(args, "model", None) is not None:
        from ..models import model_info

        if args.parallel == "tp":
            raise UsageError("--model with --parallel tp is not supported: tp times a random --model-shape")
        n_layers = model_info(args.model).num_layers
    if args.layers is not None and args.layers > n_layers:
        raise UsageError(f"--layers {args.layers}: {model_label(args)} has {n_layers} layers")
    check_device(args.device)
    return dict(
        methods=methods,
        lengths=lengths,
        chunks=sorted(set(chunks)),
        warmup_length=warm,
        chunk_methods=chunk_methods,
        chunk_lengths=chunk_lengths,
        chunk_caches=list(dict.fromkeys(chunk_caches)),
        profile_length=profile_length,
    )
