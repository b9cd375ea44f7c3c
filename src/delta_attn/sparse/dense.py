"""The trivial base: every causal key (Δ is then a no-op)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SparseMethod, SparsePattern


class DensePattern(SparsePattern):
    name = "dense"

    def mask_mod(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return torch.ones_like(q_idx - kv_idx, dtype=torch.bool)


class DenseMethod(SparseMethod):
    name = "dense"

    def row_key_counts(self, config, positions):
        """The causal prefix."""
        return positions + 1

    def plan(self, q, k, config, *, q_start, scale):
        return DensePattern()


if __name__ == "__main__":
    from .base import render_ascii

    print(render_ascii(DensePattern(), 16))
