"""``cp_prefill``: a Hugging Face model's Δ prefill with the prompt split over the ranks of a group.

Each rank forwards its contiguous shard of the prompt (position ids offset to the shard's place)
through the unchanged model; every attention layer runs :func:`cp_attention` through
:func:`delta_attn.hf.prefill_override` (the ``"delta"`` attention implementation, no forked model
code). The MLPs, norms and projections are per-token, so they need no communication.

The cache is **gathered**: the attention layers all-gather K and V anyway (the dense anchor rows need
every earlier key), so each rank keeps the whole sequence's K/V per layer and gets a full
``DynamicCache`` — every rank then decodes densely and identically, with no communication per
token. Memory: each rank holds the whole KV cache (2·layers·B·Hkv·N·D elements, what a single device
would hold) while activations and Q stay sharded. (A sharded cache would save (W−1)/W of it but turn
every decoded token into a distributed attention with an LSE merge over ranks; not done here.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache

from ..chunked import PrefillOutput
from ..compat import last_logits_only
from ..config import DeltaConfig
from ..hf import PrefillState, current_config, enable, prefill_override
from .attention import cp_attention


def _exchange_lengths(input_ids, group) -> list[int]:
    problem = None
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        problem = f"input_ids must be this rank's shard (batch, n) with n >= 1, got {got}"
    elif input_ids.is_floating_point():
        problem = f"input_ids must hold integer token ids, got {input_ids.dtype}"
    info = (problem, None if problem else tuple(input_ids.shape))
    infos: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(infos, info, group=group)
    bad = [f"rank {r}: {p}" for r, (p, _) in enumerate(infos) if p]
    if not bad:
        shapes = [s for _, s in infos]
        if len({b for b, _ in shapes}) > 1:
            bad.append(f"batch sizes differ between ranks: {[b for b, _ in shapes]}")
        n0 = shapes[0][1]
        if any(n != n0 for _, n in shapes[:-1]) or shapes[-1][1] > n0:
            bad.append(f"shard lengths {[n for _, n in shapes]}: every rank but the last must hold rank 0's length")
    if bad:
        raise ValueError("cp_prefill: " + "; ".join(bad))
    return [n for _, (_, n) in infos]


@torch.no_grad()
def cp_prefill(
    model: PreTrainedModel, input_ids: Tensor, *, group=None, config: DeltaConfig | None = None
) -> PrefillOutput:
    """Prefill a prompt split over the ranks of ``group``; returns the same on every rank.

    Args:
        model: a decoder-only transformers model, the same weights on every rank; switched to delta
            attention with ``config`` (or already by :func:`delta_attn.enable`).
        input_ids: (B, n) this rank's contiguous shard of the prompt (rank r holds tokens
            ``[r·n, r·n + n)``, the last rank may hold fewer; :func:`delta_attn.distributed.shard_bounds`).
            No padding: every sequence of the batch has the prompt's full length.
        group: the process group (default: the world).
        config: the :class:`DeltaConfig` to enable (default: the model's current one).
    Returns:
        :class:`delta_attn.PrefillOutput` with the whole prompt's ``DynamicCache`` (gathered), the
        last token's logits (B, vocab) and an all-ones attention mask (B, N) — identical on every
        rank, so decoding continues locally and identically: ``out.generate(max_new_tokens=...)``.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("cp_prefill needs torch.distributed: call torch.distributed.init_process_group first")
    if config is not None:
        enable(model, config)
    cfg = current_config(model)
    if cfg is None:
        raise ValueError("cp_prefill needs a model switched to delta attention: pass config= or call enable first")
    lengths = _exchange_lengths(input_ids, group)
    rank, world = dist.get_rank(group), len(lengths)
    q0, total = sum(lengths[:rank]), sum(lengths)
    bsz, n = input_ids.shape
    kv: dict[int, tuple[Tensor, Tensor]] = {}

    def attend(module, query, key, value, scaling, **kwargs):
        if kwargs.get("sliding_window") is not None:
            raise ValueError("cp_prefill does not support sliding-window attention layers")
        layer_idx = module.layer_idx
        layer_cfg = cfg.replace(mode="dense") if cfg.is_dense_layer(layer_idx) else cfg
        res = cp_attention(query, key, value, layer_cfg, group=group, scale=scaling)
        kv[layer_idx] = (res.keys, res.values)
        return res.out

    position_ids = torch.arange(q0, q0 + n, device=input_ids.device).expand(bsz, n)
    extra = last_logits_only(model)
    with prefill_override(model, attend):
        out = model(input_ids=input_ids, position_ids=position_ids, use_cache=False, **extra)
    logits = out.logits[:, -1].contiguous()
    last = world - 1 if group is None else dist.get_global_rank(group, world - 1)
    dist.broadcast(logits, src=last, group=group)  # the last token lives on the last rank
    cache = DynamicCache(config=model.config)
    for layer_idx in sorted(kv):
        cache.update(*kv.pop(layer_idx), layer_idx)
    mask = torch.ones(bsz, total, dtype=torch.long, device=input_ids.device)
    return PrefillOutput(
        past_key_values=cache, logits=logits, attention_mask=mask, state=PrefillState(prompt_len=total), model=model
    )
