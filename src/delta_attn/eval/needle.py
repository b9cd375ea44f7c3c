"""Where the needle goes: per layer and method, what the prefill wrote for the needle and what decoding reads.

For one prompt, each method runs a whole-model prefill with the capture attention of
:mod:`delta_attn.eval.analysis` (dense SDPA, or :func:`delta_attn.delta_attention`); from each layer's
post-RoPE q, k, v (what the KV cache holds):

* ``k_cos`` / ``v_cos``: cosine to the dense run's key / value of each needle token (mean over the
  needle's tokens and KV heads). A method's error in earlier layers reaches the needle's cache entries
  of later layers through the residual stream.
* ``mass``: the attention mass the last prompt row puts on the needle's tokens, that row computed
  densely over the method's prefilled cache (softmax of q_last · Kᵀ over every key, as the first
  decode step would read it); mean over query heads.
* ``delta_cos`` (Δ methods): the cosine between the Δ of consecutive anchors (Δ_j = D_a − Õ_a at the
  anchor rows a = jγ, docs/algorithm.md §3), on the method's own q/k/v; anchors whose Δ is 0 by
  construction (every key inside sink + window) are left out. High values: one anchor's Δ stands in
  well for its block's rows.

:func:`summarize` averages the per-prompt numbers over prompts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .analysis import Capture, first_row, last_row_attention

METRICS = ("k_cos", "v_cos", "mass", "delta_cos")


def needle_positions(spans: Sequence[Sequence[int]]) -> list[int]:
    """Token indices covered by the [start, end) ``spans`` (sorted, without repeats)."""
    return sorted({i for a, b in spans for i in range(int(a), int(b))})


def _cos_mean(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double(), b.double(), dim=-1, eps=1e-30).mean())


def anchor_deltas(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config, scale: float) -> torch.Tensor:
    """Δ = dense − sparse at the anchor rows a = jγ >= first_row (B, H, anchors, D), on q/k/v (B, H, N, D)."""
    from ..hf import dense_sdpa
    from ..ops import delta_attention

    n, g = q.shape[2], config.gamma
    r0 = first_row(config)
    anchors = torch.arange(((r0 + g - 1) // g) * g, n, g, device=q.device)
    dense = dense_sdpa(q, k, v, None, scale)[:, :, anchors].float()
    sparse = delta_attention(q, k, v, config.replace(mode="sparse"), scale=scale)[:, :, anchors].float()
    return dense - sparse


@torch.inference_mode()
def needle_metrics(dense: Capture, run: Capture, positions: Sequence[int], *, config=None) -> dict:
    """Per layer: needle keys'/values' cosine to dense, the last row's mass on them, Δ's consecutive cosine.

    ``dense`` and ``run`` are captures of one prompt (batch 1); ``positions`` the needle's token
    indices; ``config`` the run's :class:`DeltaConfig` (None for dense), for ``delta_cos`` when its
    mode is ``"delta"``.
    """
    pos = torch.as_tensor(list(positions), dtype=torch.long)
    out: dict = {m: [] for m in METRICS}
    out["layers"] = sorted(dense.layers)
    with_delta = config is not None and config.mode == "delta"
    for li in out["layers"]:
        d, r = dense.layers[li], run.layers[li]
        p = pos.to(r["k"].device)
        out["k_cos"].append(_cos_mean(r["k"][:, :, p], d["k"][:, :, p]))
        out["v_cos"].append(_cos_mean(r["v"][:, :, p], d["v"][:, :, p]))
        scale = 1.0 / math.sqrt(r["q"].shape[-1])
        probs = last_row_attention(r["q"], r["k"], scale).exp()  # (B, Hq, N)
        out["mass"].append(float(probs[:, :, p].sum(-1).mean()))
        if with_delta:
            delta = anchor_deltas(r["q"], r["k"], r["v"], config, scale)
            ok = delta.shape[2] >= 2
            out["delta_cos"].append(_cos_mean(delta[:, :, :-1], delta[:, :, 1:]) if ok else float("nan"))
    if not with_delta:
        del out["delta_cos"]
    return out


def summarize(per_prompt: Sequence[dict]) -> dict:
    """The mean over prompts of each per-layer metric (NaNs left out), and each metric's mean over layers."""
    if not per_prompt:
        return {}
    res: dict = {"layers": per_prompt[0]["layers"], "prompts": len(per_prompt)}
    for m in METRICS:
        if m not in per_prompt[0]:
            continue
        cols = list(zip(*(p[m] for p in per_prompt)))
        res[m] = [_nanmean(c) for c in cols]
        res[f"{m}_mean"] = _nanmean(res[m])
    return res


def _nanmean(xs) -> float:
    v = [x for x in xs if not (x is None or math.isnan(x))]
    return sum(v) / len(v) if v else float("nan")
