"""Batched greedy generation for evaluation: one prefill, a dense decode loop, early stop.

* Prefill computes logits for the **last position only** (``logits_to_keep=1``): never an N×vocab
  tensor. With :func:`delta_attn.enable` active the prefill runs the configured sparse/Δ method;
  decode is dense over the full cache for every method (the paper's protocol; hf.py does this).
* Prompts of one batch normally have the same length (the generators fit every prompt to an exact
  token count), so there is no padding. Unequal lengths are left-padded with an attention mask and
  explicit position ids (each padded sequence then costs a separate attention call in Δ prefill).
* Large batches decode together (the per-step cost of a small model is mostly fixed), but the
  prefill can run in micro-batches of ``prefill_batch`` sequences whose caches are then concatenated.
* Each sequence stops at its own token limit or at a stop token; the loop ends when all have
  stopped. Finished sequences are dropped from the batch (``DynamicCache.batch_select_indices``)
  once they make up half of it, so long-running stragglers do not drag the whole batch along.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


def stop_token_ids(tokenizer) -> set[int]:
    """End-of-turn / end-of-text ids: ``<|im_end|>``, ``<|endoftext|>``, ``eos_token_id`` (when they exist)."""
    ids: set[int] = set()
    for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"):
        i = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(i, int) and i >= 0 and tokenizer.convert_ids_to_tokens(i) == tok:
            ids.add(i)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _merge_caches(caches, config):
    """One DynamicCache holding the batch rows of several (same sequence length)."""
    from transformers import DynamicCache

    merged = DynamicCache(config=config)
    for li in range(len(caches[0].layers)):
        k = torch.cat([c.layers[li].keys for c in caches])
        v = torch.cat([c.layers[li].values for c in caches])
        for c in caches:  # free the parts as we go
            c.layers[li].keys = c.layers[li].values = None
        merged.update(k, v, li)
    return merged


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # generated ids per sequence (stop token excluded)
    hit_stop: list[bool]
    prefill_s: float
    decode_s: float
    decode_steps: int
    stats: dict = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def greedy_generate(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int],
    stop_ids: set[int],
    *,
    pad_id: int = 0,
    compact: bool = True,
    prefill_batch: int | None = None,
) -> GenerationResult:
    """Greedy-decode every prompt (token id lists) with ``model``; see the module docstring."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    bsz = len(prompts)
    limits = [int(max_new_tokens)] * bsz if isinstance(max_new_tokens, int) else [int(m) for m in max_new_tokens]
    if len(limits) != bsz or min(limits) < 1:
        raise ValueError("max_new_tokens must be >= 1 for every prompt")
    lens = [len(p) for p in prompts]
    n = max(lens)
    ids = torch.full((bsz, n), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, n - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
    ids = ids.to(device)
    padded = min(lens) != n
    mask = pos = None
    if padded:
        mask = (torch.arange(n).view(1, -1) >= torch.tensor([n - L for L in lens]).view(-1, 1)).long().to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)

    _sync(device)
    t0 = time.perf_counter()
    pb = bsz if not prefill_batch or prefill_batch >= bsz else int(prefill_batch)
    nxts, caches = [], []
    for s in range(0, bsz, pb):  # prefill in micro-batches (bounded activation memory), decode all together
        sl = slice(s, s + pb)
        c = DynamicCache(config=model.config)
        out = model(
            input_ids=ids[sl],
            attention_mask=None if mask is None else mask[sl],
            position_ids=None if pos is None else pos[sl],
            past_key_values=c,
            use_cache=True,
            logits_to_keep=1,
        )
        nxts.append(out.logits[:, -1].argmax(-1))
        caches.append(out.past_key_values)
        del out
    nxt = torch.cat(nxts)
    cache = caches[0] if len(caches) == 1 else _merge_caches(caches, model.config)
    del caches
    _sync(device)
    t1 = time.perf_counter()

    stop = torch.tensor(sorted(stop_ids), device=device, dtype=torch.long)
    lim = torch.tensor(limits, device=device)
    active = torch.arange(bsz, device=device)  # batch row -> original index
    gen = torch.full((bsz, max(limits)), -1, dtype=torch.long, device=device)
    hit = torch.zeros(bsz, dtype=torch.bool, device=device)
    done = torch.zeros(bsz, dtype=torch.bool, device=device)
    cur_pos = torch.tensor(lens, device=device) if padded else None
    steps = t = 0
    while True:
        is_stop = torch.isin(nxt, stop) & ~done
        hit[active[is_stop]] = True
        write = ~done & ~is_stop
        gen[active[write], t] = nxt[write]
        t += 1
        done = done | is_stop | (lim[active] <= t)
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
        out = model(input_ids=nxt.view(-1, 1), past_key_values=cache, use_cache=True, **kwargs)
        steps += 1
        nxt = out.logits[:, -1].argmax(-1)
        del out
    _sync(device)
    t2 = time.perf_counter()
    rows = gen.tolist()
    tokens = [[x for x in r[:lim_i] if x >= 0] for r, lim_i in zip(rows, limits)]
    return GenerationResult(
        tokens, hit.tolist(), t1 - t0, t2 - t1, steps, {"batch": bsz, "prompt_len": n, "padded": padded}
    )
