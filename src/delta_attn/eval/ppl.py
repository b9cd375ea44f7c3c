"""Perplexity, PG-19 style: teacher-forced NLL over long public-domain texts, by position range.

Documents are whole public-domain works (Shakespeare plays, Milton, the KJV; :data:`corpus.PPL_BOOKS`);
each contributes one window of exactly ``length`` tokens starting 10% into the work (past the front
matter; a second round of windows starts at 55% when more documents than books are asked for). The
whole window is one prefill with the method under test (so Δ's exact tail covers its last rows), and
the NLL of every next token is summed per position range ``[0,1K), [1K,2K), [2K,4K), [4K,8K)``.

Logits are computed in slices of 1024 positions from the final hidden states, never as a full
N × vocab tensor. ``interp="linear"`` is **non-causal** — row i reads the Δ of the anchor after it, i.e.
information from later tokens — so its perplexity is not a valid language-model score; it is marked
wherever it is reported.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence

import torch

from ..methods import Method
from . import corpus
from .records import JsonlWriter

#: bump when the document windows change (result records carry it)
DOC_FORMAT = 1
DEFAULT_EDGES = (0, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


def bucket_edges(length: int, edges: Sequence[int] = DEFAULT_EDGES) -> list[int]:
    """Position-range boundaries up to ``length`` (predicted-token positions 1..length-1)."""
    out = [e for e in edges if e < length]
    return out + [length]


def ppl_documents(
    tokenizer, length: int, num_docs: int, texts_dir=None, books: Sequence[str] = corpus.PPL_BOOKS
) -> list[tuple[str, list[int]]]:
    """``num_docs`` windows of exactly ``length`` tokens (``length`` >= 2: one token is predicted): (name, ids)."""
    if length < 2:
        raise ValueError(f"a perplexity window needs at least 2 tokens, got length {length}")
    texts_dir = corpus.resolve_texts_dir(texts_dir)
    out: list[tuple[str, list[int]]] = []
    taken: dict[str, list[tuple[int, int]]] = {}  # work -> character spans of its windows so far
    rounds = (0.10, 0.55, 0.30, 0.80)
    for frac in rounds:
        for name in books:
            if len(out) >= num_docs:
                return out
            text = corpus.load_text(name, texts_dir)
            start = int(len(text) * frac)
            start = text.find(" ", start) + 1 if text.find(" ", start) >= 0 else start
            chars = max(64, length * 6)  # ~4 characters per token: enough text for one encode, usually
            while True:
                ids = tokenizer.encode(text[start : start + chars], add_special_tokens=False)
                if len(ids) >= length + 1 or start + chars >= len(text):
                    break
                chars *= 2
            if len(ids) < length:
                continue  # the work is too short for this window
            # long windows (32K tokens of a play) reach into the work's earlier windows: such a window would
            # count the same text twice, so it is left out (a window's text never changes, only which are taken)
            end = start + len(tokenizer.decode(ids[:length]))
            if any(a < end and start < b for a, b in taken.get(name, [])):
                continue
            taken.setdefault(name, []).append((start, end))
            out.append((f"{name}@{frac:.2f}", ids[:length]))
    return out


@torch.inference_mode()
def nll_by_position(
    model, ids: torch.Tensor, edges: Sequence[int], slice_len: int = 1024
) -> tuple[list[list[float]], list[int]]:
    """Summed next-token NLL per position range for each sequence of ``ids`` (B, N)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    hidden = base(input_ids=ids, use_cache=False).last_hidden_state  # (B, N, H)
    bsz, n = ids.shape
    nll = torch.zeros(bsz, n - 1, dtype=torch.float64, device=ids.device)
    for s in range(0, n - 1, slice_len):
        e = min(n - 1, s + slice_len)
        logits = model.lm_head(hidden[:, s:e]).float()
        nll[:, s:e] = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), ids[:, s + 1 : e + 1], reduction="none"
        ).double()
    # nll[:, p] predicts token p + 1: bucket by the predicted token's position
    sums, counts = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        a, b = max(lo, 1) - 1, hi - 1
        sums.append(nll[:, a:b].sum(-1))
        counts.append(b - a)
    per_seq = torch.stack(sums, dim=-1).tolist()
    return per_seq, counts


