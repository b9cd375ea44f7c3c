"""The paper's analyses on our model, from q/k/v/outputs captured at the attention call.

A small attention function registered with transformers (``attn_implementation="delta_eval"``) runs
each prefill layer with the method under test (dense SDPA, or :func:`delta_attn.delta_attention` with a
:class:`DeltaConfig`) and records that layer's post-RoPE q, k, v and attention output. Decode steps
run dense SDPA. From the captures:

1. ``delta_similarity`` (paper Fig. 6b and the rebuttal's query table): on the dense run, Δ_i = O_i − Õ_i
   with Õ the sparse base's output on the same q/k/v; for each γ, the mean cosine between the anchor
   row's Δ (first row of each γ-block) and the other rows' Δ of its block, and the same for the queries;
   plus the cosine between the Δs of two *different* prompts at equal positions (the paper: ≈0.14).
   Rows whose Δ is exactly 0 (every key inside sink + window) are left out.
2. ``drift`` (paper Fig. 3): the whole model run with each method; per layer, the cosine of its
   attention outputs to the dense run's, and the Spearman rank correlation of the last prompt
   position's attention row (softmax(q·Kᵀ) over the whole cache: what decoding reads) with the dense
   run's. Also the scatter data (dense vs method attention log-probabilities) of a few layers.
3. ``config_sweep``: on the dense run's q/k/v of every layer, each config's output vs dense (cosine,
   relative L2 error), one layer at a time (no accumulation): the γ ablation, interpolation variants
   (repeat / linear / EMA / α-β-γ), and Δ on several bases.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..compat import attn_implementation

ATTN_NAME = "delta_eval"
_ACTIVE: list = [None]  # the Capture in use


@dataclass
class Capture:
    """What the ``delta_eval`` attention function records during prefill forwards."""

    config: object = None  # DeltaConfig or None (dense)
    store: bool = True
    to_cpu: bool = False
    layers: dict = field(default_factory=dict)  # layer_idx -> {"q","k","v","o"} tensors (B, H, N, D)


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    cap: Capture | None = _ACTIVE[0]
    nq, nk = query.shape[2], key.shape[2]
    if attention_mask is not None:
        raise ValueError("the analysis hook supports unpadded batches only")
    if nq == nk and cap is not None and cap.config is not None:
        from ..ops import delta_attention

        out = delta_attention(query, key, value, cap.config, scale=scaling)
    else:
        from ..hf import dense_sdpa

        out = dense_sdpa(query, key, value, None, scaling)
    if nq == nk and cap is not None and cap.store:
        mv = (lambda t: t.detach().float().cpu()) if cap.to_cpu else (lambda t: t.detach())
        cap.layers[module.layer_idx] = {"q": mv(query), "k": mv(key), "v": mv(value), "o": mv(out)}
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from ..hf import delta_mask

    AttentionInterface.register(ATTN_NAME, _attention)
    AttentionMaskInterface.register(ATTN_NAME, delta_mask)


@contextlib.contextmanager
def capturing(model, config=None, *, store: bool = True, to_cpu: bool = False):
    """Run ``model`` with the capture attention (method ``config``; None = dense) inside the block."""
    import delta_attn

    _register()
    delta_attn.disable(model)
    previous = attn_implementation(model)
    cap = Capture(config=config, store=store, to_cpu=to_cpu)
    model.set_attn_implementation(ATTN_NAME)
    _ACTIVE[0] = cap
    try:
        yield cap
    finally:
        _ACTIVE[0] = None
        model.set_attn_implementation(previous)


@torch.inference_mode()
def capture_run(model, ids: torch.Tensor, config=None, *, to_cpu: bool = False) -> Capture:
    """One prefill forward of ``ids`` (B, N) with ``config``; returns every layer's q, k, v, o."""
    with capturing(model, config, to_cpu=to_cpu) as cap:
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    return cap


# ---------------------------------------------------------------------------------------------
# helpers


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine along the last dim (0 where a row is all-zero)."""
    num = (a * b).sum(-1)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))


def _gqa_expand(k: torch.Tensor, hq: int) -> torch.Tensor:
    return k.repeat_interleave(hq // k.shape[1], dim=1)


def last_row_attention(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Log-softmax attention of the last query over all keys: (B, Hq, N)."""
    kk = _gqa_expand(k, q.shape[1]).float()
    s = torch.einsum("bhd,bhnd->bhn", q[:, :, -1].float(), kk) * scale
    return torch.log_softmax(s, dim=-1)


