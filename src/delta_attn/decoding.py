"""The decode loop: :func:`decode` continues prefilled sequences (:class:`Prefilled`) token by token.

Decode is dense over the full cache for every method (the paper's protocol), one token per step for the
whole batch. Each sequence has its own :class:`SamplingParams`: greedy (``temperature=0``) or sampled with
its own ``torch.Generator``, so a sequence gets the same tokens whether it runs alone or in a batch. A
sequence stops at a stop token (not included in its tokens), at ``max_new_tokens``, or when ``on_token``
returns False; finished sequences are dropped from the batch (``DynamicCache.batch_select_indices``) once
they make up half of it, so long-running stragglers do not drag the whole batch along.

This module imports no prefill code: :mod:`delta_attn.generation` (prefill + decode) and
:meth:`delta_attn.chunked.PrefillOutput.generate` both build on it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .compat import cache_argument

FINISH_STOP = "stop"  # a stop token came (it is not part of the tokens)
FINISH_LENGTH = "length"  # max_new_tokens reached
FINISH_CALLBACK = "callback"  # on_token returned False


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is decoded.

    Attributes:
        max_new_tokens: at most this many generated tokens (>= 1).
        temperature: 0 = greedy (argmax); > 0 samples from ``softmax(logits / temperature)``.
        top_p: nucleus sampling: sample among the most likely tokens whose probabilities sum to at
            least ``top_p`` (in (0, 1]; 1 = no cut). Ignored when greedy.
        seed: seeds this sequence's own ``torch.Generator`` (None: a fresh random seed). Ignored when greedy.
        stop_token_ids: token ids that end the sequence (e.g. :func:`stop_token_ids` of the tokenizer).
    """

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be an int >= 1, got {n!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t >= 0):
            raise ValueError(f"SamplingParams.temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ValueError(f"SamplingParams.top_p must lie in (0, 1], got {p!r}")
        s = self.seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63):
            raise ValueError(f"SamplingParams.seed must be None or an int in [0, 2**63), got {s!r}")
        ids = self.stop_token_ids
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise ValueError(f"SamplingParams.stop_token_ids must be a set of ints, got {ids!r}")
        ids = frozenset(ids)
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
            raise ValueError(f"SamplingParams.stop_token_ids must hold ints >= 0, got {sorted(ids, key=str)!r}")
        object.__setattr__(self, "stop_token_ids", ids)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Prefilled:
    """A batch of prompts after prefill: what :func:`decode` continues from.

    Attributes:
        cache: a transformers cache holding every prompt (batch B, length N).
        logits: (B, vocab) logits at each prompt's last position.
        attention_mask: (B, N), 0 on left padding; None when no prompt is padded.
        seconds: the prefill's wall time (reported in the result).
        chunk_size: the chunk size :func:`delta_attn.generation.prefill` ran with (its ``"auto"`` resolved);
            None for one forward per micro-batch, and in a Prefilled built elsewhere.
    """

    cache: Any
    logits: torch.Tensor
    attention_mask: torch.Tensor | None = None
    seconds: float = 0.0
    chunk_size: int | None = None


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # generated ids per sequence (a stop token is not included)
    finish_reasons: list[str]  # FINISH_STOP | FINISH_LENGTH | FINISH_CALLBACK per sequence
    prefill_s: float
    decode_s: float
    decode_steps: int
    stats: dict = field(default_factory=dict)

    @property
    def hit_stop(self) -> list[bool]:
        """Per sequence: whether it ended at a stop token."""
        return [r == FINISH_STOP for r in self.finish_reasons]


