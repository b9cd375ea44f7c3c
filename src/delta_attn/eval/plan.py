"""A cost model of the GPU evaluation run (``delta-attn eval plan``), calibratable from measured records.

**What one batch costs** (``eval ruler`` runs a (length, method) cell in batches; :mod:`.runner`):

* **Prefill** = FLOPs / throughput + launch overhead. Linear layers 2·P·N per prompt (P: the decoder layers'
  weights of the model's :class:`~delta_attn.models.shape.ModelShape`; the logits only for the last
  position), at ``tflops``; attention 4·(keys per query)·d·H·layers per query row, at ``attn_tflops``, the
  keys per query from :func:`delta_attn.cost.prefill_cost` (dense causal: (N+1)/2 on average; streaming
  ≈ sink + window; Δ: + a dense row per γ and the exact tail); a non-dense method adds
  ``layer_overhead_ms`` per layer and prefill forward (its Python path and extra launches). Prompts are
  prefilled ``prefill_tokens // length`` at a time, as the runner does.
* **Decode** = per step ``step_layer_ms`` per layer (a small model's HF decode step is launch-bound) plus
  the bytes the step moves at ``hbm_tbs``: the weights once (layers + output projection, bf16) and the
  KV cache three times (attention reads it; HF's DynamicCache concatenates, reading and writing it again).
  Finished sequences leave the batch once they are half of it (:func:`delta_attn.decoding.decode`), which
  :func:`decode_rows` replays step by step.

A plan (:func:`plan`) counts two decode bounds: **pessimistic**, every sequence runs to its task's token
limit; **typical**, every sequence stops at its task's typical answer length (the measured 90th
percentile when calibration records of the model are given, else twice the SmolLM2 table
:data:`~delta_attn.eval.runner.TYPICAL_GEN_TOKENS`, capped by the limit).

**Calibration** (:func:`calibrate`): every ``sample`` record of ``eval ruler`` carries the timing of the
batch it ran in (``batch.size / prefill_s / decode_s / steps``) and its own ``gen_tokens`` and
``hit_stop``; the run header names the model (sha256), the methods' full configs, the prefill micro-batch
and the GPU. The records of one batch are regrouped, each batch's work is counted with the same functions
a plan uses, and the rates are fitted by least squares on the relative error (non-negative, with a weak
pull towards the starting rates so that a rate the records cannot tell apart stays where it was).

**Concurrent processes share the GPU.** Several ``eval ruler`` processes on one GPU are time-sliced: a
batch's recorded time is its own GPU time plus the GPU time the other processes used meanwhile. The run
header does not say how many processes shared the GPU, so with ``concurrency="auto"`` (the default) the
runs of one calibration path are laid on a timeline (each run's batches back to back from its header's
start time; every run is assumed to spend the same time loading before its first batch) and each
recorded prefill or decode time is predicted as the batch's own work plus the other runs' work during it
(each of their phases spread evenly over its interval), which keeps the fit linear in the rates
(:func:`assign_concurrency`). ``concurrency=k`` instead predicts k times the batch's own time (runs of
similar work all along). On the Qwen2.5-Coder-1.5B H100 records (4 processes) the time-sliced model fits
each batch to 9 % (prefill) and 15 % (decode) RMS; dividing each batch's times by the average number of
runs active during it fits them to only 16 % and 37 %.
Plans are in **GPU minutes of exclusive use**: k processes sharing one GPU take about as long in all (it
was kept busy), plus each process's model load.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..models.shape import ModelShape
from .ruler import TASKS

#: the rates of an H200 (bf16), the starting point of a calibration: large matmuls ~400 TFLOP/s, attention
#: kernels at head_dim 64 ~250 TFLOP/s, HF decode ~20 ms per step of 30-layer SmolLM2, 3.5 TB/s HBM
DEFAULT_RATES = dict(tflops=400.0, attn_tflops=250.0, layer_overhead_ms=1.0, step_layer_ms=20.0 / 30, hbm_tbs=3.5)
#: what `eval ruler` defaults to (its --batch-size and --prefill-tokens)
DEFAULT_BATCH_SPEC = "1024:256,2048:256,4096:160,8192:96"
DEFAULT_PREFILL_TOKENS = 262144
#: weight of the pull towards the starting rates, relative to one batch's squared relative error: small enough
#: that any rate the records determine is theirs, large enough that an undetermined one stays put
PRIOR_WEIGHT = 1e-4
#: the KV cache is read by attention and read + written by DynamicCache's torch.cat every decode step
KV_PASSES = 3
BYTES_PER_VALUE = 2  # bf16 weights and cache


@dataclass
class Hardware:
    """Effective rates of one GPU running the HF eval path (see the module docstring for what each covers)."""

    tflops: float = DEFAULT_RATES["tflops"]  # prefill linear layers, TFLOP/s
    attn_tflops: float = DEFAULT_RATES["attn_tflops"]  # prefill attention, TFLOP/s
    layer_overhead_ms: float = DEFAULT_RATES["layer_overhead_ms"]  # per layer and prefill forward, non-dense
    step_layer_ms: float = DEFAULT_RATES["step_layer_ms"]  # per layer and decode step
    hbm_tbs: float = DEFAULT_RATES["hbm_tbs"]  # decode memory traffic, TB/s

    def __post_init__(self) -> None:
        for name in ("tflops", "attn_tflops", "hbm_tbs"):
            value = getattr(self, name)
            if not value > 0:  # a rate of 0 would make every prediction infinite
                raise ValueError(f"{name} must be > 0, got {value}")
        for name in ("layer_overhead_ms", "step_layer_ms"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    # the fitted unknowns are seconds per unit of work (linear in the prediction)
    def prefill_coefs(self) -> list[float]:
        return [1 / (self.tflops * 1e12), 1 / (self.attn_tflops * 1e12), self.layer_overhead_ms / 1e3]

    def decode_coefs(self) -> list[float]:
        return [self.step_layer_ms / 1e3, 1 / (self.hbm_tbs * 1e12)]

    @classmethod
    def from_coefs(cls, prefill: Sequence[float], decode: Sequence[float]) -> Hardware:
        inf = float("inf")
        return cls(
            tflops=1 / (prefill[0] * 1e12) if prefill[0] > 0 else inf,
            attn_tflops=1 / (prefill[1] * 1e12) if prefill[1] > 0 else inf,
            layer_overhead_ms=prefill[2] * 1e3,
            step_layer_ms=decode[0] * 1e3,
            hbm_tbs=1 / (decode[1] * 1e12) if decode[1] > 0 else inf,
        )

    def flags(self) -> str:
        """The command-line options that set these rates."""
        return (
            f"--tflops {self.tflops:.4g} --attn-tflops {self.attn_tflops:.4g} --layer-overhead-ms "
            f"{self.layer_overhead_ms:.4g} --step-layer-ms {self.step_layer_ms:.4g} --hbm-tbs {self.hbm_tbs:.4g}"
        )


# ---------------------------------------------------------------------------------------------
# the work of one batch


@dataclass(frozen=True)
class BatchWork:
    """What one batch does, in the units the rates divide (prefill and decode separately)."""

    lin_flops: float = 0.0
    attn_flops: float = 0.0
    overhead_layer_forwards: float = 0.0  # layers × prefill forwards, non-dense methods only
    decode_layer_steps: float = 0.0  # layers × decode steps
    decode_bytes: float = 0.0

    @property
    def prefill_features(self) -> list[float]:
        return [self.lin_flops, self.attn_flops, self.overhead_layer_forwards]

    @property
    def decode_features(self) -> list[float]:
        return [self.decode_layer_steps, self.decode_bytes]

    def prefill_s(self, hw: Hardware) -> float:
        return sum(f * c for f, c in zip(self.prefill_features, hw.prefill_coefs()))

    def decode_s(self, hw: Hardware) -> float:
        return sum(f * c for f, c in zip(self.decode_features, hw.decode_coefs()))


_KEYS_CACHE: dict = {}


def keys_per_row(config, n: int) -> float:
    """Average keys scored per query row of an ``n``-token prefill with ``config`` (a DeltaConfig; None =
    dense), dense rows of Δ/recompute included; data-dependent bases count their budget
    (:func:`delta_attn.cost.prefill_cost`)."""
    from ..config import DeltaConfig
    from ..cost import prefill_cost

    config = config or DeltaConfig(mode="dense")
    key = (repr(config), n)
    if key not in _KEYS_CACHE:
        _KEYS_CACHE[key] = prefill_cost(config, n, allow_upper_bound=True).total / n
    return _KEYS_CACHE[key]


def prefill_work(shape: ModelShape, config, n: int, rows: int, per_forward: int) -> BatchWork:
    """Prefill of ``rows`` prompts of ``n`` tokens with ``config`` (None = dense), ``per_forward`` at a time."""
    lin = 2.0 * shape.params_nonemb * n * rows + 2.0 * shape.output_params * rows  # logits of the last position
    attn = 4.0 * keys_per_row(config, n) * shape.head_dim * shape.heads * shape.layers * n * rows
    dense = config is None or config.mode == "dense"
    forwards = -(-rows // max(1, per_forward))
    return BatchWork(lin, attn, 0.0 if dense else float(shape.layers * forwards))


def decode_rows(lives: Sequence[int], steps: int | None = None) -> list[int]:
    """Rows in the cache at each decode forward of a batch whose sequences live ``lives`` loop iterations
    (generated tokens, + 1 for the stop token that ended one), as :func:`delta_attn.decoding.decode` runs it:
    after iteration t the sequences with life <= t are done; once they are half of the cache's rows the
    cache keeps only the live ones; a forward follows while any sequence lives. ``steps`` (the recorded
    count) truncates or extends the replay when the records disagree with it."""
    if not lives:
        return []
    steps = max(lives) - 1 if steps is None else steps
    cache_rows, out = len(lives), []
    for t in range(1, steps + 1):
        alive = sum(1 for life in lives if life > t)
        if alive <= cache_rows // 2:
            cache_rows = max(1, alive)
        out.append(cache_rows)
    return out


def decode_work(shape: ModelShape, n: int, rows_per_step: Sequence[int]) -> BatchWork:
    """Decode forwards with ``rows_per_step[s]`` sequences of ``n`` prompt tokens in the cache at step s."""
    kv = shape.kv_bytes_per_token(BYTES_PER_VALUE)
    weights = shape.weight_bytes(BYTES_PER_VALUE)
    moved = sum(weights + KV_PASSES * r * (n + s + 1) * kv for s, r in enumerate(rows_per_step))
    return BatchWork(decode_layer_steps=float(shape.layers * len(rows_per_step)), decode_bytes=float(moved))


# ---------------------------------------------------------------------------------------------
# a plan


@dataclass
class CellPlan:
    """One (method, length) cell of a plan: seconds of exclusive GPU use."""

    method: str
    length: int
    prompts: int
    batches: int
    prefill_s: float
    decode_s: float
    decode_typical_s: float
    steps: int
    steps_typical: int

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def typical_s(self) -> float:
        return self.prefill_s + self.decode_typical_s


def typical_tokens_default() -> dict[str, int]:
    """Twice the SmolLM2 typical answer length per task, capped by the task's limit."""
    from .runner import TYPICAL_GEN_TOKENS

    return {
        t: min(spec.max_new_tokens, 2 * TYPICAL_GEN_TOKENS.get(t, spec.max_new_tokens)) for t, spec in TASKS.items()
    }


