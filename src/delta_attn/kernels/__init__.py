"""Triton GPU kernels for Δ attention prefill (needs ``triton``; imported only on CUDA).

* :mod:`.dense_rows` — dense causal attention of chosen rows at their own positions (anchors + tail),
  GQA-packed, split over keys with a log-sum-exp merge when rows are few.
* :mod:`.sparse` — the sparse base Õ (sink+window, anchor block, dense, and index lists for
  top-k / vertical-slash), with the Δ broadcast fused into its epilogue.
* :mod:`.anchor_sparse` — Õ (or the raw Δ = D − Õ) of the anchor rows alone, for ``delta_scale="auto"``.
* :mod:`.delta_scale` — λ per γ-block (``"auto"``, ``"auto-decay"``, ``"auto-global"``) and λ_jΔ_j for the
  fused epilogue, in two small kernels (the fused form of :func:`delta_attn.combine.delta_scales`).
* :mod:`.scan` — the Δ apply as a causal filter over rows (ema / abg, and unfused repeat).
* :mod:`.blocks` — pattern → kernel description (index lists built on the GPU, no N×N mask).
* :mod:`.prefill` — :func:`triton_prefill`, the backend entry point (same contract as
  :func:`delta_attn.reference.reference_prefill`).

Set ``TRITON_INTERPRET=1`` before importing to run the kernels on CPU tensors (slow; for tests).

Non-finite inputs (docs/algorithm.md §12). What holds here, exactly:

* a non-finite value in q or k at position j never changes rows before j (the scores of keys a row
  may not see are replaced by −inf before the exponential, so they never meet the value);
* the scan (:mod:`.scan`) is causal: a non-finite Δ of γ-block j changes no row before that block
  (checked by ``unit-scan-nan-causal`` in :mod:`delta_attn.bench.check`); it then spreads to every
  later row of the call, also for the unfused ``repeat`` (its zero state matrix still gives 0·NaN);
* a non-finite value in **v** at position j may reach earlier rows: the attention kernels multiply a
  whole key tile by the probabilities (``p @ v``), and 0·NaN = NaN for the keys a row may not see.
  Sparse rows: rows of the same query tile (at most BM + BN positions before j). Dense rows: any
  anchor of the same row tile, which spans up to BM/G anchors (BM/G·γ positions), and so the Δ of
  those blocks. Making this exact would cost a second product per masked tile.

The reference backend (``DeltaConfig(backend="reference")``) is exact for non-finite inputs.
"""

from .prefill import triton_prefill

__all__ = ["triton_prefill"]