def score_in_batches(
    model,
    method: Method,
    docs: Sequence[tuple[str, list[int]]],
    writer: JsonlWriter,
    *,
    batch_size: int,
    score: Callable[[torch.Tensor], list],
    records: Callable[[Sequence[tuple[str, list[int]]], list, float], list[dict]],
    what: str,
    log: Callable[[str], None] = print,
    deadline=None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[int, bool]:
    """Score ``docs`` with ``method`` a batch at a time and write their records; (records written, stopped).

    ``score(ids)`` returns one result per document of the batch, ``records(batch, results, wall_s)`` the
    records to write. A batch that runs out of GPU memory is retried at half the size; a method that fails
    (or that the operator does not implement) is logged and skipped, so one broken method costs no other.
    ``stopped`` is True when ``deadline`` ran out before every document was scored. ``what`` names the
    job in log lines (e.g. ``"ppl delta@8192"``).
    """
    import delta_attn

    device = next(model.parameters()).device
    bs, i, written = batch_size, 0, 0
    try:
        if method.is_dense:
            delta_attn.disable(model)
        else:
            delta_attn.enable(model, method.config)
        while i < len(docs):
            if deadline is not None and not deadline.allows(0.0):
                log(f"time limit: {what} stopped ({len(docs) - i} documents left for a resumed run)")
                return written, True
            chunk = docs[i : i + bs]
            ids = torch.tensor([d[1] for d in chunk], dtype=torch.long, device=device)
            t0 = time.perf_counter()
            try:
                results = score(ids)
            except torch.OutOfMemoryError:
                if bs == 1:
                    raise
                bs = max(1, bs // 2)
                del ids
                torch.cuda.empty_cache()
                log(f"out of memory: {what} continues with batch {bs}")
                continue
            recs = records(chunk, results, time.perf_counter() - t0)
            writer.write(recs)
            written += len(recs)
            i += len(chunk)
            if on_batch is not None:
                on_batch(len(chunk))
    except NotImplementedError as exc:  # a variant the operator does not implement
        log(f"SKIPPED {what} ({len(docs) - i} documents): {exc}")
    except Exception:  # one broken method must not cost the others
        log(f"ERROR in {what}, {len(docs) - i} documents skipped:\n{traceback.format_exc()}")
    return written, False


def run_ppl(
    model,
    docs: Sequence[tuple[str, list[int]]],
    methods: Sequence[Method],
    writer: JsonlWriter,
    *,
    length: int,
    batch_size: int,
    done: set,
    configs: dict[str, dict],
    run_id: str,
    progress: bool = True,
    log: Callable[[str], None] = print,
    deadline=None,
) -> int:
    """Evaluate every (document, method) not in ``done`` at ``length``; returns records written.

    ``configs`` maps each method name to the ``config`` its records carry (see :mod:`delta_attn.eval.records`).
    """
    import delta_attn

    edges = bucket_edges(length)
    jobs = [(m, [d for d in docs if (d[0], length, m.name) not in done]) for m in methods]
    jobs = [(m, ds) for m, ds in jobs if ds]
    total = sum(len(ds) for _, ds in jobs)
    bar = None
    if progress and total:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"ppl@{length}", unit="doc", mininterval=5.0, dynamic_ncols=True)

    def records_of(m: Method):
        def records(chunk, results, wall):
            return [
                {
                    "record": "ppl",
                    "doc": name,
                    "length": length,
                    "method": m.name,
                    "causal": m.causal,
                    "edges": edges,
                    "nll_sum": [round(x, 4) for x in s],
                    "tokens": counts,
                    "run_id": run_id,
                    "batch": {"size": len(chunk), "wall_s": round(wall, 4)},
                    "config": configs[m.name],
                }
                for (name, _), (s, counts) in zip(chunk, results)
            ]

        return records

    def score(ids):
        sums, counts = nll_by_position(model, ids, edges)
        return [(s, counts) for s in sums]

    written = 0
    try:
        for m, ds in jobs:
            n, stopped = score_in_batches(
                model,
                m,
                ds,
                writer,
                batch_size=batch_size,
                score=score,
                records=records_of(m),
                what=f"ppl {m.name}@{length}",
                log=log,
                deadline=deadline,
                on_batch=bar.update if bar is not None else None,
            )
            written += n
            if stopped:
                break
    finally:
        if bar is not None:
            bar.close()
        delta_attn.disable(model)
    return written
