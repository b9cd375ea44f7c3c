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
import os
import platform
import sys
import time

from ..cli_options import UsageError
from ..config import DEFAULT_CONFIG
from .e2e_options import SDPA_BACKENDS, SHAPES, build_parser, model_label, validate
from .e2e_report import summary, variant_name, write
from .layer import fmt_length

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

    ``cache`` (chunked only): ``"dynamic"`` is transformers' DynamicCache (concatenated per chunk), else the
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
            if cache == "dynamic":  # transformers' cache, concatenated per chunk (not chunked_prefill's default)
                from transformers import DynamicCache

                dyn = DynamicCache(config=model.config)
                return delta_attn.chunked_prefill(model, ids, chunk_size=chunk, past_key_values=dyn).logits
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
        # the first call at this (never-seen) length after the warm-up at another one, against the steady
        # time of the later reps: a new length must not compile or tune anything (issue 16)
        first_vs_steady=times[0] / min(times[1:]) if len(times) > 1 else None,
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


def error_text(exc: BaseException) -> str:
    """What a results file says of a failed cell: ``OOM: …`` or ``error (Type): …`` with the message's first line."""
    what = "OOM" if is_oom(exc) else f"error ({type(exc).__name__})"
    return f"{what}: " + (str(exc).splitlines() or [""])[0][:200]


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
                    cell["error"] = error_text(exc)
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
                if res.get("first_vs_steady") is not None:
                    mem += f"  first call {res['times_s'][0]:.3f} s = {res['first_vs_steady']:.2f}x steady"
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
    profiles = {}
    if opts.get("profile_length"):
        profiles = profile_prefills(model, prompt(opts["profile_length"]), methods, delta_config, sdpa_backend, log)
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
    return dict(meta=meta, cells=cells, profiles=profiles)


def profile_prefills(model, ids, methods, delta_config, sdpa_backend, log) -> dict:
    """One one-shot prefill of ``ids`` per method under torch.profiler (:func:`.profile.profile_calls`, after an
    untimed call): where a whole forward's device time goes, per kernel category and kernel. The wall time includes
    the profiler's own overhead: the timed cells above are the TTFT numbers."""
    import torch

    from .profile import profile_calls

    out = {}
    n = ids.shape[1]
    log(f"profile, one prefill of {fmt_length(n)} tokens per method (device ms per kernel category):", flush=True)
    for m in methods:
        try:
            res = profile_calls(
                lambda m=m: prefill(model, ids, m, 0, delta_config, sdpa_backend), reps=1, cuda=ids.is_cuda
            )
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_oom(exc):
                raise
            out[m] = {"error": error_text(exc)}
            log(f"  {m:10s} {out[m]['error']}", flush=True)
            continue
        res["kernels"] = res["kernels"][:25]  # the file keeps the top 25
        out[m] = dict(res, n=n)
        cats = "  ".join(f"{k} {v:9.1f}" for k, v in res["categories_ms"].items())
        log(f"  {m:10s} device {res['device_ms']:9.1f} ms  {cats}", flush=True)
        for row in res["kernels"][:6]:
            log(f"      {row['ms']:9.2f} ms  x{row['launches']:<4d} {row['kernel'][:100]}", flush=True)
        if ids.is_cuda:
            torch.cuda.empty_cache()
    return out


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
