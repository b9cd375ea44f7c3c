"""A cost model of the GPU evaluation run (``delta-attn eval plan``).

Prefill = FLOPs / throughput: linear layers 2·P·N (P ≈ 106M non-embedding parameters of SmolLM2-135M;
logits only for the last position), attention 4·(keys per query)·d·H per query row per layer, the keys
per query from :mod:`delta_attn.cost` (dense causal: (N+1)/2 on average; streaming: ≈ sink + window;
Δ: + one dense row per γ plus the exact tail). Decode = steps × (fixed per-step cost + reading and
re-copying the KV cache: HF's DynamicCache concatenates, so every step reads and writes the whole
cache). The number of decode steps is the pessimistic one: every batch runs to the largest token
limit in it (one rambling sequence keeps a batch alive; finished rows are compacted away, but the
per-step cost of this small model is launch-bound and stays).

The defaults reflect an H200: ~400 TFLOP/s effective bf16 for large matmuls, ~250 TFLOP/s for
attention kernels at head_dim 64, 3.5 TB/s effective HBM bandwidth, ~20 ms per HF decode step of this
30-layer model. Measured GPU timings are written into every result record (``batch.prefill_s``,
``batch.decode_s``, ``batch.steps``) so the model can be checked after the first call.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ruler import TASKS

LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN = 30, 576, 9, 3, 64, 1536
PARAMS_NONEMB = LAYERS * (2 * HIDDEN * HIDDEN + 2 * HIDDEN * KV_HEADS * HEAD_DIM + 3 * HIDDEN * FFN)
KV_BYTES_PER_TOKEN = LAYERS * 2 * KV_HEADS * HEAD_DIM * 2  # bf16 K and V, all layers


@dataclass
class Hardware:
    tflops: float = 400.0
    attn_tflops: float = 250.0
    hbm_tbs: float = 3.5
    step_ms: float = 20.0
    layer_overhead_ms: float = 1.0  # per layer and prefill forward for non-SDPA methods (Python + launches)


def keys_per_row(method: str, n: int, *, window: int = 256, sink: int = 64, gamma: int = 64, block: int = 512) -> float:
    """Average keys scored per query row of an evaluation method spec (dense rows of Δ/recompute included).

    From the one cost model (:func:`delta_attn.cost.prefill_cost`); data-dependent bases count their budget.
    """
    from ..config import DeltaConfig
    from ..cost import prefill_cost
    from ..methods import parse_method

    config = parse_method(method, dict(window=window, sink=sink, gamma=gamma, block_size=block)).config
    cost = prefill_cost(config or DeltaConfig(mode="dense"), n, allow_upper_bound=True)
    return cost.total / n


def decode_steps(length: int, n_per_task: int, batch: int, tasks=None, *, typical: bool = False) -> int:
    """Decode steps for one method at one length, batching as the runner does (by typical answer length).

    Pessimistic (default): every batch runs to the largest token limit in it (one rambling sequence is
    enough). ``typical=True``: a batch runs to twice the longest typical answer in it, capped by the limit.
    """
    from .runner import TYPICAL_GEN_TOKENS

    tasks = tasks or list(TASKS)
    items = sorted(
        (
            (TYPICAL_GEN_TOKENS.get(t, TASKS[t].max_new_tokens), TASKS[t].max_new_tokens)
            for t in tasks
            for _ in range(n_per_task)
        ),
        reverse=True,
    )
    steps = 0
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        lim = max(m for _, m in chunk)
        steps += min(lim, 2 * max(t for t, _ in chunk)) if typical else lim
    return steps


def method_seconds(
    method: str, length: int, n_prompts: int, batch: int, hw: Hardware, n_per_task: int, prefill_tokens: int = 262144
) -> dict:
    n = length - 128
    lin = 2 * PARAMS_NONEMB * n * n_prompts
    attn = 4 * keys_per_row(method, n) * HEAD_DIM * HEADS * LAYERS * n * n_prompts
    forwards = max(1, -(-n_prompts * n // prefill_tokens))
    prefill = lin / (hw.tflops * 1e12) + attn / (hw.attn_tflops * 1e12)
    if method != "dense":
        prefill += forwards * LAYERS * hw.layer_overhead_ms / 1e3
    steps = decode_steps(length, n_per_task, batch)
    typical = decode_steps(length, n_per_task, batch, typical=True)
    kv_step = 3 * min(batch, n_prompts) * n * KV_BYTES_PER_TOKEN / (hw.hbm_tbs * 1e12)  # read + cat copy
    per_step = hw.step_ms / 1e3 + kv_step * 0.6  # stragglers are compacted: ~60% of the full cache on average
    return {
        "prefill_s": prefill,
        "decode_s": steps * per_step,
        "decode_typical_s": typical * per_step,
        "steps": steps,
        "steps_typical": typical,
        "total_s": prefill + steps * per_step,
    }


DEFAULT_BATCH = {1024: 256, 2048: 256, 4096: 160, 8192: 96}  # = the `eval ruler --batch-size` default


def plan(
    methods,
    lengths=(8192, 4096, 2048, 1024),
    n_per_task: int = 50,
    hw: Hardware | None = None,
    batch: dict | None = None,
) -> list[dict]:
    hw = hw or Hardware()
    batch = batch or DEFAULT_BATCH
    rows = []
    n_prompts = n_per_task * len(TASKS)
    for m in methods:
        for L in lengths:
            r = method_seconds(m, L, n_prompts, batch[L], hw, n_per_task)
            rows.append({"method": m, "length": L, **r})
    return rows


def print_plan(args) -> None:
    hw = Hardware(tflops=args.tflops, attn_tflops=args.attn_tflops, step_ms=args.step_ms)
    calls = {
        "call A (core)": ["dense", "sparse", "recompute", "delta"],
        "call B (secondary)": ["delta_g16", "block", "block+delta"],
    }
    grand = grand_typ = 0.0
    for name, ms in calls.items():
        rows = plan(ms, n_per_task=args.samples, hw=hw)
        tot = sum(r["total_s"] for r in rows)
        typ = sum(r["prefill_s"] + r["decode_typical_s"] for r in rows)
        grand, grand_typ = grand + tot, grand_typ + typ
        print(f"{name}: {tot / 60:.1f} min of generation, pessimistic ({typ / 60:.1f} min typical)")
        for r in rows:
            print(
                f"  {r['method']:>12} @ {r['length']:>5}: prefill {r['prefill_s']:5.1f}s  decode {r['decode_s']:5.1f}s "
                f"({r['steps']} steps; typical {r['steps_typical']})"
            )
    print(
        f"RULER total ≈ {grand / 60:.1f} min pessimistic, {grand_typ / 60:.1f} min typical (+ per call: model load "
        f"~0.5 min, prompt building ~0.2 min; ppl + analyze ≈ 1–2 min)"
    )
