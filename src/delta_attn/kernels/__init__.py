"""Triton GPU kernels for Δ attention prefill (needs ``triton``; imported only on CUDA).

* :mod:`.dense_rows` — dense causal attention of chosen rows at their own positions (anchors + tail),
  GQA-packed, split over keys with a log-sum-exp merge when rows are few.
* :mod:`.sparse` — the sparse base Õ (sink+window, anchor block, dense, and index lists for
  top-k / vertical-slash), with the Δ broadcast fused into its epilogue.
* :mod:`.scan` — the Δ apply as a causal filter over rows (ema / abg, and unfused repeat).
* :mod:`.blocks` — pattern → kernel description (index lists built on the GPU, no N×N mask).
* :mod:`.prefill` — :func:`triton_prefill`, the backend entry point (same contract as
  :func:`delta_attn.reference.reference_prefill`).

Set ``TRITON_INTERPRET=1`` before importing to run the kernels on CPU tensors (slow; for tests).
"""

from .prefill import triton_prefill

__all__ = ["triton_prefill"]
