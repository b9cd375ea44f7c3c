"""The public operator: :func:`delta_attention`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .backend import Backend, DeltaState
from .config import DEFAULT_CONFIG, DeltaConfig


def check_qkv(q: Tensor, k: Tensor, v: Tensor, *, same_rows: bool = False) -> None:
    """The one check of attention inputs (the operator and context parallelism): 4-dim floating-point
    (B, H, N, D) tensors of one dtype and device, k and v alike, grouped-query heads, and queries that are the
    last Nq of the Nk key positions (``same_rows``: a context-parallel shard, Nq = Nk). Raises TypeError or
    ValueError saying what to change."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have 4 dims (batch, heads, seq_len, head_dim), got shape {tuple(t.shape)}; "
                "for (batch, seq_len, heads, head_dim) tensors call .transpose(1, 2) first"
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them first")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    bq, hq, nq, dq = q.shape
    bk, hkv, nk, dk = k.shape
    if bq != bk:
        raise ValueError(f"batch sizes differ: q has {bq}, k/v have {bk}")
    if dq != dk:
        raise ValueError(f"head dims differ: q has {dq}, k/v have {dk}")
    if dq == 0:
        raise ValueError("head_dim must be at least 1")
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(
            f"query heads ({hq}) must be a positive multiple of key/value heads ({hkv}) for grouped-query attention"
        )
    if same_rows and nk != nq:
        raise ValueError(f"q has {nq} rows but k/v {nk}: pass this rank's shard of q, k and v (same rows)")
    if nk < nq:
        raise ValueError(
            f"k/v have {nk} positions but q has {nq}: queries are the last Nq of the Nk key positions, so Nk >= Nq"
        )


def select_backend(config: DeltaConfig, device: torch.device) -> Backend:
    """The backend a call with ``config`` runs on for tensors on ``device`` (``config.backend``).

    ``"auto"``: the Triton kernels on CUDA when triton imports, else the PyTorch reference. The dispatch lives
    here, above the contract (:mod:`delta_attn.backend`), which its implementations import.
    """
    want = config.backend
    if want == "fa4":
        from .kernels.fa4 import available

        why = "it needs CUDA tensors" if device.type != "cuda" else available()
        if why is not None:
            raise ValueError(f"backend='fa4' cannot run here: {why}; use backend='triton' or 'auto'")
        from .kernels.fa4_prefill import fa4_prefill

        return fa4_prefill
    if want == "auto":
        want = "triton" if device.type == "cuda" else "reference"
    if want == "triton":
        if device.type != "cuda":
            raise ValueError("backend='triton' needs CUDA tensors; use backend='reference' (or 'auto') on CPU")
        try:
            from .kernels import triton_prefill
        except ImportError as exc:
            if config.backend == "triton":
                raise ValueError(
                    f"backend='triton' is not available here ({exc}); install triton or use 'reference'"
                ) from exc
        else:
            return triton_prefill
    from .reference import reference_prefill

    return reference_prefill


def _left_pad_list(left_pad, batch: int, prompt_len: int) -> list[int] | None:
    if left_pad is None:
        return None
    pads = left_pad.tolist() if isinstance(left_pad, torch.Tensor) else list(left_pad)
    if len(pads) != batch or any(isinstance(p, bool) or int(p) != p for p in pads):
        raise ValueError(f"left_pad must hold one integer per batch element ({batch}), got {left_pad!r}")
    pads = [int(p) for p in pads]
    if any(p < 0 or p >= prompt_len for p in pads):
        raise ValueError(f"left_pad entries must lie in [0, {prompt_len}) (at least one real token), got {pads}")
    return pads


