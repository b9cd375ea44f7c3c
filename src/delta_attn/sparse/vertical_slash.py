"""MInference-style vertical-slash base, estimated online per head.

From the last ``vs_last_q`` queries (64 in MInference) we take the softmax attention over all causal
keys, then per query head
  * sum it over queries per key column and keep the top ``vertical_size`` columns
    (the first ``vs_first_columns`` columns are always kept), and
  * sum it along diagonals (offset ``o = i - j``) and keep the top ``slash_size`` diagonals
    (the ``vs_last_diagonals`` diagonals nearest the main one, and the main one itself, are always kept).
Query i then sees key j iff ``j <= i`` and (j is a kept column or ``i - j`` is a kept diagonal).
Run ``python -m delta_attn.sparse.vertical_slash`` for a picture on random data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import SparseMethod, SparsePattern


class VerticalSlashPattern(SparsePattern):
    """Per-head kept columns and diagonals.

    Attributes read by kernels: ``columns`` (B, Hq, Kv) int64 kept key indices (sorted) and
    ``diagonals`` (B, Hq, Ks) int64 kept offsets ``i - j`` (sorted), plus the boolean lookup tables
    ``column_mask`` / ``diagonal_mask`` of shape (B, Hq, Nk) used by :meth:`mask_mod`.
    """

    name = "vertical_slash"

    def __init__(self, columns: Tensor, diagonals: Tensor, n_keys: int) -> None:
        self.columns = columns.sort(dim=-1).values
        self.diagonals = diagonals.sort(dim=-1).values
        self.n_keys = int(n_keys)
        shape = (*columns.shape[:2], n_keys)
        self.column_mask = torch.zeros(shape, dtype=torch.bool, device=columns.device)
        self.column_mask.scatter_(-1, self.columns, True)
        self.diagonal_mask = torch.zeros(shape, dtype=torch.bool, device=columns.device)
        self.diagonal_mask.scatter_(-1, self.diagonals, True)

    def mask_mod(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        # clamp: outside causality the offset is negative; the caller masks those entries anyway.
        offset = (q_idx - kv_idx).clamp(0, self.n_keys - 1)
        return self.column_mask[b, h, kv_idx] | self.diagonal_mask[b, h, offset]


def estimate_vertical_slash(
    q: Tensor,
    k: Tensor,
    *,
    q_start: int,
    scale: float,
    last_q: int = 64,
    vertical_size: int = 1000,
    slash_size: int = 6096,
    first_columns: int = 30,
    last_diagonals: int = 100,
) -> VerticalSlashPattern:
    """Estimate the per-head pattern from the last ``last_q`` queries of ``q`` (see module doc)."""
    bsz, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    group = hq // hkv
    lq = min(last_q, nq)
    q_last = q[:, :, nq - lq :, :].float().reshape(bsz, hkv, group * lq, d)
    scores = (q_last @ k.float().transpose(-1, -2)).view(bsz, hq, lq, nk) * scale
    q_pos = torch.arange(q_start + nq - lq, q_start + nq, device=q.device).view(-1, 1)
    k_pos = torch.arange(nk, device=q.device).view(1, -1)
    causal = k_pos <= q_pos
    probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    vertical = probs.sum(dim=-2)  # (B, Hq, Nk)
    vertical[..., : min(first_columns, nk)] = float("inf")
    offsets = (q_pos - k_pos).clamp(min=0).expand(lq, nk)
    slash = torch.zeros(bsz, hq, nk, device=q.device, dtype=probs.dtype)
    slash.scatter_add_(-1, offsets.reshape(1, 1, -1).expand(bsz, hq, -1), probs.reshape(bsz, hq, -1))
    slash[..., : min(last_diagonals, nk)] = float("inf")
    slash[..., 0] = float("inf")  # the main diagonal always: every query sees at least itself
    n_cols = min(nk, max(vertical_size, min(first_columns, nk), 1))
    n_diag = min(nk, max(slash_size, min(last_diagonals, nk), 1))
    columns = vertical.topk(n_cols, dim=-1).indices
    diagonals = slash.topk(n_diag, dim=-1).indices
    return VerticalSlashPattern(columns, diagonals, nk)


class VerticalSlashMethod(SparseMethod):
    name = "vertical_slash"
    cost_is_exact = False  # its columns and diagonals depend on the data: row_key_counts gives the budget

    def row_key_counts(self, config, positions):
        """Upper bound: every kept column plus one key per kept diagonal, at most the causal prefix."""
        columns = max(config.vertical_size, config.vs_first_columns, 1)
        diagonals = max(config.slash_size, config.vs_last_diagonals, 1)
        return np.minimum(positions + 1, columns + diagonals)

    def plan(self, q, k, config, *, q_start, scale):
        return estimate_vertical_slash(
            q,
            k,
            q_start=q_start,
            scale=scale,
            last_q=config.vs_last_q,
            vertical_size=config.vertical_size,
            slash_size=config.slash_size,
            first_columns=config.vs_first_columns,
            last_diagonals=config.vs_last_diagonals,
        )


if __name__ == "__main__":
    from .base import render_ascii

    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 32, 16), torch.randn(1, 1, 32, 16)
    pat = estimate_vertical_slash(
        q, k, q_start=0, scale=0.25, last_q=8, vertical_size=3, slash_size=4, first_columns=1, last_diagonals=2
    )
    print(render_ascii(pat, 32))