def plan(
    methods,
    lengths: Sequence[int],
    n_per_task: int,
    shape: ModelShape,
    hw: Hardware | None = None,
    *,
    tasks: Sequence[str] | None = None,
    batch_size: Callable[[int], int] | None = None,
    prefill_tokens: int = DEFAULT_PREFILL_TOKENS,
    reserve: int | None = None,
    typical_tokens: dict[str, int] | None = None,
    done: Container = frozenset(),
    seed: int = 0,
) -> list[CellPlan]:
    """The cost of every (method, length) cell, batched as :func:`delta_attn.eval.runner.run_ruler` batches.

    ``methods``: :class:`~delta_attn.methods.Method` objects or specs; ``typical_tokens``: answer tokens per
    task for the typical bound (default :func:`typical_tokens_default`); ``done``: keys (task, length, index,
    method, ``seed``) of generations earlier records already hold (a resumed run skips them, so the plan does).
    """
    from ..methods import Method, parse_method
    from .ruler import DEFAULT_RESERVE, prompt_tokens_for
    from .runner import TYPICAL_GEN_TOKENS, parse_batch_sizes

    hw = hw or Hardware()
    tasks = list(tasks or TASKS)
    batch_size = batch_size or parse_batch_sizes(DEFAULT_BATCH_SPEC)
    typical = {**typical_tokens_default(), **(typical_tokens or {})}
    reserve = DEFAULT_RESERVE if reserve is None else reserve
    # the runner's order: tasks with long typical answers first, so a batch holds similar answer lengths
    order = sorted(
        ((t, i) for t in tasks for i in range(n_per_task)),
        key=lambda ti: (-TYPICAL_GEN_TOKENS.get(ti[0], TASKS[ti[0]].max_new_tokens), ti[0], ti[1]),
    )
    rows = []
    for m in methods:
        m = m if isinstance(m, Method) else parse_method(m)
        for L in lengths:
            n = prompt_tokens_for(L, reserve)
            bs, per_forward = max(1, batch_size(L)), max(1, prefill_tokens // L)
            todo = [(t, i) for t, i in order if (t, L, i, m.name, seed) not in done]
            cell = CellPlan(m.name, L, len(todo), 0, 0.0, 0.0, 0.0, 0, 0)
            for i in range(0, len(todo), bs):
                chunk = [t for t, _ in todo[i : i + bs]]
                cell.batches += 1
                cell.prefill_s += prefill_work(shape, m.config, n, len(chunk), per_forward).prefill_s(hw)
                limits = [TASKS[t].max_new_tokens for t in chunk]  # a sequence cut at its limit: life = limit
                worst = decode_rows(limits)
                usual = decode_rows([min(TASKS[t].max_new_tokens, typical[t] + 1) for t in chunk])
                cell.decode_s += decode_work(shape, n, worst).decode_s(hw)
                cell.decode_typical_s += decode_work(shape, n, usual).decode_s(hw)
                cell.steps += len(worst)
                cell.steps_typical += len(usual)
            rows.append(cell)
    return rows


# ---------------------------------------------------------------------------------------------
# calibration from measured records


@dataclass
class MeasuredBatch:
    """One batch of a result file: what it did and how long it took."""

    source: str  # the calibration path it came from (runs of one path may have shared the GPU)
    run_id: str
    device: str
    model: str
    shape: ModelShape
    method: str
    length: int
    tasks: list[str]  # per row
    gen_tokens: list[int]  # per row
    lives: list[int]  # per row: decode-loop iterations (generated tokens + 1 for a stop token)
    steps: int
    prefill_s: float
    decode_s: float
    work: BatchWork
    prefill_tokens: int = DEFAULT_PREFILL_TOKENS  # the run's --prefill-tokens
    start: float = 0.0  # seconds on the run's timeline (set by assign_concurrency)
    concurrency: float = 1.0  # average number of runs active during the batch (itself included)
    # features whose dot product with all five coefficients (prefill's, then decode's) predicts the recorded
    # prefill_s / decode_s: the batch's own work plus, on a shared GPU, the others' work meanwhile
    prefill_mix: list = field(default_factory=list)
    decode_mix: list = field(default_factory=list)

    @property
    def own_prefill(self) -> list[float]:
        return [*self.work.prefill_features, 0.0, 0.0]

    @property
    def own_decode(self) -> list[float]:
        return [0.0, 0.0, 0.0, *self.work.decode_features]

    @property
    def wall_s(self) -> float:
        return self.prefill_s + self.decode_s


class CalibrationError(ValueError):
    """Records that cannot calibrate the model (none with timings, unknown model shape ...)."""


def _method_config(run: dict, name: str):
    """The DeltaConfig (None = dense) of method ``name`` from its run header (the spec parsed with the run's
    options when the header lacks it)."""
    from ..config import DeltaConfig
    from ..methods import parse_method, settings_from_args

    fields = run.get("methods", {}).get(name, "missing")
    if fields is None:
        return None
    if isinstance(fields, dict):
        known = {f.name for f in dataclasses.fields(DeltaConfig)}
        config = DeltaConfig(**{k: v for k, v in fields.items() if k in known})
        return None if config.mode == "dense" else config
    options = run.get("options", {})
    return parse_method(name, settings_from_args(type("Options", (), options))).config


def _record_shape(run: dict, fallback: ModelShape | None, where: str) -> tuple[ModelShape, str]:
    """The shape and name of the model a run header names: a named model by its sha256, else ``fallback``
    when its layer count matches."""
    from ..models.registry import BY_SHA256

    named = BY_SHA256.get(run.get("model_sha256", ""))
    if named is not None:
        return named.shape, named.name
    layers = run.get("model_layers")
    if fallback is not None and (layers is None or layers == fallback.layers):
        return fallback, str(run.get("model_id", "the --model"))
    raise CalibrationError(
        f"{where}: run {run.get('run_id')} used {run.get('model_id', 'an unrecorded model')} "
        f"({layers} layers), whose shape is not in the registry; calibrate with --model set to that model's "
        ".gguf file or folder"
    )


def load_batches(paths: Sequence[str | Path], fallback_shape: ModelShape | None = None) -> list[MeasuredBatch]:
    """Every timed batch of the ``eval ruler`` result files under ``paths`` (files or folders, .jsonl[.gz])."""
    from .records import Records
    from .ruler import DEFAULT_RESERVE

    out: list[MeasuredBatch] = []
    for source in paths:
        recs = Records.load([source])
        if not recs.files:
            raise CalibrationError(f"--calibrate {source}: no .jsonl or .jsonl.gz result files there")
        runs = recs.runs
        group: list[dict] = []

        def flush() -> None:
            if not group:
                return
            first = group[0]
            run = runs.get(first.get("run_id"))
            if run is None:
                group.clear()
                return
            shape, model = _record_shape(run, fallback_shape, str(source))
            options = run.get("options", {})
            length = int(first["length"])
            n = int(first.get("prompt_tokens") or length - options.get("reserve", DEFAULT_RESERVE))
            prefill_tokens = int(options.get("prefill_tokens") or DEFAULT_PREFILL_TOKENS)
            per_forward = max(1, prefill_tokens // length)
            b = first["batch"]
            lives = [int(r.get("gen_tokens", 0)) + (1 if r.get("hit_stop") else 0) for r in group]
            config = _method_config(run, first["method"])
            rows = max(int(b.get("size", len(group))), len(group))
            work = prefill_work(shape, config, n, rows, per_forward)
            dec = decode_work(shape, n, decode_rows(lives, int(b["steps"])))
            out.append(
                MeasuredBatch(
                    str(source),
                    run["run_id"],
                    str(run.get("device_name", "unknown GPU")),
                    model,
                    shape,
                    first["method"],
                    length,
                    [r["task"] for r in group],
                    [int(r.get("gen_tokens", 0)) for r in group],
                    lives,
                    int(b["steps"]),
                    float(b["prefill_s"]),
                    float(b["decode_s"]),
                    dataclasses.replace(work, decode_layer_steps=dec.decode_layer_steps, decode_bytes=dec.decode_bytes),
                    prefill_tokens,
                )
            )
            group.clear()

        for path in recs.files:  # one file at a time: a batch's records are consecutive lines of one file
            for rec in Records.load([path]).items:
                b = rec.get("batch") if rec.get("record") == "sample" else None
                if not isinstance(b, dict) or not {"prefill_s", "decode_s", "steps"} <= b.keys():
                    continue
                key = (rec.get("run_id"), rec.get("method"), rec.get("length"), tuple(sorted(b.items())))
                if group and (_group_key(group[0]) != key or len(group) >= int(b.get("size", 1 << 30))):
                    flush()
                group.append(rec)
            flush()
    if not out:
        raise CalibrationError(
            f"--calibrate {' '.join(map(str, paths))}: no `eval ruler` sample records with batch timings"
        )
    return out


def _group_key(rec: dict) -> tuple:
    return (rec.get("run_id"), rec.get("method"), rec.get("length"), tuple(sorted(rec["batch"].items())))


def _run_starts(paths: Sequence[str | Path]) -> dict[str, float]:
    """Start time (POSIX seconds) of every run header under ``paths``."""
    from .records import Records

    starts = {}
    for run in Records.load(paths).of("run"):
        try:
            starts[run["run_id"]] = _dt.datetime.fromisoformat(run["date"]).timestamp()
        except (KeyError, TypeError, ValueError):
            continue
    return starts


def assign_concurrency(batches: list[MeasuredBatch], concurrency: float | str, starts: dict[str, float]) -> None:
    """Lay the runs of each calibration path on a timeline and say what each recorded time contains.

    Each run's batches ran back to back from its header's start time (every run is assumed to spend the same
    time loading before its first batch, so only the differences of start times matter). ``concurrency``
    becomes the average number of runs active during a batch. The recorded times are then predicted as:

    * ``"auto"``: the GPU is time-sliced between the processes and kept busy, so a batch's recorded prefill
      (decode) time is its own GPU time plus the GPU time the other runs' batches spent during that
      interval, each other batch's prefill and decode work spread evenly over its own prefill and decode
      intervals. One process alone: its own time.
    * a number k: k times its own time (the runs that shared the GPU did similar work all along).
    """
    import numpy as np

    spans: dict[tuple, list[float]] = {}  # (source, run) -> [first batch start, last batch end]
    clock: dict[tuple, float] = {}
    for b in batches:  # in file order: a run's batches ran back to back
        key = (b.source, b.run_id)
        t = clock.get(key, starts.get(b.run_id, 0.0))
        b.start, clock[key] = t, t + b.wall_s
        span = spans.setdefault(key, [t, t])
        span[1] = t + b.wall_s
    for b in batches:
        lo, hi = b.start, b.start + b.wall_s
        overlap = sum(max(0.0, min(hi, s1) - max(lo, s0)) for (src, _), (s0, s1) in spans.items() if src == b.source)
        b.concurrency = max(1.0, overlap / (hi - lo)) if hi > lo else 1.0
    if concurrency != "auto":
        for b in batches:
            b.prefill_mix = [float(concurrency) * x for x in b.own_prefill]
            b.decode_mix = [float(concurrency) * x for x in b.own_decode]
        return
    for source in dict.fromkeys(b.source for b in batches):
        group = [b for b in batches if b.source == source]
        runs = np.array([hash(b.run_id) for b in group])
        pre = np.array([[b.start, b.start + b.prefill_s] for b in group])
        dec = np.array([[b.start + b.prefill_s, b.start + b.wall_s] for b in group])
        own_pre = np.array([b.own_prefill for b in group])
        own_dec = np.array([b.own_decode for b in group])
        others = runs[:, None] != runs[None, :]

        def share(a, c):  # [i, j]: the part of interval c[j] that lies within a[i]
            ov = np.clip(np.minimum(a[:, 1:2], c[None, :, 1]) - np.maximum(a[:, 0:1], c[None, :, 0]), 0, None)
            length = c[:, 1] - c[:, 0]
            return np.where(others & (length[None, :] > 0), ov / np.where(length > 0, length, 1)[None, :], 0.0)

        pre_mix = own_pre + share(pre, pre) @ own_pre + share(pre, dec) @ own_dec
        dec_mix = own_dec + share(dec, pre) @ own_pre + share(dec, dec) @ own_dec
        for b, pm, dm in zip(group, pre_mix, dec_mix):
            b.prefill_mix, b.decode_mix = pm.tolist(), dm.tolist()


def fit_coefs(features: Sequence[Sequence[float]], measured: Sequence[float], prior: Sequence[float]) -> list[float]:
    """Non-negative least squares of ``measured ≈ features · coefs`` on the relative error, plus
    ``PRIOR_WEIGHT · Σ (coef/prior − 1)²`` (a rate the data cannot determine stays at its prior).

    Few unknowns (up to 5): every subset of them is tried free, the others at 0, and the best feasible kept.
    """
    import itertools

    import numpy as np

    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(measured, dtype=np.float64)
    p = np.asarray(prior, dtype=np.float64)
    keep = y > 0
    X, y = X[keep], y[keep]
    k = len(p)
    if not (p > 0).all():
        p = np.where(p > 0, p, 1e-30)
    # unknowns scaled by their prior: u = coef / prior, so every column is O(1)
    A = np.vstack([X * p / y[:, None], math.sqrt(PRIOR_WEIGHT) * np.eye(k)])
    b = np.concatenate([np.ones(len(y)), math.sqrt(PRIOR_WEIGHT) * np.ones(k)])
    best, best_err = np.zeros(k), float("inf")
    for r in range(k, 0, -1):
        for free in itertools.combinations(range(k), r):
            u = np.zeros(k)
            u[list(free)] = np.linalg.lstsq(A[:, list(free)], b, rcond=None)[0]
            if (u < 0).any():
                continue
            err = float(((A @ u - b) ** 2).sum())
            if err < best_err:
                best, best_err = u, err
    return list(best * p)


@dataclass
class Calibration:
    hw: Hardware
    batches: list[MeasuredBatch]
    typical_tokens: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> task -> p90 answer tokens


def calibrate(
    paths: Sequence[str | Path],
    *,
    start: Hardware | None = None,
    concurrency: float | str = "auto",
    fallback_shape: ModelShape | None = None,
) -> Calibration:
    """Fit :class:`Hardware` rates to the batches recorded under ``paths`` (see the module docstring)."""
    start = start or Hardware()
    batches = load_batches(paths, fallback_shape)
    assign_concurrency(batches, concurrency, _run_starts(paths))
    coefs = fit_coefs(
        [b.prefill_mix for b in batches] + [b.decode_mix for b in batches],
        [b.prefill_s for b in batches] + [b.decode_s for b in batches],
        start.prefill_coefs() + start.decode_coefs(),
    )
    prefill, decode = coefs[:3], coefs[3:]
    typical: dict[str, dict[str, list[int]]] = {}
    for b in batches:
        for task, tokens in zip(b.tasks, b.gen_tokens):
            typical.setdefault(b.model, {}).setdefault(task, []).append(tokens)
    return Calibration(
        Hardware.from_coefs(prefill, decode),
        batches,
        {m: {t: _percentile(v, 90) for t, v in per.items()} for m, per in typical.items()},
    )


def _percentile(values: Sequence[int], q: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, int(math.ceil(q / 100 * len(s))) - 1)]


def calibration_table(cal: Calibration) -> list[dict]:
    """Recorded vs predicted seconds per (device, model, method, length), and the predicted GPU time alone."""
    coefs = cal.hw.prefill_coefs() + cal.hw.decode_coefs()

    def dot(x):
        return sum(a * c for a, c in zip(x, coefs))

    cells: dict[tuple, dict] = {}
    for b in cal.batches:
        key = (b.device, b.model, b.method, b.length)
        c = cells.setdefault(
            key, dict(zip(("device", "model", "method", "length"), key)) | dict.fromkeys(_SUMS, 0.0) | {"batches": 0}
        )
        c["batches"] += 1
        c["concurrency"] += b.concurrency * b.wall_s
        c["wall_s"] += b.wall_s
        c["prefill_s"] += b.prefill_s
        c["decode_s"] += b.decode_s
        c["prefill_pred_s"] += dot(b.prefill_mix)
        c["decode_pred_s"] += dot(b.decode_mix)
        c["alone_s"] += b.work.prefill_s(cal.hw) + b.work.decode_s(cal.hw)
    for c in cells.values():
        c["concurrency"] /= max(c["wall_s"], 1e-12)
    return list(cells.values())


_SUMS = ("concurrency", "wall_s", "prefill_s", "decode_s", "prefill_pred_s", "decode_pred_s", "alone_s")


def relative_errors(cal: Calibration) -> tuple[float, float]:
    """Root-mean-square relative error of the per-batch predictions of the recorded times (prefill, decode)."""
    coefs = cal.hw.prefill_coefs() + cal.hw.decode_coefs()

    def err(x, y):
        return (sum(a * c for a, c in zip(x, coefs)) / y - 1) ** 2

    pre = [err(b.prefill_mix, b.prefill_s) for b in cal.batches if b.prefill_s > 0]
    dec = [err(b.decode_mix, b.decode_s) for b in cal.batches if b.decode_s > 0]
    return math.sqrt(sum(pre) / max(1, len(pre))), math.sqrt(sum(dec) / max(1, len(dec)))


# ---------------------------------------------------------------------------------------------
# the command


def _ratio(a: float, b: float) -> str:
    return f"{a / b:5.2f}" if b > 0 else "    -"


def print_calibration(cal: Calibration, start: Hardware) -> None:
    rows = calibration_table(cal)
    devices = sorted({r["device"] for r in rows})
    print(
        f"calibration: {len(cal.batches)} batches on {', '.join(devices)}; seconds as recorded (with the other "
        "processes sharing the GPU) vs predicted, and predicted alone on the GPU"
    )
    print(
        f"  {'model':<20} {'method':<22} {'length':>6} {'batches':>7} {'conc.':>5} | {'prefill s':>9} {'pred':>7} "
        f"{'ratio':>5} | {'decode s':>8} {'pred':>7} {'ratio':>5} | {'alone s':>7}"
    )
    for r in sorted(rows, key=lambda r: (r["device"], r["model"], r["length"], r["method"])):
        print(
            f"  {r['model'][:20]:<20} {r['method'][:22]:<22} {r['length']:>6} {r['batches']:>7} "
            f"{r['concurrency']:>5.2f} | "
            f"{r['prefill_s']:9.1f} {r['prefill_pred_s']:7.1f} {_ratio(r['prefill_s'], r['prefill_pred_s'])} | "
            f"{r['decode_s']:8.1f} {r['decode_pred_s']:7.1f} {_ratio(r['decode_s'], r['decode_pred_s'])} | "
            f"{r['alone_s']:7.1f}"
        )
    pre, dec = relative_errors(cal)
    print(f"  per-batch RMS relative error: prefill {pre:.0%}, decode {dec:.0%} (ratio = recorded / predicted)")
    hw = cal.hw
    names = ("tflops", "attn_tflops", "layer_overhead_ms", "step_layer_ms", "hbm_tbs")
    print(
        "  fitted rates (start → fit): "
        + ", ".join(f"{n} {getattr(start, n):.3g} → {getattr(hw, n):.3g}" for n in names)
    )
    print(f"  reuse without the records: {hw.flags()}")


def print_plan(args) -> None:
    from ..cli_options import UsageError
    from ..models import model_shape
    from ..models.registry import NAMED_MODELS
    from . import cli_common as common
    from .runner import parse_batch_sizes

    try:
        shape = model_shape(args.model)
    except ValueError as exc:
        raise UsageError(f"--model: {exc}") from None
    try:
        start = Hardware(args.tflops, args.attn_tflops, args.layer_overhead_ms, args.step_layer_ms, args.hbm_tbs)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    methods = common.methods(args)
    model_name = args.model or "smollm2-135m"
    hw, typical, batch_spec, prefill_tokens = start, None, args.batch_size, args.prefill_tokens
    if args.calibrate:
        try:
            cal = calibrate(args.calibrate, start=start, concurrency=args.concurrency, fallback_shape=shape)
        except CalibrationError as exc:
            raise UsageError(str(exc)) from None
        print_calibration(cal, start)
        print()
        hw = cal.hw
        same = [b for b in cal.batches if b.shape == shape]  # records of the planned model: its answers, its batches
        typical = cal.typical_tokens.get(same[0].model) if same else None
        if batch_spec is None and same:
            # as many tokens per batch as the records' largest batch of this model (what fitted in memory)
            tokens = max(len(b.lives) * b.length for b in same)
            batch_spec = ",".join(f"{L}:{max(1, tokens // L)}" for L in sorted(args.lengths))
        if prefill_tokens is None and same:
            prefill_tokens = max(b.prefill_tokens for b in same)
    batch_spec = batch_spec or DEFAULT_BATCH_SPEC
    prefill_tokens = prefill_tokens or DEFAULT_PREFILL_TOKENS
    done, resumed = _done_generations(args, methods) if args.resume_from else (frozenset(), None)
    try:
        rows = plan(
            methods,
            args.lengths,
            args.samples,
            shape,
            hw,
            tasks=args.tasks,
            batch_size=parse_batch_sizes(batch_spec),
            prefill_tokens=prefill_tokens,
            reserve=args.reserve,
            typical_tokens=typical,
            done=done,
            seed=args.seed,
        )
    except ValueError as exc:  # a length that leaves no prompt after --reserve
        raise UsageError(f"--lengths: {exc}") from None
    bs = parse_batch_sizes(batch_spec)
    print(f"model: {model_name} — {shape.describe()}")
    named = NAMED_MODELS.get(model_name)
    beyond = [L for L in args.lengths if named is not None and L > named.context_length]
    if beyond:
        print(
            f"note: {', '.join(map(str, beyond))} beyond {named.name}'s context of {named.context_length} tokens "
            "(eval ruler refuses them unless --rope-scaling yarn:F stretches the context F times, an exploratory "
            "setting, or --allow-overflow)"
        )
    print(
        f"plan: {len(args.tasks)} tasks × {args.samples} samples × {len(args.lengths)} lengths × "
        f"{len(methods)} methods; "
        f"batch {', '.join(f'{L}:{bs(L)}' for L in args.lengths)}, prefill {prefill_tokens} tokens per forward"
    )
    print(f"rates: {hw.flags()}")
    if resumed is not None:
        print(f"resumed: {resumed}")
    measured = sorted(set(typical or {}) & set(args.tasks))
    print(
        f"typical answers: the records' 90th percentile for {len(measured)} of {len(args.tasks)} tasks"
        + (f" ({', '.join(measured)})" if measured else "")
        + ("; 2 × SmolLM2's typical answer (capped) for the rest" if len(measured) < len(args.tasks) else "")
    )
    _print_minutes("GPU minutes, pessimistic (every answer runs to its token limit)", rows, args.lengths, "total_s")
    _print_minutes("GPU minutes, typical answers", rows, args.lengths, "typical_s")
    print("cells (seconds):")
    for r in rows:
        print(
            f"  {r.method:>14} @ {r.length:>6}: {r.batches} batches, prefill {r.prefill_s:7.1f}s, decode "
            f"{r.decode_s:7.1f}s ({r.steps} steps; typical {r.decode_typical_s:.1f}s, {r.steps_typical} steps)"
        )
    total = sum(r.total_s for r in rows) / 60
    typ = sum(r.typical_s for r in rows) / 60
    print(
        f"total ≈ {total:.1f} GPU min pessimistic, {typ:.1f} typical (exclusive use of one GPU; k processes sharing "
        "it take about as long in all) + per process: model load and prompt building ≈ 0.5–1 min"
    )


def _done_generations(args, methods) -> tuple[set, str]:
    """The generations the ``--resume-from`` records already hold with the planned settings (as ``eval ruler``
    matches them: model, dtype, prompt, seed and method config), and a line saying how many and why others
    are not counted."""
    from ..models import ModelMissingError
    from ..models.registry import NAMED_MODELS
    from . import cli_common as common
    from .cli_ruler import ruler_configs, ruler_scope
    from .records import sample_key
    from .resume import plan_resume

    named = NAMED_MODELS.get(args.model or "smollm2-135m")
    try:  # a named model's id needs no file: the plan works before the model is pulled
        model_id = named.model_id if named is not None else common.model_info(args).model_id
    except ModelMissingError as exc:
        from ..cli_options import UsageError

        raise UsageError(f"--model: {exc}") from None
    configs = ruler_configs(methods, model_id=model_id, dtype=args.dtype, reserve=args.reserve, seed=args.seed)
    scope = ruler_scope(args.tasks, args.lengths, args.samples, methods, args.seed)
    # as eval ruler reads them: a line cut by a time limit is skipped, and said
    records = common.earlier_records(args.resume_from, lambda line: print(f"resume-from: {line}"))
    resume = plan_resume(records, "sample", sample_key, configs, scope)
    lines = resume.lines()
    head = f"{len(resume.done)} of the {len(scope)} generations are in the records and are not planned"
    return resume.done, "; ".join([head, *lines[1:]])


def _print_minutes(title: str, rows: list[CellPlan], lengths: Sequence[int], attr: str) -> None:
    methods = list(dict.fromkeys(r.method for r in rows))
    by = {(r.method, r.length): getattr(r, attr) / 60 for r in rows}
    print(f"{title}:")
    print("  " + f"{'method':>14}" + "".join(f"{L:>9}" for L in lengths) + f"{'total':>9}")
    for m in methods:
        cells = [by[(m, L)] for L in lengths]
        print("  " + f"{m:>14}" + "".join(f"{c:9.1f}" for c in cells) + f"{sum(cells):9.1f}")
    cols = [sum(by[(m, L)] for m in methods) for L in lengths]
    print("  " + f"{'total':>14}" + "".join(f"{c:9.1f}" for c in cols) + f"{sum(cols):9.1f}")


__all__ = [
    "Hardware",
    "BatchWork",
    "CellPlan",
    "MeasuredBatch",
    "Calibration",
    "CalibrationError",
    "plan",
    "calibrate",
    "keys_per_row",
    "prefill_work",
    "decode_work",
    "decode_rows",
    "fit_coefs",
    "load_batches",
    "assign_concurrency",
]
