"""Context-parallel Δ prefill: the sequence split over the ranks of a ``torch.distributed`` group.

* :func:`cp_delta_attention` — each rank passes its contiguous shard of q, k, v and gets its shard of
  the output, equal (to rounding) to :func:`delta_attn.delta_attention` on the whole sequence.
* :func:`cp_prefill` — a Hugging Face model's prefill with each rank holding a shard of the prompt;
  returns the last-token logits and the gathered KV cache (on every rank) to decode from.
* :func:`shard_bounds` — the positions ``[q0, q1)`` rank r holds for a sequence of N tokens.

``python -m delta_attn.distributed.check`` (under torchrun) checks the equivalences with NCCL or gloo
and times a CP prefill of one attention layer. docs/algorithm.md §14 has the algorithm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .attention import CPResult, cp_attention, cp_delta_attention, gather_sequence

if TYPE_CHECKING:  # pragma: no cover
    from .hf import cp_prefill


def shard_bounds(n_tokens: int, world_size: int, rank: int) -> tuple[int, int]:
    """Positions ``[q0, q1)`` of ``rank``: shards of ``ceil(N / world)`` tokens, the last one shorter.

    Raises ValueError when the last rank would get no token (N too small for the world size).
    """
    n = -(-n_tokens // world_size)
    if n_tokens < 1 or (world_size - 1) * n >= n_tokens:
        raise ValueError(
            f"{n_tokens} tokens cannot be split into {world_size} shards of ceil(N/world) = {n} tokens with the last "
            "one non-empty; use fewer ranks or a longer sequence"
        )
    return rank * n, min(n_tokens, (rank + 1) * n)


def __getattr__(name: str):
    if name == "cp_prefill":  # imports transformers: only on first use
        from .hf import cp_prefill

        return cp_prefill
    raise AttributeError(f"module 'delta_attn.distributed' has no attribute {name!r}")


__all__ = ["CPResult", "cp_attention", "cp_delta_attention", "cp_prefill", "gather_sequence", "shard_bounds"]
