"""End-to-end prefill: ``delta-attn bench e2e``.

A whole model built from a config with random weights (nothing is downloaded; Llama-3-8B shape by
default, see :data:`SHAPES`), bf16 on one GPU. Each cell prefills a random prompt of N tokens with one
method and reports the time to first token (one forward with ``logits_to_keep=1`` plus the argmax;
``chunked_prefill`` for chunk sizes > 0), tokens/s and the peak memory allocated on the GPU:

* ``dense``: the model's own SDPA attention on the fastest SDPA backend that runs it (cuDNN, flash,
  efficient: timed at the warm-up length, the choice is stated in the output);
* ``sparse``, ``delta``, ``recompute``: :func:`delta_attn.enable` with those modes (Triton kernels).

Warm-up: before any timed cell, every (method, chunk size) runs once at ``--warmup-length`` tokens
(chunks scaled down to half of it), so Triton compilation and backend set-up are not timed; with
``--no-warmup`` the first cell pays them (``--reps 2`` then shows the cold and the warm call). Ratios
are against dense at the same length from the same run. A cell that runs out of memory is recorded
and the larger lengths of that method skipped; cells that would overrun ``--time-limit`` (a forecast
from the previous length) are skipped and marked. Dense chunked prefill is not run: a chunk over a
cached prefix needs a rectangular mask, which SDPA's flash/cuDNN backends do not take.

Context parallel (``--parallel cp``, under ``torchrun``: one process per GPU): every method's prefill
runs through :func:`delta_attn.distributed.cp_prefill`, each rank forwarding its shard of the prompt
(dense too, as ``mode="dense"`` through the same CP attention; one-shot only); a cell's time is the
slowest rank's, its peak memory the largest rank's. Tensor parallel (``--parallel tp``, under
``torchrun``): rank 0 saves the random model to ``--tp-dir`` once, every rank loads it with
transformers' head-sharding plan (``tp_plan="auto"``) and runs the cells as on one device (Δ on its
local heads, chunked too), with the same reductions. ``--device cpu`` runs the same code paths at tiny
sizes (the ``tiny`` shape, float32; gloo for CP and TP) for tests.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time

from ..cli_options import UsageError, check_device, model_spec, nonnegative_float, positive_int
from ..config import DEFAULT_CONFIG
from .layer import fmt_length, parse_length

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
        "(transformers' DynamicCache, chunked_prefill's own default: concatenates per chunk), or both",
    )
    p.add_argument("--gamma", type=positive_int, default=64, help="anchor stride γ (default 64)")
    p.add_argument("--window", type=positive_int, default=2048, help="sliding window of the sparse base (default 2048)")
    p.add_argument("--sink", type=positive_int, default=128, help="attention-sink tokens (default 128)")
    p.add_argument(
        "--reps", type=positive_int, default=1, help="timed runs per cell; the fastest is reported (default 1)"
    )
    p.add_argument("--warmup-length", default="4096", help="tokens of the untimed warm-up runs (default 4096)")
    p.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the warm-up: the first cell of each method pays compilation (default: warm-up on)",
    )
    p.add_argument(
        "--dense-backend",
        default="auto",
        help="auto (the fastest that runs, default) or one of cudnn, flash, efficient",
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
    p.add_argument("--seed", type=int, default=0, help="weights and prompt seed (default 0)")
    p.add_argument(
        "--out",
        default="runs/bench-e2e",
        help="directory for results.json, results.md, plot.png (default runs/bench-e2e)",
    )
    return p


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
    )


# ---- the model -----------------------------------------------------------------------------------


def build_model(shape: str, layers: int | None, max_len: int, device, dtype, seed: int):
    """A causal LM of ``shape`` with random weights, built directly on ``device`` (nothing downloaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPES[shape])
    model_type = spec.pop("model_type")
    if layers is not None:
        spec["num_hidden_layers"] = layers
    cfg = AutoConfig.for_model(model_type, max_position_embeddings=max_len + 1, **spec)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def model_label(args) -> str:
    """How results name the model: ``--model`` as given, else the random shape's name."""
    return str(args.model) if getattr(args, "model", None) is not None else f"{args.model_shape} shape"


def load_real_model(spec: str, layers: int | None, device, dtype):
    """``--model``: the real weights (:func:`delta_attn.models.load_model`), cut to the first ``layers``."""
    from ..models import load_model

    model, _ = load_model(spec, device=device, dtype=dtype)
    if layers is not None:
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
    return model.eval()


