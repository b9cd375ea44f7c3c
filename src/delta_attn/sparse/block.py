"""Star-Attention-style block base.

The context is split into blocks of ``block_size`` tokens; each token sees the first (anchor)
block and, causally, its own block: query i sees key j iff ``j <= i`` and
(``j < block_size`` or ``j // block_size == i // block_size``).
Run ``python -m delta_attn.sparse.block`` for a picture.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from .base import MaskMod, SparseMethod, SparsePattern, merge_ranges


def generate_anchor_block(block_size: int) -> MaskMod:
    """``mask_mod`` of Star Attention's context phase: anchor block + own block."""

    def anchor_block(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (kv_idx < block_size) | (kv_idx // block_size == q_idx // block_size)

    return anchor_block


class AnchorBlockPattern(SparsePattern):
    """Static anchor-block pattern; kernels read ``block_size``."""

    name = "block"

    def __init__(self, block_size: int) -> None:
        self.block_size = int(block_size)
        self._mask_mod = generate_anchor_block(self.block_size)

    def mask_mod(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return self._mask_mod(b, h, q_idx, kv_idx)

    def key_ranges(self, q_lo: int, q_hi: int) -> list[tuple[int, int]]:
        own_lo = (q_lo // self.block_size) * self.block_size
        return merge_ranges([(0, min(self.block_size, q_hi)), (own_lo, q_hi)])


class BlockMethod(SparseMethod):
    name = "block"

    def row_key_counts(self, config, positions):
        """Rows of the anchor block see their causal prefix; later rows the anchor block + their own block so far."""
        bs = config.block_size
        return np.where(positions < bs, positions + 1, bs + positions % bs + 1)

    def plan(self, q, k, config, *, q_start, scale):
        return AnchorBlockPattern(config.block_size)


if __name__ == "__main__":
    from .base import render_ascii

    print(render_ascii(AnchorBlockPattern(block_size=6), 24))