def stop_token_ids(tokenizer) -> frozenset[int]:
    """End-of-turn / end-of-text ids: ``<|im_end|>``, ``<|endoftext|>``, ``eos_token_id`` (when they exist)."""
    ids: set[int] = set()
    for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"):
        i = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(i, int) and i >= 0 and tokenizer.convert_ids_to_tokens(i) == tok:
            ids.add(i)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def sync(device: torch.device) -> None:
    """Wait for ``device`` (CUDA) so that a timing covers the work queued on it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# decode


class _Sampler:
    """Picks each step's next token per sequence: argmax for greedy ones, else its own generator."""

    def __init__(self, params: Sequence[SamplingParams], device: torch.device) -> None:
        self.params = params
        self.all_greedy = all(p.greedy for p in params)
        self.generators: dict[int, torch.Generator] = {}
        for i, p in enumerate(params):
            if not p.greedy:
                g = torch.Generator(device=device)
                g.manual_seed(p.seed if p.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
                self.generators[i] = g

    def __call__(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Next token (B,) for ``logits`` (B, vocab) whose batch rows are the sequences ``rows`` (B,)."""
        nxt = logits.argmax(-1)
        if self.all_greedy:
            return nxt
        for r, i in enumerate(rows.tolist()):
            p = self.params[i]
            if p.greedy:
                continue
            probs = torch.softmax(logits[r].float() / p.temperature, dim=-1)
            if p.top_p < 1:
                probs, order = probs.sort(descending=True)
                probs = probs * ((probs.cumsum(0) - probs) < p.top_p)  # the nucleus; the top token always stays
                nxt[r] = order[torch.multinomial(probs, 1, generator=self.generators[i])[0]]
            else:
                nxt[r] = torch.multinomial(probs, 1, generator=self.generators[i])[0]
        return nxt


_REASONS = (None, FINISH_STOP, FINISH_LENGTH, FINISH_CALLBACK)  # codes 0..3 of the loop's `reason` tensor


@torch.inference_mode()
def decode(
    model,
    start: Prefilled,
    params: Sequence[SamplingParams],
    *,
    compact: bool = True,
    on_token: Callable[[int, int], bool] | None = None,
) -> GenerationResult:
    """Decode every sequence of ``start`` with its ``params``; see the module docstring.

    ``on_token(sequence index, token id)`` is called for every generated token, in sequence order
    within a step; returning False ends that sequence (the token stays in its output).
    """
    device = start.logits.device
    bsz = start.logits.shape[0]
    if len(params) != bsz:
        raise ValueError(f"got {len(params)} SamplingParams for {bsz} sequences")
    cache = start.cache
    cache_kw = cache_argument(model)
    mask = start.attention_mask
    padded = mask is not None and not bool(mask.all())
    cur_pos = mask.sum(-1) if padded else None  # next position of each sequence (left padding shifts them)
    if not padded:
        mask = None
    sampler = _Sampler(params, device)
    limits = [p.max_new_tokens for p in params]
    width = max((len(p.stop_token_ids) for p in params), default=0)
    stops = torch.full((bsz, max(1, width)), -1, dtype=torch.long)  # -1 matches no token
    for i, p in enumerate(params):
        stops[i, : len(p.stop_token_ids)] = torch.tensor(sorted(p.stop_token_ids), dtype=torch.long)
    stops = stops.to(device)
    lim = torch.tensor(limits, device=device)
    active = torch.arange(bsz, device=device)  # batch row -> sequence index
    # grown by doubling as tokens come: max_new_tokens may be far beyond what a sequence generates (a server
    # allowed past the context takes any int32), and a buffer of that size up front could not be allocated
    gen = torch.full((bsz, min(max(limits), 256)), -1, dtype=torch.long, device=device)
    reason = torch.zeros(bsz, dtype=torch.int8, device=device)  # index into _REASONS; 0 = running
    done = torch.zeros(bsz, dtype=torch.bool, device=device)  # per batch row
    nxt = sampler(start.logits, active)
    sync(device)
    t0 = time.perf_counter()
    steps = t = 0
    while True:
        is_stop = (nxt.view(-1, 1) == stops[active]).any(-1) & ~done
        write = ~done & ~is_stop
        if t == gen.shape[1]:
            gen = torch.cat([gen, torch.full_like(gen, -1)], dim=1)
        gen[active[write], t] = nxt[write]
        t += 1
        by_callback = torch.zeros_like(done)
        if on_token is not None:
            rows = write.nonzero().squeeze(-1)
            for r, i, tok in zip(rows.tolist(), active[rows].tolist(), nxt[rows].tolist()):
                if on_token(i, tok) is False:
                    by_callback[r] = True
        by_length = write & ~by_callback & (lim[active] <= t)
        for code, rows_now in ((1, is_stop), (3, by_callback), (2, by_length)):
            reason[active[rows_now]] = code
        done = done | is_stop | by_callback | by_length
        n_alive = int((~done).sum())
        if n_alive == 0:
            break
        if compact and n_alive <= done.numel() // 2:
            idx = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(idx)
            active, nxt, done = active[idx], nxt[idx], done[idx]
            if padded:
                mask, cur_pos = mask[idx], cur_pos[idx]
        kwargs = {}
        if padded:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            kwargs = {"attention_mask": mask, "position_ids": cur_pos.view(-1, 1)}
            cur_pos = cur_pos + 1
        out = model(input_ids=nxt.view(-1, 1), use_cache=True, **{cache_kw: cache}, **kwargs)
        steps += 1
        nxt = sampler(out.logits[:, -1], active)
        del out
    sync(device)
    rows_out = gen.tolist()
    tokens = [[x for x in r[:n] if x >= 0] for r, n in zip(rows_out, limits)]
    reasons = [_REASONS[c] for c in reason.tolist()]
    return GenerationResult(tokens, reasons, start.seconds, time.perf_counter() - t0, steps)