def build_tp_model(args, max_len: int, device, dtype, rank: int):
    """The random model sharded by heads over the ranks: rank 0 saves it once, every rank loads it with
    transformers' tensor-parallel plan (``tp_plan="auto"``); the saved copy is removed afterwards."""
    import shutil
    import tempfile

    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    path = args.tp_dir or os.path.join(tempfile.gettempdir(), f"delta-attn-e2e-tp-{args.model_shape}")
    if rank == 0:
        model = build_model(args.model_shape, args.layers, max_len, device, dtype, args.seed)
        model.save_pretrained(path)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    dist.barrier()
    try:  # transformers >= 5.18 takes the plan through a DistributedConfig
        from transformers import DistributedConfig

        how = dict(distributed_config=DistributedConfig(tp_plan="auto"))
    except ImportError:
        how = dict(tp_plan="auto")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa", **how).eval()
    dist.barrier()
    if rank == 0:
        shutil.rmtree(path, ignore_errors=True)
    return model


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- one cell ------------------------------------------------------------------------------------


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sdpa_context(backend: str | None):
    """A context manager that restricts SDPA to ``backend`` (None: PyTorch's own choice)."""
    import contextlib

    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
    }
    return sdpa_kernel([names[backend]])


def prefill(
    model, ids, method: str, chunk: int, delta_config, sdpa_backend: str | None, cache: str = "", parallel: str = "none"
):
    """One prefill of ``ids`` with ``method``; returns the last position's logits (B, vocab).

    ``cache`` (chunked only): ``"dynamic"`` is chunked_prefill's default transformers DynamicCache, else the
    in-place PreallocatedCache (``max_cache_len``). ``parallel="cp"``: this rank forwards its shard of
    ``ids`` (cp_prefill); with ``"tp"`` the model is sharded by heads and every rank runs the whole prompt as
    on one device."""
    import torch

    import delta_attn

    if parallel == "cp":
        import torch.distributed as dist

        from ..distributed import cp_prefill, shard_bounds

        lo, hi = shard_bounds(ids.shape[1], dist.get_world_size(), dist.get_rank())
        config = (delta_config or DEFAULT_CONFIG).replace(mode=method)
        return cp_prefill(model, ids[:, lo:hi], config=config).logits

    if method == "dense":
        delta_attn.disable(model)
    else:
        delta_attn.enable(model, delta_config.replace(mode=method))
    with torch.no_grad(), sdpa_context(sdpa_backend if method == "dense" else None):
        if chunk:
            if cache == "dynamic":  # chunked_prefill's default
                return delta_attn.chunked_prefill(model, ids, chunk_size=chunk).logits
            room = ids.shape[1] + delta_attn.hf.DECODE_ROOM  # the in-place cache, sized as for decoding after
            return delta_attn.chunked_prefill(model, ids, chunk_size=chunk, max_cache_len=room).logits
        return model(input_ids=ids, use_cache=True, logits_to_keep=1).logits[:, -1]


def run_cell(
    model, ids, method: str, chunk: int, delta_config, sdpa_backend, reps: int, cache: str = "", parallel: str = "none"
) -> dict:
    """Time ``reps`` prefills (TTFT: the forward(s) and the first token's argmax); peak memory over them."""
    import torch

    device = ids.device
    times, first = [], None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    logits = None
    for _ in range(reps):
        logits = None  # free the previous run's cache before the next one
        _sync(device)
        _barrier(parallel)
        t0 = time.perf_counter()
        logits = prefill(model, ids, method, chunk, delta_config, sdpa_backend, cache, parallel)
        first = logits.argmax(-1)
        _sync(device)
        times.append(_slowest(time.perf_counter() - t0, parallel, device))
    n = ids.shape[1]
    cell = dict(
        ttft_s=min(times),
        times_s=times,
        tokens_per_s=n * ids.shape[0] / min(times),
        first_token=first.tolist(),
        finite=bool(torch.isfinite(logits).all().item()),
    )
    if device.type == "cuda":  # over several ranks: the largest
        peak = _slowest(float(torch.cuda.max_memory_allocated(device)), parallel, device)
        cell["peak_gb"] = peak / 2**30
        cell["peak_over_weights_gb"] = (peak - base) / 2**30
    cell["logits"] = logits.float()  # compared with the one-shot cell, dropped before writing
    return cell


