"""Δ over vLLM's paged KV cache: one chunk of one request's prompt rows (torch only; no vLLM import).

vLLM keeps each layer's keys and values in blocks: ``key_cache[block, slot, kv_head, :]`` with
``(num_blocks, block_size, Hkv, D)`` per half of the ``(num_blocks, 2, block_size, Hkv, D)`` cache, and a
request's position p in block ``block_table[r, p // block_size]``, slot ``p % block_size``. vLLM writes this
step's keys and values into the cache before the attention runs, so a chunk at positions ``[q_start, n_keys)``
finds every key it may read, ``0 .. n_keys − 1``, there.

:func:`paged_prefix` gathers those positions into a head-major ``(1, Hkv, n_keys, D)`` tensor (per chunk and
layer ``2 · n_keys · Hkv · D`` elements for K and V — 256 MiB for a Llama-3-8B layer at 128K in bf16 — copied
twice, an estimated few hundred microseconds on an H100, small next to the attention itself; chunked prefill
gathers each chunk's whole prefix again), and :func:`paged_delta_rows` runs :func:`delta_attn.delta_attention`
on it with the chunk's queries, the whole prompt's length and the carried state, so any chunking equals the
one-shot prefill (docs/algorithm.md §8).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..backend import DeltaState
from ..config import DeltaConfig
from ..ops import delta_attention
from .plan import DeltaRows, PrefillCarry


def paged_prefix(cache: Tensor, block_ids: Tensor, n_keys: int) -> Tensor:
    """Positions ``0 .. n_keys − 1`` of one request from one half (K or V) of a paged cache.

    cache:     (num_blocks, block_size, Hkv, D), e.g. ``kv_cache.unbind(1)[0]``.
    block_ids: the request's block-table row (at least ``ceil(n_keys / block_size)`` entries; int32/int64).
    Returns (1, Hkv, n_keys, D) laid out head-major (each head's keys contiguous), the layout of a transformers
    cache that the Triton kernels are tuned and benchmarked on. Two copies of the prefix: the block gather, then
    the transpose.
    """
    if cache.dim() != 4:
        raise ValueError(f"cache must be (num_blocks, block_size, kv_heads, head_dim), got shape {tuple(cache.shape)}")
    block_size, n_heads, head_dim = cache.shape[1:]
    n_blocks = -(-n_keys // block_size)
    if block_ids.numel() < n_blocks:
        raise ValueError(f"{n_keys} positions need {n_blocks} blocks, the block-table row has {block_ids.numel()}")
    blocks = cache.index_select(0, block_ids[:n_blocks].long())  # (n_blocks, block_size, Hkv, D)
    head_major = cache.new_empty(n_heads, n_blocks, block_size, head_dim)
    head_major.copy_(blocks.permute(2, 0, 1, 3))
    return head_major.view(n_heads, n_blocks * block_size, head_dim)[None, :, :n_keys]


def paged_delta_rows(
    query: Tensor,
    key_cache: Tensor,
    value_cache: Tensor,
    block_ids: Tensor,
    *,
    q_start: int,
    prompt_len: int,
    config: DeltaConfig,
    scale: float,
    state: DeltaState | None,
    dense_until: int | None = None,
    dense_config: DeltaConfig | None = None,
) -> Tensor:
    """The attention output of one chunk of prompt rows, Δ over the paged cache.

    query:       (n, Hq, D) the chunk's queries, at positions ``[q_start, q_start + n)``; ``q_start + n ≤ prompt_len``.
    key_cache, value_cache: (num_blocks, block_size, Hkv, D), already holding positions ``0 .. q_start + n − 1``.
    block_ids:   the request's block-table row.
    prompt_len:  the whole prompt's length (places the exact tail; the chunk reaching it computes the tail).
    state:       the layer's :class:`DeltaState` for this prompt (carried between chunks), or None.
    dense_until: rows at positions ``[q_start, dense_until)`` are computed exactly (dense) — the carry they need
                 is missing (:func:`delta_attn.vllm.plan.chunk_rows`); default ``q_start`` (none).
    dense_config: the config for those rows (``config.replace(mode="dense")``; pass it to skip re-validation).
    Returns (n, Hq, D) in the query's dtype.
    """
    n_rows = query.shape[0]
    n_keys = q_start + n_rows
    if n_keys > prompt_len:
        raise ValueError(f"rows up to position {n_keys} run past the prompt ({prompt_len} tokens)")
    dense_until = q_start if dense_until is None else dense_until
    if not q_start <= dense_until <= n_keys:
        raise ValueError(f"dense_until {dense_until} must lie in [{q_start}, {n_keys}]")
    k = paged_prefix(key_cache, block_ids, n_keys)
    v = paged_prefix(value_cache, block_ids, n_keys)
    q = query.permute(1, 0, 2).contiguous().unsqueeze(0)  # (1, Hq, n, D) head-major, like k and v
    out = torch.empty_like(query)
    n_dense = dense_until - q_start
    if n_dense:
        dense_config = dense_config if dense_config is not None else config.replace(mode="dense")
        rows = delta_attention(
            q[:, :, :n_dense], k[:, :, :dense_until], v[:, :, :dense_until], dense_config, scale=scale
        )
        out[:n_dense] = rows[0].permute(1, 0, 2)
    if n_dense < n_rows:
        rows = delta_attention(q[:, :, n_dense:], k, v, config, scale=scale, prompt_len=prompt_len, state=state)
        out[n_dense:] = rows[0].permute(1, 0, 2)
    return out


def run_delta_rows(
    delta_rows: tuple[DeltaRows, ...] | list[DeltaRows],
    query: Tensor,
    output: Tensor,
    key_cache: Tensor,
    value_cache: Tensor,
    block_table: Tensor,
    carry: PrefillCarry,
    config: DeltaConfig,
    *,
    scale: float,
    dense_config: DeltaConfig | None = None,
    layer: str = "",
) -> None:
    """Write the Δ rows of one step into ``output`` (what the vLLM backend's ``forward`` does per layer).

    query, output: (num_tokens, Hq, D) the step's flat batch; block_table: (num_requests, max_blocks);
    carry: the layer's :class:`PrefillCarry` (read for each chunk, dropped after a prompt's last chunk).
    """
    dense_config = dense_config if dense_config is not None else config.replace(mode="dense")
    for rows in delta_rows:
        chunk, state = carry.begin(config, rows, layer=layer)
        output[rows.token_lo : rows.token_hi] = paged_delta_rows(
            query[rows.token_lo : rows.token_hi],
            key_cache,
            value_cache,
            block_table[rows.req_index],
            q_start=rows.q_start,
            prompt_len=rows.prompt_len,
            config=config,
            scale=scale,
            state=state,
            dense_until=chunk.dense_until,
            dense_config=dense_config,
        )
        carry.end(rows)
