"""End-to-end prefill: ``delta-attn bench e2e``.

A whole model built from a config with random weights (nothing is downloaded; Llama-3-8B shape by
default, see :data:`SHAPES`), bf16 on one GPU. Each cell prefills a random prompt of N tokens with one
method and reports the time to first token (one forward with ``logits_to_keep=1`` plus the argmax;
``chunked_prefill`` for chunk sizes > 0), tokens/s and the peak memory allocated on the GPU:

* ``dense``: the model's own SDPA attention on the fastest SDPA backend at that length (``--dense-backend auto``):
  before the dense cell at each length N, one call of the model's SDPA attention function (transformers'
  ``sdpa`` entry, the first attention layer as its module, so GQA goes through ``enable_gqa`` / ``repeat_kv`` as in
  the model's forward; random q, k, v at N in the model's layout, causal) is timed per backend (cuDNN, flash,
  efficient; one untimed call first) and the fastest runs the cell. Backends swap places between lengths (on an
  H100, flash and cuDNN were tied at 4K but cuDNN 1.6x faster at 128K), so one pick for every length would
  misstate the ratios. Each dense cell records its backend and the timings; ``--dense-backend cudnn|flash|efficient``
  forces one backend at every length. The warm-up's dense prefill runs on the fastest whole-model forward at the
  warm-up length. Off CUDA dense runs on PyTorch's own choice (unless forced);
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
(dense too, as ``mode="dense"`` through the same CP attention, no SDPA backend pick; one-shot only); a
cell's time is the slowest rank's, its peak memory the largest rank's. Tensor parallel (``--parallel tp``, under
``torchrun``): rank 0 saves the random model to ``--tp-dir`` once, every rank loads it with
transformers' head-sharding plan (``tp_plan="auto"``) and runs the cells as on one device (Δ on its
local heads, chunked too), with the same reductions (dense's per-length backend timing too: each rank times its
local heads, every rank takes the same pick). ``--device cpu`` runs the same code paths at tiny
sizes (the ``tiny`` shape, float32; gloo for CP and TP) for tests.

``delta-attn bench e2e-report --inputs DIR|JSON ... --out DIR`` (:mod:`.e2e_merge`) merges several runs of one model
on one device (say dense + Δ at 32K/128K, and Δ chunked at 1M) into one report and log-log plot, with dense's N² fit
extrapolated over every length and Δ's floor line (:func:`.e2e_report.floor_curve`).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable

from ..cli_options import UsageError
from ..compiled import EAGER_SDPA, compile_layers, graphs_compiled, is_compiled
from ..config import DEFAULT_CONFIG
from . import triton_compiles
from .e2e_options import SDPA_BACKENDS, SHAPES, build_parser, model_label, validate
from .e2e_report import add_ratios, backend_timings_text, compiled_texts, summary, variant_name, write
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


def attention_shape(config) -> dict:
    """The model's query heads, key/value heads and head dimension (every rank's whole model, not its shard)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return dict(heads=heads, kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim)


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
        "math": SDPBackend.MATH,  # not a --dense-backend choice: the CPU tests time it beside flash
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
        if is_compiled(model):  # SDPA stays one eager call inside the compiled layers, as Δ's attention does
            model.set_attn_implementation(EAGER_SDPA)
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
    graphs_before, kernels_before = graphs_compiled(), triton_compiles.snapshot()
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
        # graphs torch.compile compiled during the cell (compiled layers at a length they were not yet called with);
        # 0 when nothing is compiled, as after the warm-up it should be
        graphs_compiled=graphs_compiled() - graphs_before,
        triton_compiled=triton_compiles.since(kernels_before),  # likewise this package's Triton kernels
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


def fastest_backend(time_call: Callable[[str], float], candidates) -> tuple[str, dict]:
    """The fastest of ``candidates`` by ``time_call(backend)`` (seconds) and every backend's timing; a backend whose
    call raises a RuntimeError (it refuses the shape, GQA, the device; or runs out of memory) is recorded as
    ``"refused: …"`` and skipped. Raises RuntimeError if every candidate refuses."""
    timings: dict[str, float | str] = {}
    for be in candidates:
        try:
            timings[be] = float(time_call(be))
        except RuntimeError as exc:
            timings[be] = f"refused: {(str(exc).splitlines() or [''])[0][:120]}"
    ok = {be: t for be, t in timings.items() if isinstance(t, float)}
    if not ok:
        raise RuntimeError(f"no SDPA backend runs the dense attention: {timings}")
    return min(ok, key=ok.get), timings