def _barrier(parallel: str) -> None:
    if parallel != "none":
        import torch.distributed as dist

        dist.barrier()


def _slowest(value: float, parallel: str, device) -> float:
    """``value`` on one device; over several ranks their maximum (the slowest rank, the largest peak)."""
    if parallel == "none":
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def setup_distributed(device_name: str):
    """(rank, world size, device) of this torchrun process; joins the default group if not joined yet."""
    import torch
    import torch.distributed as dist

    cuda = device_name.startswith("cuda")
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


# ---- the benchmark -------------------------------------------------------------------------------


def pick_dense_backend(model, ids, want: str, device, parallel: str = "none") -> tuple[str | None, dict]:
    """The SDPA backend dense runs on: ``want``, or with ``auto`` the fastest of those that run ``ids``."""
    if device.type != "cuda":
        return None, {}
    candidates = SDPA_BACKENDS if want == "auto" else (want,)
    timings = {}
    for be in candidates:
        try:
            prefill(model, ids, "dense", 0, None, be)  # compile / plan
            _sync(device)
            t0 = time.perf_counter()
            prefill(model, ids, "dense", 0, None, be)
            _sync(device)
            timings[be] = _slowest(time.perf_counter() - t0, parallel, device)  # the same choice on every rank
        except RuntimeError as exc:  # this backend refuses the shape (or GQA): try the next
            timings[be] = f"refused: {str(exc).splitlines()[0][:120]}"
    ok = {be: t for be, t in timings.items() if isinstance(t, float)}
    if not ok:
        raise RuntimeError(f"no SDPA backend runs the dense model: {timings}")
    return min(ok, key=ok.get), timings


def forecast(prev: dict | None, n: int, method: str) -> float:
    """Seconds a cell at ``n`` tokens should take, from the same method's previous length (0: unknown)."""
    if not prev or "ttft_s" not in prev[1]:
        return 0.0
    n0, cell = prev
    power = 2.0 if method == "dense" else 1.3
    return cell["ttft_s"] * len(cell["times_s"]) * (n / n0) ** power