def spearman(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation along the last dim (average ranks are not needed: no exact ties)."""
    rx = x.argsort(-1).argsort(-1).double()
    ry = y.argsort(-1).argsort(-1).double()
    rx = rx - rx.mean(-1, keepdim=True)
    ry = ry - ry.mean(-1, keepdim=True)
    return (rx * ry).sum(-1) / (rx.norm(dim=-1) * ry.norm(dim=-1)).clamp_min(1e-30)


def first_row(config) -> int:
    """First row whose sparse key set misses keys (streaming: sink + window; else 1)."""
    if config is None or getattr(config, "method_name", "") != "streaming":
        return 1
    return config.sink + config.window


# ---------------------------------------------------------------------------------------------
# 1. delta similarity vs gamma


@torch.inference_mode()
def delta_similarity(dense: Capture, sparse_config, gammas: Sequence[int] = (2, 4, 8, 16, 32, 64, 128)) -> dict:
    """Cosine similarity of Δ (and of queries) inside γ-blocks, per layer; Δ of two inputs (cross)."""
    from ..ops import delta_attention

    cfg = sparse_config.replace(mode="sparse")
    r0 = first_row(cfg)
    out = {"gammas": list(gammas), "first_row": r0, "layers": [], "delta_cos": [], "query_cos": [], "cross_cos": []}
    for li in sorted(dense.layers):
        c = dense.layers[li]
        q, o = c["q"], c["o"].float()
        sparse = delta_attention(c["q"], c["k"], c["v"], cfg).float()
        delta = o - sparse  # (B, H, N, D)
        n = delta.shape[2]
        dc, qc = [], []
        for g in gammas:
            a0 = ((r0 + g - 1) // g) * g  # first anchor at or after r0
            n_blocks = (n - a0) // g
            if n_blocks < 1:
                dc.append(float("nan"))
                qc.append(float("nan"))
                continue
            end = a0 + n_blocks * g
            dv = delta[:, :, a0:end].reshape(*delta.shape[:2], n_blocks, g, -1)
            qv = q[:, :, a0:end].float().reshape(*q.shape[:2], n_blocks, g, -1)
            dc.append(float(_cos(dv[:, :, :, :1], dv[:, :, :, 1:]).mean()))
            qc.append(float(_cos(qv[:, :, :, :1], qv[:, :, :, 1:]).mean()))
        out["layers"].append(li)
        out["delta_cos"].append(dc)
        out["query_cos"].append(qc)
        if delta.shape[0] >= 2:
            out["cross_cos"].append(float(_cos(delta[0, :, r0:], delta[1, :, r0:]).mean()))
    out["delta_cos_mean"] = _nanmean_cols(out["delta_cos"])
    out["query_cos_mean"] = _nanmean_cols(out["query_cos"])
    out["cross_cos_mean"] = float(sum(out["cross_cos"]) / len(out["cross_cos"])) if out["cross_cos"] else None
    return out


def _nanmean_cols(rows: list[list[float]]) -> list[float]:
    cols = list(zip(*rows)) if rows else []
    res = []
    for col in cols:
        v = [x for x in col if not math.isnan(x)]
        res.append(sum(v) / len(v) if v else float("nan"))
    return res


# ---------------------------------------------------------------------------------------------
# 2. drift of a whole-model run


@torch.inference_mode()
def drift(
    dense: Capture,
    run: Capture,
    *,
    first_row: int,
    scatter_layers: Sequence[int] = (),
    scatter_points: int = 2000,
    scale: float | None = None,
) -> dict:
    """Per layer: output cosine to the dense run (rows >= first_row) and Spearman of the last row."""
    res = {"layers": [], "out_cos": [], "spearman": [], "last_row_cos": [], "scatter": {}}
    for li in sorted(dense.layers):
        d, r = dense.layers[li], run.layers[li]
        sc = scale if scale is not None else 1.0 / math.sqrt(d["q"].shape[-1])
        res["layers"].append(li)
        res["out_cos"].append(float(_cos(d["o"][:, :, first_row:].float(), r["o"][:, :, first_row:].float()).mean()))
        res["last_row_cos"].append(float(_cos(d["o"][:, :, -1].float(), r["o"][:, :, -1].float()).mean()))
        ld = last_row_attention(d["q"], d["k"], sc)
        lr = last_row_attention(r["q"], r["k"], sc)
        res["spearman"].append(float(spearman(ld, lr).mean()))
        if li in scatter_layers:
            x, y = ld[0, 0], lr[0, 0]
            g = torch.Generator().manual_seed(li)
            idx = torch.randperm(x.numel(), generator=g)[: min(scatter_points, x.numel())].to(x.device)
            # always keep the keys the dense row attends to most: the interesting part of the scatter
            top = x.topk(min(50, x.numel())).indices
            idx = torch.unique(torch.cat([idx, top]))
            res["scatter"][str(li)] = {"dense": x[idx].cpu().tolist(), "method": y[idx].cpu().tolist()}
    return res


# ---------------------------------------------------------------------------------------------
# 3. per-layer error of configs on the same q/k/v


@torch.inference_mode()
def config_sweep(dense: Capture, configs: dict, *, first_row: int = 1) -> dict:
    """For each named config: per-layer cosine and relative L2 error to dense on the dense run's q/k/v."""
    from ..ops import delta_attention

    res = {"layers": sorted(dense.layers), "configs": {}}
    for name, cfg in configs.items():
        cos_l, err_l = [], []
        for li in res["layers"]:
            c = dense.layers[li]
            o = c["o"].float()[:, :, first_row:]
            x = delta_attention(c["q"], c["k"], c["v"], cfg).float()[:, :, first_row:]
            cos_l.append(float(_cos(x, o).mean()))
            err_l.append(float((x - o).norm() / o.norm().clamp_min(1e-30)))
        res["configs"][name] = {
            "cos": cos_l,
            "rel_err": err_l,
            "cos_mean": sum(cos_l) / len(cos_l),
            "rel_err_mean": sum(err_l) / len(err_l),
            "causal": cfg.is_causal,
        }
    return res
