"""StreamingLLM base: attention sinks + a per-token sliding window.

Query i sees key j iff ``j <= i`` and (``i - j < window`` or ``j < sink``). The paper's main base
(W = 2048 plus sink tokens). Run ``python -m delta_attn.sparse.streaming`` for a picture.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from .base import MaskMod, SparseMethod, SparsePattern, merge_ranges


def generate_sink_window(sink: int, window: int) -> MaskMod:
    """``mask_mod`` keeping the first ``sink`` keys and the last ``window`` keys (self included)."""

    def sink_window(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (q_idx - kv_idx < window) | (kv_idx < sink)

    return sink_window


class SinkWindowPattern(SparsePattern):
    """Static sink + sliding-window pattern; kernels read ``sink`` and ``window``."""

    name = "streaming"

    def __init__(self, sink: int, window: int) -> None:
        self.sink = int(sink)
        self.window = int(window)
        self._mask_mod = generate_sink_window(self.sink, self.window)

    def mask_mod(self, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return self._mask_mod(b, h, q_idx, kv_idx)

    def key_ranges(self, q_lo: int, q_hi: int) -> list[tuple[int, int]]:
        return merge_ranges([(0, min(self.sink, q_hi)), (max(0, q_lo - self.window + 1), q_hi)])


class StreamingMethod(SparseMethod):
    name = "streaming"

    def row_key_counts(self, config, positions):
        """The window (at most the causal prefix) plus the sinks left of it."""
        window = np.minimum(positions + 1, config.window)
        sinks_left_of_window = np.clip(np.minimum(config.sink, positions - config.window + 1), 0, None)
        return window + sinks_left_of_window

    def plan(self, q, k, config, *, q_start, scale):
        return SinkWindowPattern(config.sink, config.window)


if __name__ == "__main__":
    from .base import render_ascii

    print(render_ascii(SinkWindowPattern(sink=2, window=6), 24))
