"""Block top-k base (Quest/HiP-like), plus sink + sliding window.

Queries and keys are cut into blocks of ``topk_block`` tokens at absolute positions. Each query block
is mean-pooled, each key block too; per query head and query block the ``topk_blocks`` causal key
blocks with the largest pooled score ``q̄·k̄`` are kept. Query i sees key j iff ``j <= i`` and
(j's block is kept for i's block, or ``j < sink``, or ``i - j < window``).
Run ``python -m delta_attn.sparse.topk`` for a picture on random data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import SparseMethod, SparsePattern


class BlockTopKPattern(SparsePattern):
    """Kept key blocks per query block.

    Attributes read by kernels: ``block`` (block size), ``q_block_start`` (absolute index of the first
    query block of this call), ``selected`` (B, Hq, n_q_blocks, k) int64 kept key-block indices,
    ``valid`` (same shape, bool; False where fewer than k causal blocks exist), ``sink``, ``window``,
    and the lookup table ``block_mask`` (B, Hq, n_q_blocks, n_k_blocks) used by :meth:`mask_mod`.
    """

    name = "topk"

    def __init__(
        self, block: int, q_block_start: int, selected: Tensor, valid: Tensor, n_k_blocks: int, sink: int, window: int
    ) -> None:
        self.block = int(block)
        self.q_block_start = int(q_block_start)
        self.selected = selected
        self.valid = valid
        self.sink = int(sink)
        self.window = int(window)
        b, h, nqb, _ = selected.shape
        self.block_mask = torch.zeros(b, h, nqb, n_k_blocks, dtype=torch.bool, device=selected.device)
        self.block_mask.scatter_(-1, selected, valid)

    def mask_mod(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        nqb = self.block_mask.shape[2]
        qb = (q_idx // self.block - self.q_block_start).clamp(0, nqb - 1)
        kb = (kv_idx // self.block).clamp(max=self.block_mask.shape[3] - 1)
        return self.block_mask[b, h, qb, kb] | (kv_idx < self.sink) | (q_idx - kv_idx < self.window)


def _block_mean(x: Tensor, start: int, block: int) -> Tensor:
    """Mean over blocks of ``block`` rows of x (..., N, D) whose first row sits at absolute ``start``."""
    n = x.shape[-2]
    first = start // block
    last = (start + n - 1) // block
    pos = torch.arange(start, start + n, device=x.device) // block - first
    sums = torch.zeros(*x.shape[:-2], last - first + 1, x.shape[-1], device=x.device, dtype=torch.float32)
    sums.index_add_(-2, pos, x.float())
    counts = torch.bincount(pos, minlength=last - first + 1).clamp(min=1).to(sums.dtype)
    return sums / counts.unsqueeze(-1)


def estimate_block_topk(
    q: Tensor, k: Tensor, *, q_start: int, block: int, n_blocks: int, sink: int, window: int
) -> BlockTopKPattern:
    """Select the top ``n_blocks`` key blocks per query block and head by pooled scores."""
    bsz, hq, nq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    q_pool = _block_mean(q, q_start, block)  # (B, Hq, nQB, D)
    k_pool = _block_mean(k, 0, block)  # (B, Hkv, nKB, D)
    nqb, nkb = q_pool.shape[2], k_pool.shape[2]
    scores = (q_pool.view(bsz, hkv, group * nqb, d) @ k_pool.transpose(-1, -2)).view(bsz, hq, nqb, nkb)
    q_blocks = torch.arange(q_start // block, q_start // block + nqb, device=q.device).view(-1, 1)
    causal = torch.arange(nkb, device=q.device).view(1, -1) <= q_blocks
    scores = scores.masked_fill(~causal, float("-inf"))
    kk = max(1, min(n_blocks, nkb))
    top = scores.topk(kk, dim=-1)
    valid = torch.isfinite(top.values) & (n_blocks > 0)
    return BlockTopKPattern(block, q_start // block, top.indices, valid, nkb, sink, window)


class BlockTopKMethod(SparseMethod):
    name = "topk"
    cost_is_exact = False  # its blocks depend on the data: row_key_counts gives the budget

    def row_key_counts(self, config, positions):
        """Upper bound: sinks + window + the kept blocks, at most the causal prefix."""
        budget = np.minimum(positions + 1, config.sink) + np.minimum(positions + 1, config.window)
        return np.minimum(positions + 1, budget + config.topk_blocks * config.topk_block)

    def plan(self, q, k, config, *, q_start, scale):
        return estimate_block_topk(
            q,
            k,
            q_start=q_start,
            block=config.topk_block,
            n_blocks=config.topk_blocks,
            sink=config.sink,
            window=config.window,
        )


if __name__ == "__main__":
    from .base import render_ascii

    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 32, 16), torch.randn(1, 1, 32, 16)
    print(render_ascii(estimate_block_topk(q, k, q_start=0, block=4, n_blocks=2, sink=1, window=3), 32))
