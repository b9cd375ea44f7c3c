"""The one decode loop: ``demo``, ``generate``, the evaluation and the server all decode through it.

:func:`generate` = :func:`prefill` + :func:`decode`:

* **Prefill** computes logits for the **last position only** (never an N×vocab tensor). With
  :func:`delta_attn.enable` active it runs the configured sparse/Δ method; with ``chunk_size`` it goes
  through :func:`delta_attn.chunked_prefill` (bounded activation memory, same result up to rounding).
  The default ``chunk_size="auto"`` does so for long prompts (:func:`resolve_chunk_size`: over
  :data:`AUTO_CHUNK_ABOVE` tokens, in chunks of :data:`AUTO_CHUNK_SIZE`, on a model running causal Δ
  settings). Prompts of unequal length are left-padded with an attention mask and explicit position ids.
  Large batches can prefill in micro-batches of ``prefill_batch`` sequences whose caches are then
  concatenated.
* **Decode** is dense over the full cache for every method (the paper's protocol; hf.py does this),
  one token per step for the whole batch. Each sequence has its own :class:`SamplingParams`: greedy
  (``temperature=0``) or sampled with its own ``torch.Generator``, so a sequence gets the same tokens
  whether it runs alone or in a batch. A sequence stops at a stop token (not included in its tokens),
  at ``max_new_tokens``, or when ``on_token`` returns False; finished sequences are dropped from the
  batch (``DynamicCache.batch_select_indices``) once they make up half of it, so long-running
  stragglers do not drag the whole batch along.

The decode loop itself lives in :mod:`delta_attn.decoding` (re-exported here); callers that build the
prompt's cache themselves (the demo prefills a shared haystack once and
continues it per prompt) hand it to :func:`decode` as a :class:`Prefilled`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from .compat import cache_argument, left_padding_position_ids
from .config import AUTO_CHUNK_ABOVE, AUTO_CHUNK_SIZE
from .decoding import (
    FINISH_CALLBACK,
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationResult,
    Prefilled,
    SamplingParams,
    decode,
    stop_token_ids,
    sync,
)

__all__ = [  # the decode loop's names are re-exported: callers import everything from here
    "AUTO",
    "AUTO_CHUNK_ABOVE",
    "AUTO_CHUNK_SIZE",
    "FINISH_CALLBACK",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "GenerationResult",
    "Prefilled",
    "SamplingParams",
    "decode",
    "generate",
    "prefill",
    "resolve_chunk_size",
    "stop_token_ids",
]

#: ``chunk_size=AUTO``: chunked prefill for long prompts where the model can run it (:func:`resolve_chunk_size`)
AUTO = "auto"
ChunkSize = int | Literal["auto"] | None


def _check_chunk_size(chunk_size) -> None:
    if chunk_size is None or chunk_size == AUTO:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(
            f"chunk_size must be 'auto' (chunked for long prompts), None (the whole prompt in one forward) or an "
            f"int >= 1 (tokens per chunk), got {chunk_size!r}"
        )


def resolve_chunk_size(model, n: int, chunk_size: ChunkSize = AUTO) -> int | None:
    """The chunk size :func:`prefill` uses for prompts whose longest has ``n`` tokens (None: one forward).

    An int is that chunk and None one forward, as given. ``"auto"`` chunks (:data:`AUTO_CHUNK_SIZE` tokens)
    only where chunking is the better choice and can run: the prompt is longer than :data:`AUTO_CHUNK_ABOVE`
    tokens, the model is switched to Δ attention (:func:`delta_attn.enable`: chunked prefill needs it) and its
    config is causal (:attr:`~delta_attn.DeltaConfig.is_causal`: a non-causal one must see the whole prompt).
    Chunks bound the activation memory to one chunk at about the one-shot time: on an H100, 1.00–1.04× at
    128K–512K (1.03–1.12× in an earlier run), the 512K peak 19.4 GB instead of 50.5 GB (BENCHMARKS.md,
    2026-12-07 and 2026-12-06). Shorter prompts keep the one forward: their activations are small anyway.
    """
    _check_chunk_size(chunk_size)
    if chunk_size != AUTO:
        return chunk_size
    if n <= AUTO_CHUNK_ABOVE:
        return None
    from .hf import delta_binding

    binding = delta_binding(model)
    if binding is None or not binding.config.is_causal:
        return None
    return AUTO_CHUNK_SIZE


def _merge_caches(caches, config):
    """One cache holding the batch rows of several (same sequence length), of the parts' kind: a
    :class:`~delta_attn.kv_cache.PreallocatedCache` (chunked prefill's) of the parts' capacity, else a DynamicCache.

    A :class:`~delta_attn.kv_cache.PreallocatedLayer`'s ``keys`` / ``values`` are views of the filled part of
    its buffer (which holds room to decode into beyond it), so concatenating them takes the tokens only.
    """
    from transformers import DynamicCache

    from .kv_cache import PreallocatedCache, PreallocatedLayer

    first = caches[0]
    if isinstance(first, PreallocatedCache):  # keep the in-place cache and its decode room for the batch
        merged = PreallocatedCache(first.capacity, config=config)
    else:
        merged = DynamicCache(config=config)
    for li in range(len(first.layers)):
        k = torch.cat([c.layers[li].keys for c in caches])
        v = torch.cat([c.layers[li].values for c in caches])
        for c in caches:  # free the parts as we go (a preallocated layer's buffer too, not only its views)
            layer = c.layers[li]
            layer.keys = layer.values = None
            if isinstance(layer, PreallocatedLayer):
                layer.key_buffer = layer.value_buffer = None
        merged.update(k, v, li)
    return merged


# ---------------------------------------------------------------------------------------------
# prefill


@torch.inference_mode()
def prefill(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    chunk_size: ChunkSize = AUTO,
    prefill_batch: int | None = None,
    pad_id: int = 0,
) -> Prefilled:
    """Prefill token-id ``prompts`` (left-padded when their lengths differ); see the module docstring.

    ``chunk_size``: ``"auto"`` (default; :func:`resolve_chunk_size`), None (one forward per micro-batch) or
    tokens per chunk; the size used is :attr:`Prefilled.chunk_size` of the result.
    """
    from transformers import DynamicCache

    _check_chunk_size(chunk_size)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prefill needs at least one prompt, and every prompt needs at least one token")
    device = next(model.parameters()).device
    bsz, lens = len(prompts), [len(p) for p in prompts]
    n = max(lens)
    chunk_size = resolve_chunk_size(model, n, chunk_size)
    ids = torch.full((bsz, n), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, n - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
    ids = ids.to(device)
    mask = pos = None
    if min(lens) != n:
        mask = (torch.arange(n).view(1, -1) >= torch.tensor([n - L for L in lens]).view(-1, 1)).long().to(device)
        pos = left_padding_position_ids(mask)

    sync(device)
    t0 = time.perf_counter()
    pb = bsz if not prefill_batch or prefill_batch >= bsz else int(prefill_batch)
    logits, caches = [], []
    for s in range(0, bsz, pb):  # micro-batches bound the activation memory; decode runs them all together
        sl = slice(s, s + pb)
        if chunk_size is not None:
            from .chunked import chunked_prefill

            out = chunked_prefill(model, ids[sl], None if mask is None else mask[sl], chunk_size=chunk_size)
            logits.append(out.logits)
            caches.append(out.past_key_values)
        else:
            part_cache = DynamicCache(config=model.config)  # filled in place by the forward
            out = model(
                input_ids=ids[sl],
                attention_mask=None if mask is None else mask[sl],
                position_ids=None if pos is None else pos[sl],
                use_cache=True,
                logits_to_keep=1,
                **{cache_argument(model): part_cache},
            )
            logits.append(out.logits[:, -1])
            caches.append(part_cache)
        del out
    cache = caches[0] if len(caches) == 1 else _merge_caches(caches, model.config)
    del caches
    sync(device)
    return Prefilled(cache, torch.cat(logits), mask, time.perf_counter() - t0, chunk_size)


def generate(
    model,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | Sequence[SamplingParams],
    *,
    chunk_size: ChunkSize = AUTO,
    prefill_batch: int | None = None,
    compact: bool = True,
    on_token: Callable[[int, int], bool] | None = None,
    pad_id: int = 0,
) -> GenerationResult:
    """Prefill token-id ``prompts`` and decode each with its :class:`SamplingParams` (one for all, or one each).

    Args:
        model: a transformers causal LM (switched to Δ attention with :func:`delta_attn.enable`, or not).
        prompts: token ids per sequence (any lengths; shorter ones are left-padded with ``pad_id``).
        params: one :class:`SamplingParams` for every sequence, or a sequence of them.
        chunk_size: prefill through :func:`delta_attn.chunked_prefill` in chunks of this many tokens
            (needs an enabled model); None = one forward per micro-batch; ``"auto"`` (default) = chunks of
            :data:`AUTO_CHUNK_SIZE` for prompts over :data:`AUTO_CHUNK_ABOVE` tokens on a model running causal
            Δ settings, else one forward (:func:`resolve_chunk_size`). ``stats["chunk_size"]`` says which ran.
        prefill_batch: prefill at most this many sequences per forward (decode runs them together).
        compact: drop finished sequences from the batch once they are half of it.
        on_token: ``(sequence index, token id) -> keep going?``, called for every generated token.
    Returns:
        :class:`GenerationResult`; greedy results are identical to prefill + argmax decoding one step at a time.
    """
    _check_chunk_size(chunk_size)  # before the empty-batch return: a bad value is an error with any prompts
    if isinstance(params, SamplingParams):
        params = [params] * len(prompts)
    params = list(params)
    if len(params) != len(prompts):
        raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
    if not prompts:
        return GenerationResult([], [], 0.0, 0.0, 0)
    start = prefill(model, prompts, chunk_size=chunk_size, prefill_batch=prefill_batch, pad_id=pad_id)
    result = decode(model, start, params, compact=compact, on_token=on_token)
    result.stats = {
        "batch": len(prompts),
        "prompt_len": max(len(p) for p in prompts),
        "padded": start.attention_mask is not None,
        "chunk_size": start.chunk_size,
    }
    return result