def pick_dense_backend(model, ids, want: str, device, parallel: str = "none") -> tuple[str | None, dict]:
    """The SDPA backend of the warm-up's dense prefill: ``want``, or with ``auto`` the fastest whole-model forward of
    ``ids`` (the warm-up length; the timed cells pick per length, :func:`attention_timer`). Off CUDA: ``want`` untimed
    (None with ``auto``: PyTorch's own choice)."""
    if device.type != "cuda":
        return (None if want == "auto" else want), {}

    def forward(be: str) -> float:
        prefill(model, ids, "dense", 0, None, be, parallel=parallel)  # compile / plan
        _sync(device)
        t0 = time.perf_counter()
        prefill(model, ids, "dense", 0, None, be, parallel=parallel)
        _sync(device)
        return _slowest(time.perf_counter() - t0, parallel, device)  # the same choice on every rank

    return fastest_backend(forward, SDPA_BACKENDS if want == "auto" else (want,))


def _dim_order(strides) -> tuple[int, ...]:
    """The dims of a tensor from the outermost in memory to the innermost (stable for equal strides)."""
    return tuple(sorted(range(len(strides)), key=lambda i: -strides[i]))


def _random_in_layout(shape, order, dtype, device):
    """Random normal values of ``shape`` laid out in memory as ``order`` (:func:`_dim_order`) says."""
    import torch

    t = torch.randn([shape[i] for i in order], dtype=dtype, device=device)
    return t.permute([order.index(i) for i in range(len(shape))])


def attention_timer(model, device, parallel: str = "none", probe_tokens: int = 16) -> Callable[[str, int], float]:
    """``time_attention(backend, n)``: seconds of one call of the model's own SDPA attention at ``n`` tokens on
    ``backend`` (after one untimed call; with ``parallel`` the slowest rank's), raising RuntimeError where the backend
    refuses.

    The call is the one the model's forward makes: a short probe forward (``probe_tokens``) with transformers' ``sdpa``
    attention function wrapped records the first attention layer's module, its local query/key heads (on a
    tensor-parallel rank: that rank's heads), head dim, dtype, the memory layout of q, k, v (q is a transposed view
    of the projection, k/v come out of the KV cache) and the keyword arguments (scaling, dropout). The timed call then
    passes random q (1, Hq, n, d) and k/v (1, Hkv, n, d) in those layouts to the same function with that module, so
    GQA takes the model's path (``enable_gqa`` or ``repeat_kv``) and causality the model's flag. Raises ValueError if
    the model does not call that function, or passes it an attention mask for one unpadded prompt (the timer does not
    rebuild a mask at ``n``)."""
    import torch
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    seen: dict = {}

    def capture(module, query, key, value, attention_mask, **kwargs):
        if not seen:
            seen.update(module=module, q=query, k=key, v=value, mask=attention_mask, kwargs=kwargs)
            seen.update(layouts=[_dim_order(t.stride()) for t in (query, key, value)])
        return sdpa(module, query, key, value, attention_mask, **kwargs)

    probe = torch.randint(0, model.config.vocab_size, (1, probe_tokens), generator=torch.Generator().manual_seed(0))
    ALL_ATTENTION_FUNCTIONS["sdpa"] = capture
    try:
        prefill(model, probe.to(device), "dense", 0, None, None, parallel=parallel)
    finally:
        ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa
    if not seen:
        raise ValueError(
            f"the dense model does not call transformers' sdpa attention function (attn_implementation="
            f"{model.config._attn_implementation!r}): its SDPA call cannot be timed alone; use --dense-backend"
        )
    if seen["mask"] is not None:
        raise ValueError(
            "the dense model passes SDPA an attention mask for one unpadded prompt, which the per-length timing does "
            "not rebuild: use --dense-backend"
        )
    module = seen["module"]
    q_heads, kv_heads, head_dim = seen["q"].shape[1], seen["k"].shape[1], seen["q"].shape[-1]
    dtype, value_dim = seen["q"].dtype, seen["v"].shape[-1]
    kwargs = {k: v for k, v in seen["kwargs"].items() if not isinstance(v, torch.Tensor)}  # position ids: unused
    q_order, k_order, v_order = seen["layouts"]
    seen.clear()  # the probe's tensors

    def time_attention(backend: str, n: int) -> float:
        q = _random_in_layout((1, q_heads, n, head_dim), q_order, dtype, device)
        k = _random_in_layout((1, kv_heads, n, head_dim), k_order, dtype, device)
        v = _random_in_layout((1, kv_heads, n, value_dim), v_order, dtype, device)
        with torch.no_grad(), sdpa_context(backend):
            sdpa(module, q, k, v, None, **kwargs)  # cuDNN builds its plan for this shape here, untimed
            _sync(device)
            t0 = time.perf_counter()
            sdpa(module, q, k, v, None, **kwargs)
            _sync(device)
        return _slowest(time.perf_counter() - t0, parallel, device)  # the same choice on every rank

    # what is timed, for the results file (tensor parallel: this rank's heads)
    time_attention.call = dict(
        q_heads=q_heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype=str(dtype).replace("torch.", ""),
        layouts={"q": list(q_order), "k": list(k_order), "v": list(v_order)},  # dims, outermost in memory first
        kwargs={k: v for k, v in kwargs.items() if isinstance(v, (bool, int, float, str, type(None)))},
    )
    return time_attention


