"""A KV cache that is allocated once and written in place: :class:`PreallocatedCache`.

transformers' ``DynamicCache`` appends with ``torch.cat``, so a prompt prefilled in C chunks copies
the whole cache at every chunk (O(N²/chunk) bytes moved, and two copies alive at each step: the
peak is twice the cache). ``StaticCache`` writes in place but hands attention the whole
``max_cache_len`` buffer (unwritten slots included) and needs a mask that hides them, which Δ's
prefill does not take. :class:`PreallocatedLayer` does both right: one buffer per layer for
``capacity`` tokens, each update copies only the new tokens into it, and attention sees a view of
the filled part — exactly what a ``DynamicCache`` would return, so masks, ``generate`` and the
Δ integration treat it as one. It grows geometrically if decoding runs past the capacity.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache, DynamicLayer

GROWTH = 1.25  # capacity factor when decoding outgrows the buffer (one copy per growth step)


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values are views of one buffer of ``capacity`` tokens.

    ``keys`` / ``values`` are always the filled part ``buffer[:, :, :seq_len]`` (so everything that
    reads a ``DynamicLayer`` — ``crop``, ``get_seq_length``, the masks — works unchanged). If some
    operation replaces them by new tensors (``batch_select_indices``, ``reorder_cache``), the next
    update moves them into a fresh buffer.
    """

    def __init__(self, capacity: int, **kwargs):
        super().__init__(**kwargs)
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int (tokens), got {capacity!r}")
        self.capacity = capacity
        self.key_buffer: Tensor | None = None
        self.value_buffer: Tensor | None = None

    def _holds_filled_part(self, n: int) -> bool:
        buf = self.key_buffer
        if buf is None:
            return False
        if n == 0:  # a fresh prompt (or after reset()): reuse the buffer only if it fits the new tensors
            return True
        k = self.keys
        return k.data_ptr() == buf.data_ptr() and k.stride() == buf.stride() and k.shape[:2] == buf.shape[:2]

    def _allocate(self, like_k: Tensor, like_v: Tensor, n: int, capacity: int) -> None:
        """New buffers of ``capacity`` tokens shaped like the update, holding the current ``n`` tokens."""
        b, h = like_k.shape[:2]
        new_k = like_k.new_empty(b, h, capacity, like_k.shape[-1])
        new_v = like_v.new_empty(b, h, capacity, like_v.shape[-1])
        if n:
            new_k[:, :, :n].copy_(self.keys)
            new_v[:, :, :n].copy_(self.values)
        self.key_buffer, self.value_buffer = new_k, new_v

    # Left out of torch.compile (delta_attn.compiled): its Python state (the fill level, the buffers) would
    # otherwise become guards of the compiled layer, and every chunk a recompilation.
    @torch.compiler.disable(reason="the in-place cache's fill level is Python state")
    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.get_seq_length()
        end = n + key_states.shape[-2]
        kb = self.key_buffer
        fits = (
            kb is not None
            and self._holds_filled_part(n)
            and end <= kb.shape[2]
            and kb.shape[:2] == key_states.shape[:2]
            and kb.shape[-1] == key_states.shape[-1]
            and self.value_buffer.shape[-1] == value_states.shape[-1]
            and kb.dtype == key_states.dtype
            and kb.device == key_states.device
        )
        if not fits:
            old = kb.shape[2] if kb is not None else 0
            capacity = max(self.capacity, end)
            if n and end > old > 0:  # decoding outgrew the buffer: grow geometrically (few copies)
                capacity = max(capacity, int(old * GROWTH))
            self._allocate(key_states, value_states, n, capacity)
        self.key_buffer[:, :, n:end].copy_(key_states)
        self.value_buffer[:, :, n:end].copy_(value_states)
        self.keys = self.key_buffer[:, :, :end]
        self.values = self.value_buffer[:, :, :end]
        return self.keys, self.values

    def reset(self) -> None:
        """Forget the tokens, keep the buffer for the next prompt of the same shape."""
        self.keys = self.values = None
        self.is_initialized = False


class PreallocatedCache(DynamicCache):
    """A ``DynamicCache`` whose full-attention layers are :class:`PreallocatedLayer` of ``capacity`` tokens.

    Use it wherever a ``DynamicCache`` goes (``model(..., past_key_values=cache)``, ``model.generate``);
    :func:`delta_attn.chunked_prefill` makes one sized to the prompt plus room for decoding.
    Sliding-window layers keep transformers' own layer (they hold at most the window).
    """

    def __init__(self, capacity: int, config=None, **kwargs):
        super().__init__(config=config, **kwargs)
        self.capacity = capacity
        if self.layer_class_to_replicate is not None:  # no config: layers are made on first use
            self.layer_class_to_replicate = lambda: PreallocatedLayer(capacity)
        self.layers = [PreallocatedLayer(capacity) if type(lay) is DynamicLayer else lay for lay in self.layers]


__all__ = ["PreallocatedCache", "PreallocatedLayer"]