def run_e2e(args: argparse.Namespace, opts: dict) -> dict:
    import torch

    from ..config import DeltaConfig

    t_start = time.perf_counter()
    par = args.parallel
    cp = par == "cp"
    rank, world, device = setup_distributed(args.device) if par != "none" else (0, 1, torch.device(args.device))
    log = print if rank == 0 else (lambda *a, **k: None)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lengths, chunks, methods = opts["lengths"], opts["chunks"], opts["methods"]
    if par == "tp":
        model = build_tp_model(args, max(lengths), device, dtype, rank)
    elif getattr(args, "model", None) is not None:
        model = load_real_model(args.model, args.layers, device, dtype)
    else:
        model = build_model(args.model_shape, args.layers, max(lengths), device, dtype, args.seed)
    if cp:  # the same weights on every rank, whatever the device's random streams do
        import torch.distributed as dist

        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)
    n_layers = model.config.num_hidden_layers
    weights_gb = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None
    delta_config = DeltaConfig(window=args.window, sink=args.sink, gamma=args.gamma, sparse="streaming")
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(args.seed)

    def prompt(n):
        return torch.randint(0, vocab, (1, n), generator=gen).to(device)

    # warm-up: every (method, chunk) once at the warm-up length, so compilation is not timed
    warm_n = opts["warmup_length"]
    warm_ids = prompt(warm_n)
    sdpa_backend, sdpa_timings = (None, {})
    if "dense" in methods and not cp:
        sdpa_backend, sdpa_timings = pick_dense_backend(model, warm_ids, args.dense_backend, device, par)
    warm_s, warm_cells = 0.0, {}
    if args.warmup:  # per cell: the first call of a (method, chunk) pays Triton compilation: recorded
        for m in methods:
            for c in chunks:
                if c and m not in opts["chunk_methods"]:
                    continue
                for cache in opts["chunk_caches"] if c else [""]:
                    _sync(device)
                    t0 = time.perf_counter()
                    prefill(model, warm_ids, m, min(c, max(1, warm_n // 2)), delta_config, sdpa_backend, cache, par)
                    _sync(device)
                    warm_cells[variant_name((m, c, cache))] = time.perf_counter() - t0
        warm_s = sum(warm_cells.values())
    log(
        f"model {model_label(args)} ({n_layers} layers, {count_params(model) / 1e9:.2f} B params, {dtype}) on "
        f"{device}; dense SDPA backend: {sdpa_backend or 'PyTorch default'} {sdpa_timings or ''}; "
        f"warm-up {'at ' + fmt_length(warm_n) + f' tokens, {warm_s:.1f} s' if args.warmup else 'off'}",
        flush=True,
    )

    cells, last_ok, failed = [], {}, set()
    for n in lengths:
        ids = prompt(n)
        one_shot_logits = {}
        for m in methods:
            for c, cache in [(size, kv) for size in chunks for kv in (opts["chunk_caches"] if size else [""])]:
                key = (m, c, cache)
                cell = dict(n=n, label=fmt_length(n), method=m, chunk=c, cache=cache)
                cells.append(cell)
                if c and (m not in opts["chunk_methods"] or n not in (opts["chunk_lengths"] or [n])):
                    cells.pop()  # not asked for (dense never: see the module docstring): no row
                    continue
                if c >= n:
                    cell["skipped"] = f"chunk {c} >= length: the same as one forward"
                    continue
                if key in failed:
                    cell["skipped"] = "failed at a shorter length (out of memory or an error)"
                    continue
                spent = _slowest(time.perf_counter() - t_start, par, device)  # one decision for all ranks
                need = forecast(last_ok.get(key), n, m)  # its reps included
                if args.time_limit and spent + need > args.time_limit:
                    cell["skipped"] = (
                        f"time limit: {spent:.0f} s spent, ~{need:.0f} s forecast, limit {args.time_limit:.0f} s"
                    )
                    log(f"  {fmt_length(n):>5s} {variant_name(key):24s} skipped ({cell['skipped']})", flush=True)
                    continue
                try:
                    res = run_cell(model, ids, m, c, delta_config, sdpa_backend, args.reps, cache, par)
                except (torch.OutOfMemoryError, RuntimeError) as exc:
                    if par != "none" and not is_oom(exc):
                        raise  # the other ranks wait in a collective: stop them all
                    # one device: record it and go on (the other cells' numbers are not lost)
                    failed.add(key)
                    what = "OOM" if is_oom(exc) else f"error ({type(exc).__name__})"
                    cell["error"] = f"{what}: " + (str(exc).splitlines() or [""])[0][:200]
                    res = None
                if res is None:  # outside the except block: its traceback no longer pins the cell's tensors
                    log(f"  {fmt_length(n):>5s} {variant_name(key):24s} {cell['error']}", flush=True)
                    if device.type == "cuda":
                        gc.collect()
                        torch.cuda.empty_cache()
                    continue
                logits = res.pop("logits")
                if c == 0:
                    one_shot_logits[m] = logits
                elif m in one_shot_logits:  # chunked must equal one shot up to rounding
                    cell["max_abs_diff_vs_one_shot"] = float((logits - one_shot_logits[m]).abs().max())
                del logits
                cell.update(res)
                last_ok[key] = (n, res)
                mem = f"  peak {res['peak_gb']:.1f} GB" if "peak_gb" in res else ""
                log(
                    f"  {fmt_length(n):>5s} {variant_name(key):24s} TTFT {res['ttft_s']:8.3f} s  "
                    f"{res['tokens_per_s']:10.0f} tok/s{mem}",
                    flush=True,
                )
        one_shot_logits.clear()
        del ids
        if device.type == "cuda":
            torch.cuda.empty_cache()
    add_ratios(cells)
    meta = dict(
        command="delta-attn bench e2e " + " ".join(args.argv),
        model_shape=model_label(args),
        real_weights=getattr(args, "model", None) is not None,
        layers=n_layers,
        layers_cut=args.layers is not None,
        params_b=count_params(model) / 1e9,
        weights_gb=weights_gb,
        dtype=str(dtype).replace("torch.", ""),
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        gpus=world if device.type == "cuda" else 0,
        parallel=args.parallel,
        ranks=world,
        tp_size=int(getattr(model, "tp_size", None) or 1),  # the ranks the weights are sharded over
        rank=rank,
        torch=torch.__version__,
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        host=platform.node(),
        delta=dict(gamma=args.gamma, window=args.window, sink=args.sink, sparse="streaming"),
        dense_backend="CP dense attention (cp_prefill, mode='dense')" if cp else sdpa_backend or "PyTorch default",
        dense_backend_timings=sdpa_timings,
        warmup=dict(done=bool(args.warmup), length=warm_n, seconds=warm_s, cells_s=warm_cells),
        reps=args.reps,
        time_limit_s=args.time_limit,
        wall_s=time.perf_counter() - t_start,
    )
    return dict(meta=meta, cells=cells)


def add_ratios(cells: list[dict]) -> None:
    """``speedup_vs_dense``: dense one-shot TTFT at the same length (same run) over the cell's TTFT."""
    dense = {c["n"]: c["ttft_s"] for c in cells if c["method"] == "dense" and c["chunk"] == 0 and "ttft_s" in c}
    one_shot = {(c["n"], c["method"]): c["ttft_s"] for c in cells if c["chunk"] == 0 and "ttft_s" in c}
    for c in cells:
        if "ttft_s" not in c:
            continue
        if c["n"] in dense:
            c["speedup_vs_dense"] = dense[c["n"]] / c["ttft_s"]
        if c["chunk"] and (c["n"], c["method"]) in one_shot:
            c["chunked_over_one_shot"] = c["ttft_s"] / one_shot[(c["n"], c["method"])]


# ---- reporting -----------------------------------------------------------------------------------


def variant(cell: dict) -> tuple[str, int, str]:
    """(method, chunk size, chunked cache) of a cell: one series of the tables and the plot."""
    return cell["method"], cell["chunk"], cell.get("cache", "")


def variant_order(key: tuple[str, int, str]):
    return METHODS.index(key[0]), key[1], ("", *CHUNK_CACHES).index(key[2])


def variant_name(key: tuple[str, int, str]) -> str:
    """``delta``, ``delta/c16K`` (chunked, preallocated cache), ``delta/c16K/dyn`` (chunked, DynamicCache)."""
    m, chunk, cache = key
    if not chunk:
        return m
    return f"{m}/c{fmt_length(chunk)}" + ("/dyn" if cache == "dynamic" else "")


def _f(x, fmt=".2f") -> str:
    return "—" if x is None else format(x, fmt)


def markdown(res: dict) -> str:
    meta = res["meta"]
    cut = " (cut with --layers)" if meta["layers_cut"] else ""
    warm = meta["warmup"]
    gpus = f" ({meta['gpus']} GPU)" if meta["gpus"] else ""
    picked = " (the fastest at the warm-up length)" if len(meta["dense_backend_timings"]) > 1 else ""
    lines = [
        f"Model: {meta['model_shape']}, {meta['layers']} layers{cut}, {meta['params_b']:.2f} B "
        f"{'real' if meta.get('real_weights') else 'random'} weights, "
        f"{meta['dtype']}, on {meta['device']}{gpus}; torch {meta['torch']}, {meta['date']}.",
        (
            f"Context parallel over {meta['ranks']} ranks (cp_prefill; time: the slowest rank, peak: the largest); "
            "dense is CP dense attention. "
            if meta.get("parallel") == "cp"
            else (
                f"Tensor parallel over {meta['ranks']} ranks (tp_plan='auto': each rank runs its heads; time: the "
                "slowest rank, peak: the largest). "
                if meta.get("parallel") == "tp"
                else ""
            )
            + f"Dense: SDPA on the {meta['dense_backend']} backend{picked}, one forward only (a chunk over a "
            "cached prefix needs a masked SDPA, which flash/cuDNN do not run). "
        )
        + "Δ: streaming base, "
        f"sink {meta['delta']['sink']}, window {meta['delta']['window']}, γ = {meta['delta']['gamma']}.",
        (
            f"Warm-up excluded: every method and chunk size ran once at {fmt_length(warm['length'])} tokens "
            f"({warm['seconds']:.1f} s) before the timed cells"
            if warm["done"]
            else "No warm-up: the first cell of each method includes compilation"
        )
        + f"; {meta['reps']} timed run(s) per cell, the fastest reported. TTFT = one forward with "
        "logits_to_keep=1 (or chunked_prefill) + the first token's argmax.",
        f"Command: `{meta['command']}`",
        "",
        "| N | method | chunk | TTFT s | tokens/s | × vs dense | chunked ÷ one-shot | peak GB | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in res["cells"]:
        chunk = "one-shot" if not c["chunk"] else str(c["chunk"]) + (" (dynamic)" if c["cache"] == "dynamic" else "")
        if "ttft_s" not in c:
            note = c.get("error") or c.get("skipped", "")
            lines.append(f"| {c['label']} | {c['method']} | {chunk} | — | — | — | — | — | {note} |")
            continue
        notes = []
        if not c.get("finite", True):
            notes.append("non-finite logits")
        if "max_abs_diff_vs_one_shot" in c:
            notes.append(f"logits within {c['max_abs_diff_vs_one_shot']:.2g} of one-shot")
        lines.append(
            f"| {c['label']} | {c['method']} | {chunk} | {c['ttft_s']:.3f} | {c['tokens_per_s']:.0f} | "
            f"{_f(c.get('speedup_vs_dense'))} | {_f(c.get('chunked_over_one_shot'))} | {_f(c.get('peak_gb'), '.1f')} "
            f"| {'; '.join(notes)} |"
        )
    return "\n".join(lines) + "\n"


def summary(res: dict) -> str:
    """A short fixed-width table: TTFT (s) per length and method/chunk, Δ's speed-up, then the chunked ratios."""
    cells = res["cells"]
    cols = sorted({variant(c) for c in cells}, key=variant_order)
    cols = [mc for mc in cols if any("ttft_s" in c for c in cells if variant(c) == mc)]
    out = [
        f"{'N':>5s} " + " ".join(f"{variant_name(mc):>13s}" for mc in cols) + f" {'delta x dense':>13s} {'peak GB':>8s}"
    ]
    for n in sorted({c["n"] for c in cells}):
        by = {variant(c): c for c in cells if c["n"] == n}
        row = [f"{_f(by.get(mc, {}).get('ttft_s'), '.3f'):>13s}" for mc in cols]
        sp = by.get(("delta", 0, ""), {}).get("speedup_vs_dense")
        peak = max((c.get("peak_gb", 0.0) for c in by.values()), default=0.0)
        out.append(f"{fmt_length(n):>5s} " + " ".join(row) + f" {_f(sp):>13s} {_f(peak or None, '.1f'):>8s}")
    for c in cells:
        if c["chunk"] and "chunked_over_one_shot" in c:
            out.append(
                f"{variant_name(variant(c))} at {c['label']}: {c['ttft_s']:.3f} s = "
                f"{c['chunked_over_one_shot']:.3f} x one-shot (runs: {', '.join(f'{t:.3f}' for t in c['times_s'])} s)"
            )
    return "\n".join(out)


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key in sorted({variant(c) for c in res["cells"]}, key=variant_order):
        m, ch, cache = key
        label = variant_name(key)
        pts = [(c["n"], c["ttft_s"]) for c in res["cells"] if variant(c) == key and "ttft_s" in c]
        style = dict(marker="o", color=f"C{METHODS.index(m)}", linestyle={"": "-", "dynamic": ":"}.get(cache, "--"))
        if pts:
            ax1.plot(*zip(*pts), label=label, **style)
        sp = [(c["n"], c["speedup_vs_dense"]) for c in res["cells"] if variant(c) == key and "speedup_vs_dense" in c]
        if sp and m != "dense":
            ax2.plot(*zip(*sp), label=label, **style)
    ns = sorted({c["n"] for c in res["cells"]})
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [fmt_length(n) for n in ns])
        ax.set_xlabel("prompt tokens N")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax1.set_yscale("log")
    ax1.set_ylabel("time to first token (s)")
    ax2.set_ylabel("speed-up over dense SDPA (same run)")
    meta = res["meta"]
    fig.suptitle(
        f"end-to-end prefill, {meta['model_shape']} ({meta['layers']} layers), {meta['dtype']} — {meta['device']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(res: dict, out: str) -> str:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = markdown(res)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    try:
        plot(res, os.path.join(out, "plot.png"))
    except ImportError:  # matplotlib is in the [eval] extra; the numbers are already written
        print("matplotlib is not installed: no plot.png (pip install 'delta-attn[eval]')", file=sys.stderr)
    return md


def run(args: argparse.Namespace) -> int:
    if not hasattr(args, "argv"):
        args.argv = sys.argv[3:]
    opts = validate(args)
    res = run_e2e(args, opts)
    if res["meta"]["rank"] != 0:  # context parallel: rank 0 reports
        return 0
    md = write(res, args.out)
    print(md, flush=True)
    print(summary(res), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return run(args)
    except UsageError as exc:
        print(f"delta-attn bench e2e: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