def delta_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    config: DeltaConfig | None = None,
    *,
    scale: float | None = None,
    prompt_len: int | None = None,
    state: DeltaState | None = None,
    left_pad: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """Causal prefill attention with a sparse base and Δ correction.

    Shapes (SDPA / FlexAttention layout):
        q: (B, Hq, Nq, D); k, v: (B, Hkv, Nk, D) with ``Hq % Hkv == 0`` (grouped-query attention:
        query head h reads KV head ``h // (Hq // Hkv)``; K/V are never repeated in memory) and
        ``Nk >= Nq``. Returns (B, Hq, Nq, D) in q's dtype (an empty tensor when B or Nq is 0).

    Causal alignment:
        bottom-right: query row r sits at absolute position ``p = Nk - Nq + r`` and sees keys
        ``0..p``. One-shot prefill is ``Nq == Nk``; a later chunk of a chunked prefill passes only
        its own queries with the keys/values of the whole prefix so far.

    The rows (docs/algorithm.md §3), with N = ``prompt_len`` (default Nk), γ = ``config.gamma``:
        tail c = min(N, N mod γ + config.min_tail) rows, N' = N − c; anchors A = {0, γ, …, N'−γ}
        (the first row of every γ-block); the dense rows are computed at their own causal
        positions (row p over keys 0..p), never as a block of gathered rows.

    Modes (``config.mode``):
        ``"delta"``: Õ_i + Δ(i) for i < N', exact dense rows for the tail. With ``interp="repeat"``
            Δ(i) = D_a − Õ_a for a = γ·⌊i/γ⌋ (so anchor rows are exact); ``"linear"`` blends
            towards the next anchor's Δ (non-causal; one-shot only); ``"ema"``/``"abg"`` smooth
            the repeated Δs with a causal filter (anchors then are close to, not equal to, dense).
        ``"recompute"``: Õ with the anchor and tail rows replaced by dense rows (no broadcast).
        ``"sparse"``: Õ everywhere (the base method alone, no dense tail).
        ``"dense"``: exact causal attention.

    Δ variants (``config.delta_scale``, ``config.extra_anchors``; docs/algorithm.md §13): body rows get
    Õ_i + λΔ(i) (λ a float, or ``"auto"``: causal, per sequence and head, from the anchors so far;
    ``"auto-global"``: from all anchors, one-shot only), anchor and tail rows stay exact; extra anchors
    add a dense row in the middle of the γ-blocks whose Δ changes most (one-shot only).

    Args:
        config: a :class:`DeltaConfig` (defaults: streaming base, window 2048, sink 128, γ = 64).
        scale: softmax scale, default ``1/sqrt(D)``.
        prompt_len: total prompt length N when this call is one chunk of a longer prompt
            (it places the exact tail); default Nk.
        state: a :class:`DeltaState` to carry between chunks of one layer (needed by ``delta``
            when a chunk starts inside a γ-block or when ``interp`` is ``ema``/``abg``).
        left_pad: per batch element, how many leading key positions are padding. Each sequence is
            then processed at its own positions (sinks, windows, anchors count from its first real
            token); query rows on padding return zeros (docs/algorithm.md §9).

    Non-finite inputs (docs/algorithm.md §12): with a causal config (every interpolation but
    ``linear``) and a static base, an inf/NaN at position i of q, k or v never changes rows before i
    (reference backend; the Triton kernels keep this per tile only, see :mod:`delta_attn.kernels`).

    Raises:
        TypeError / ValueError naming the problem for bad shapes, dtypes, devices or options, for a
        sparse method whose ``plan``/``mask_mod`` returns something else than a pattern / a bool mask
        of the right shape, and for a pattern that leaves a query row with no visible key.
    """
    config = DEFAULT_CONFIG if config is None else config
    if not isinstance(config, DeltaConfig):
        raise TypeError(f"config must be a DeltaConfig, got {type(config).__name__}")
    check_qkv(q, k, v)
    bsz, hq, nq, d = q.shape
    nk = k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite float, got {scale!r}")
    if prompt_len is None:
        prompt_len = nk
    elif isinstance(prompt_len, bool) or not isinstance(prompt_len, int) or prompt_len < nk:
        raise ValueError(f"prompt_len must be an int >= Nk ({nk}), got {prompt_len!r}")
    if state is not None and not isinstance(state, DeltaState):
        raise TypeError(f"state must be a DeltaState, got {type(state).__name__}")
    chunked = nq < nk or prompt_len > nk
    if chunked:
        config.require_causal("it cannot run chunked")
    pads = _left_pad_list(left_pad, bsz, prompt_len)
    if nq == 0 or bsz == 0:  # nothing to compute (an empty batch is a valid input)
        return q.new_zeros(bsz, hq, nq, d)
    prefill = select_backend(config, q.device)
    q_start = nk - nq
    if not pads or not any(pads):  # one group, no padding: return the backend's tensor as is (no copy)
        seq_state = state.group(tuple(range(bsz))) if state is not None else None
        return prefill(q, k, v, config, scale=float(scale), prompt_len=prompt_len, state=seq_state).to(q.dtype)
    out = q.new_zeros(bsz, hq, nq, d)
    groups: dict[int, list[int]] = {}
    for b, p in enumerate(pads or [0] * bsz):
        groups.setdefault(p, []).append(b)
    for pad, members in groups.items():
        first_row = max(0, pad - q_start)  # query rows before the sequence's first real token stay zero
        if first_row >= nq:  # (a chunk that is all padding for these sequences)
            continue
        idx = members if len(groups) > 1 else slice(None)
        seq_state = state.group(tuple(members)) if state is not None else None
        res = prefill(
            q[idx, :, first_row:],
            k[idx, :, pad:],
            v[idx, :, pad:],
            config,
            scale=float(scale),
            prompt_len=prompt_len - pad,
            state=seq_state,
        )
        out[idx, :, first_row:] = res.to(q.dtype)
    return out