def dense_backend_timer(model, device, parallel: str = "none") -> Callable[[str, int], float] | None:
    """The per-length timer of ``--dense-backend auto`` (:func:`attention_timer`) on CUDA; None elsewhere (on CPU
    dense runs on PyTorch's own choice; tests replace this function)."""
    if device.type != "cuda":
        return None
    return attention_timer(model, device, parallel)


def describe_dense_backend(want: str, by_length: dict[int, str | None], note: str = "") -> str:
    """What ``meta["dense_backend"]`` says: how dense was chosen and, per length, the backend it ran on."""
    runs = ", ".join(f"{fmt_length(n)} {be or 'PyTorch default'}" for n, be in sorted(by_length.items()))
    runs = runs or "no dense cell ran"
    if want != "auto":
        return f"{want} at every length (--dense-backend {want}): {runs}"
    if note:
        return f"the fastest whole-model forward at the warm-up length for every length ({note}): {runs}"
    if all(be is None for be in by_length.values()) and by_length:
        return f"PyTorch's own SDPA choice (no backend timing off CUDA): {runs}"
    return f"the fastest SDPA backend at each length (one attention call per backend timed there): {runs}"


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
    delta_config = DeltaConfig(
        window=args.window,
        sink=args.sink,
        gamma=args.gamma,
        sparse="streaming",
        backend=getattr(args, "backend", "auto"),
    )
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(args.seed)

    def prompt(n):
        return torch.randint(0, vocab, (1, n), generator=gen).to(device)

    triton_compiles.start_counting()  # each cell then records the Triton kernels it compiled (none, after this)
    # warm-up: every (method, chunk) once at the warm-up length, so compilation is not timed
    warm_n = opts["warmup_length"]
    warm_ids = prompt(warm_n)
    want = args.dense_backend
    timer, timer_note = None, ""
    if "dense" in methods and not cp and want == "auto":  # its probe forward records the model's own SDPA call:
        try:  # before --compile, which routes that call through EAGER_SDPA
            timer = dense_backend_timer(model, device, par)
        except ValueError as exc:  # keep the warm-up's pick for every length, and say so
            timer_note = str(exc)
    compiling, compile_s = getattr(args, "compile", False), None
    if compiling:  # each layer compiles at its first call (the warm-up's, when on)
        compile_layers(model, backend=compiling)
    warm_backend, warm_timings = (None, {})
    if "dense" in methods and not cp:
        _sync(device)
        t0 = time.perf_counter()
        warm_backend, warm_timings = pick_dense_backend(model, warm_ids, want, device, par)
        compile_s = time.perf_counter() - t0 if compiling else None

    def dense_backend_at(n: int) -> tuple[str | None, dict]:
        """The SDPA backend dense runs on at ``n`` tokens, and the per-backend attention timings behind the pick."""
        if want != "auto":
            return want, {}
        if timer is None:
            return warm_backend, {}
        return fastest_backend(lambda be: timer(be, n), SDPA_BACKENDS)

    warm_s, warm_cells = 0.0, {}
    if args.warmup:  # per cell: the first call of a (method, chunk) pays Triton compilation: recorded
        for m in methods:
            for c in chunks:
                if c and m not in opts["chunk_methods"]:
                    continue
                for cache in opts["chunk_caches"] if c else [""]:
                    _sync(device)
                    t0 = time.perf_counter()
                    prefill(model, warm_ids, m, min(c, max(1, warm_n // 2)), delta_config, warm_backend, cache, par)
                    _sync(device)
                    warm_cells[variant_name((m, c, cache))] = time.perf_counter() - t0
        warm_s = sum(warm_cells.values())
    log(
        f"model {model_label(args)} ({n_layers} layers, {count_params(model) / 1e9:.2f} B params, {dtype}) on "
        f"{device}{'; decoder layers compiled' if is_compiled(model) else ''}; dense SDPA backend: "
        + ("CP dense attention" if cp else f"{want}, per length" if timer else f"{warm_backend or 'PyTorch default'}")
        + f" (warm-up forward: {warm_backend or 'PyTorch default'}"
        + (f" {warm_timings}" if warm_timings else "")
        + (f"; {timer_note}" if timer_note else "")
        + "); "
        f"warm-up {'at ' + fmt_length(warm_n) + f' tokens, {warm_s:.1f} s' if args.warmup else 'off'}",
        flush=True,
    )

    cells, last_ok, failed, dense_by_length = [], {}, set(), {}
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
                    backend = None
                    if m == "dense" and not cp:  # the fastest at this length (or the forced one), just before the cell
                        backend, timings = dense_backend_at(n)
                        cell["dense_backend"] = backend or "PyTorch default"
                        if timings:
                            cell["dense_backend_timings"] = timings
                    res = run_cell(model, ids, m, c, delta_config, backend, args.reps, cache, par)
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
                if "dense_backend" in cell:
                    dense_by_length[n] = backend
                mem = f"  peak {res['peak_gb']:.1f} GB" if "peak_gb" in res else ""
                if res.get("first_vs_steady") is not None:
                    mem += f"  first call {res['times_s'][0]:.3f} s = {res['first_vs_steady']:.2f}x steady"
                mem += "".join(f"  {text}" for text in compiled_texts(res))
                if "dense_backend" in cell:
                    mem += f"  on {cell['dense_backend']}" + (
                        f" (attention alone: {backend_timings_text(cell['dense_backend_timings'])})"
                        if "dense_backend_timings" in cell
                        else ""
                    )
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
        prof_backend = None
        if "dense" in methods and not cp:
            prof_backend, _ = dense_backend_at(opts["profile_length"])
        profiles = profile_prefills(model, prompt(opts["profile_length"]), methods, delta_config, prof_backend, log)
    meta = dict(
        command="delta-attn bench e2e " + " ".join(args.argv),
        model_shape=model_label(args),
        delta_backend=delta_config.backend,
        compiled=is_compiled(model),  # --compile: the decoder layers under torch.compile, attention eager
        compile_backend=compiling or None,  # inductor (int64 where sizes are symbolic) or inductor-stock
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
        attention=attention_shape(model.config),  # the cost model's head counts (e2e-report's floor line)
        dense_backend=(
            "CP dense attention (cp_prefill, mode='dense')"
            if cp
            else describe_dense_backend(want, dense_by_length, timer_note)
        ),
        dense_backend_choice="cp" if cp else want,  # auto: the fastest at each length; else forced
        dense_backend_by_length={fmt_length(n): be or "PyTorch default" for n, be in sorted(dense_by_length.items())},
        dense_backend_timed_call=getattr(timer, "call", None),  # the attention call timed per backend (rank 0's)
        warmup=dict(
            done=bool(args.warmup),
            length=warm_n,
            seconds=warm_s,
            cells_s=warm_cells,
            dense_backend=warm_backend or "PyTorch default",  # its dense prefill: the fastest whole-model forward
            dense_backend_timings=warm_timings,
            dense_pick_with_compile_s=compile_s,  # --compile: the backend pick's forwards, the first compiling
        ),
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
        if m == "dense":
            out[m]["dense_backend"] = sdpa_backend or "PyTorch default"
        if ids.is_cuda:
            torch.cuda.empty_cache()
    return out


def run(args: argparse.Namespace) -> int:
    if not hasattr(args, "argv"):
        args.argv = sys.argv[3:]
    opts = validate(args)
    if getattr(args, "kernel_config", ""):
        from ..kernels.prefill import launch_configs

        with launch_configs(args.kernel_config):
            res = run_e2e(args, opts)
        with open(args.kernel_config) as f:
            res["meta"]["kernel_config"] = json.load(f)
    else:
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
