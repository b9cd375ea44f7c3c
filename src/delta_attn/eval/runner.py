"""Running RULER-style prompts through a model with several methods: batching, resuming, time limits.

The work is a list of (length, method) cells in the order given (put the most important first: a
time-limited run stops between batches, so the cells it reaches are complete). Every prompt of one
length has the same token count, so batches need no padding. The prompts are tokenised once and
reused by every method; batches group tasks with similar typical answer lengths
(:data:`TYPICAL_GEN_TOKENS`), because a batch decodes until its longest answer ends. A batch that
runs out of GPU memory is retried at half the size; a method that raises is logged and skipped, so
one failure does not cost the rest of an unattended run.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..generation import SamplingParams, generate, stop_token_ids
from ..methods import Method
from . import ruler, scoring
from .records import JsonlWriter

#: typical answer length of SmolLM2-135M per task (dense, CPU run at 1K): a batch lasts as long as its
#: longest answer, so batching tasks of similar answer length saves decode steps. Only an ordering hint.
TYPICAL_GEN_TOKENS = {
    "niah_multivalue": 128,
    "niah_multiquery": 128,
    "cwe": 120,
    "niah_single_2": 60,
    "fwe": 50,
    "niah_multikey_3": 45,
    "niah_single_3": 40,
    "qa_1": 32,
    "qa_2": 32,
    "vt": 30,
    "niah_single_1": 12,
    "niah_multikey_1": 12,
    "niah_multikey_2": 12,
}


def parse_batch_sizes(spec: str | int | None, default: int = 16) -> Callable[[int], int]:
    """``"32"`` or ``"1024:128,2048:96,4096:64,8192:32"`` (a length not listed uses the next listed
    length above it, else the largest listed one) -> function length -> batch size.

    Raises ``ValueError`` for a malformed spec or a size or length below 1."""
    if spec is None or spec == "":
        return lambda L: default
    if isinstance(spec, int):
        return parse_batch_sizes(str(spec))
    try:
        pairs = [item.split(":") if ":" in item else ["1", item] for item in spec.split(",") if item.strip()]
        table = sorted((int(a), int(b)) for a, b in pairs)
    except ValueError:
        raise ValueError(f"batch size spec {spec!r}: expected N or LENGTH:N,LENGTH:N,...") from None
    if not table or min(min(a, b) for a, b in table) < 1:
        raise ValueError(f"batch size spec {spec!r}: sizes and lengths must be >= 1")
    if ":" not in spec:
        v = table[0][1]
        return lambda L: v

    def size(L: int) -> int:
        for length, b in table:
            if L <= length:
                return b
        return table[-1][1]

    return size


@dataclass
class Deadline:
    """Stop starting batches that would end after ``limit_s`` seconds since ``start``."""

    limit_s: float | None
    start: float = field(default_factory=time.perf_counter)
    margin_s: float = 5.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, predicted_s: float) -> bool:
        return self.limit_s is None or self.elapsed() + predicted_s + self.margin_s <= self.limit_s


@dataclass
class RulerRunStats:
    done: int = 0
    skipped_existing: int = 0
    left_for_later: int = 0
    batches: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    decode_steps: int = 0
    stopped_by_deadline: bool = False
    failed: int = 0
    errors: list = field(default_factory=list)


def _set_method(model, method: Method) -> None:
    import delta_attn

    if method.is_dense:
        delta_attn.disable(model)
    else:
        delta_attn.enable(model, method.config)


def run_ruler(
    model,
    tokenizer,
    samples: Sequence[ruler.Sample],
    methods: Sequence[Method],
    writer: JsonlWriter,
    *,
    lengths: Sequence[int],
    batch_size: Callable[[int], int],
    done: set,
    configs: dict[str, dict],
    run_id: str,
    seed: int,
    deadline: Deadline | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    prefill_tokens: int | None = None,
) -> RulerRunStats:
    """Generate and score every (sample, method) pair not in ``done``; append records to ``writer``.

    ``configs`` maps each method name to the ``config`` its records carry (see :mod:`delta_attn.eval.records`).
    """
    stats = RulerRunStats()
    stop_ids = stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    by_length: dict[int, list[ruler.Sample]] = {}
    for s in samples:
        by_length.setdefault(s.length, []).append(s)
    cells = []
    for L in lengths:
        for m in methods:
            pending = []
            for s in by_length.get(L, []):
                key = (s.task, s.length, s.index, m.name, seed)
                if key in done:
                    stats.skipped_existing += 1
                else:
                    pending.append(s)
            pending.sort(key=lambda s: (-TYPICAL_GEN_TOKENS.get(s.task, s.max_new_tokens), s.task, s.index))
            if pending:
                cells.append((L, m, pending))
    total = sum(len(p) for _, _, p in cells)
    bar = None
    if progress and total:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="ruler", unit="gen", mininterval=5.0, dynamic_ncols=True)
    per_token_s: dict[tuple, float] = {}  # (length, method) -> seconds per prompt in the last batch
    try:
        for L, m, pending in cells:
            bs = max(1, batch_size(L))
            pb = max(1, prefill_tokens // L) if prefill_tokens else None
            i = 0
            try:
                _set_method(model, m)
                while i < len(pending):
                    batch = pending[i : i + bs]
                    guess = per_token_s.get((L, m.name), per_token_s.get((L, "dense"), 0.0)) * len(batch)
                    if deadline is not None and not deadline.allows(guess):
                        stats.stopped_by_deadline = True
                        stats.left_for_later = total - stats.done - stats.failed
                        log(
                            f"time limit: stopping before {m.name} @ {L} ({stats.left_for_later} generations left "
                            f"for a resumed run); elapsed {deadline.elapsed():.0f}s, next batch ~{guess:.0f}s"
                        )
                        return stats
                    t0 = time.perf_counter()
                    try:
                        res = generate(
                            model,
                            [s.input_ids for s in batch],
                            [SamplingParams(s.max_new_tokens, stop_token_ids=stop_ids) for s in batch],
                            pad_id=pad_id,
                            prefill_batch=pb,
                            # one forward per micro-batch, not generate's chunked "auto" for long prompts: the
                            # protocol every evaluation in RESULTS.md ran with (chunked is equal up to rounding only)
                            chunk_size=None,
                        )
                    except torch.OutOfMemoryError:
                        if bs == 1:
                            raise
                        bs, pb = max(1, bs // 2), max(1, (pb or bs) // 2)
                        _free_memory()
                        log(f"out of memory: {m.name} @ {L} continues with batch {bs} (prefill {pb})")
                        continue
                    wall = time.perf_counter() - t0
                    per_token_s[(L, m.name)] = wall / len(batch)
                    stats.batches += 1
                    stats.prefill_s += res.prefill_s
                    stats.decode_s += res.decode_s
                    stats.decode_steps += res.decode_steps
                    recs = [
                        _record(s, m, toks, hit, res, tokenizer, seed, run_id, len(batch)) | {"config": configs[m.name]}
                        for s, toks, hit in zip(batch, res.tokens, res.hit_stop)
                    ]
                    writer.write(recs)
                    stats.done += len(batch)
                    i += len(batch)
                    if bar is not None:
                        acc = sum(r["score"] for r in recs) / len(recs)
                        bar.set_postfix_str(f"{m.name}@{L} acc={acc:.2f} {wall:.1f}s/batch", refresh=False)
                        bar.update(len(batch))
            except Exception as exc:  # one broken method must not cost the rest of an unattended run
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                stats.failed += len(pending) - i
                stats.errors.append(f"{m.name}@{L}: {type(exc).__name__}: {exc}")
                log(f"ERROR in {m.name} @ {L}, {len(pending) - i} generations skipped:\n{traceback.format_exc()}")
                _free_memory()
    finally:
        if bar is not None:
            bar.close()
        import delta_attn

        delta_attn.disable(model)
    return stats


def _record(
    s: ruler.Sample, m: Method, toks: list[int], hit: bool, res, tokenizer, seed: int, run_id: str, batch_size: int
) -> dict:
    pred = tokenizer.decode(toks, skip_special_tokens=True)
    return {
        "record": "sample",
        "task": s.task,
        "length": s.length,
        "index": s.index,
        "method": m.name,
        "seed": seed,
        "prompt_tokens": s.prompt_tokens,
        "prediction": pred,
        "references": s.answers,
        "score": scoring.score(pred, s.answers, s.metric),
        "metric": s.metric,
        "gen_tokens": len(toks),
        "hit_stop": bool(hit),
        "max_new_tokens": s.max_new_tokens,
        "depths": s.meta.get("depths"),
        "run_id": run_id,
        "batch": {
            "size": batch_size,
            "prefill_s": round(res.prefill_s, 4),
            "decode_s": round(res.decode_s, 4),
            "steps": res.decode_steps,
        },
    }


def _free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
