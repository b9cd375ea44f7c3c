"""An independent, deliberately naive float64 oracle for Δ attention (tests only).

It shares no code with the package's reference: full N×N matrices, K/V repeated per query head,
masks written from the formulas in docs/algorithm.md, and the row rules as an explicit Python loop.
For the data-dependent bases it reads the *selection* (kept columns/diagonals, kept blocks) from the
package's pattern object and rebuilds the mask from those indices on its own. :func:`make_qkv` draws
the random inputs the operator tests share.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from delta_attn import DeltaConfig
from delta_attn.sparse import BlockTopKPattern, VerticalSlashPattern, resolve_sparse_method


def make_qkv(seed, b, hkv, group, n, d, dtype=torch.float64):
    """Random q (b, hkv·group, n, d) and k, v (b, hkv, n, d) from ``seed``, drawn in float64 then cast."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hkv * group, n, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, hkv, n, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, hkv, n, d, generator=gen, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def allowed_mask(config: DeltaConfig, q_pos, k_pos, pattern=None, batch=1, heads=1):
    """(B, H, Nq, Nk) bool: the base method's key sets, causality included."""
    qp = q_pos.view(1, 1, -1, 1)
    kp = k_pos.view(1, 1, 1, -1)
    causal = kp <= qp
    name = config.sparse if isinstance(config.sparse, str) else None
    if name == "dense":
        m = torch.ones_like(causal)
    elif name == "streaming":
        m = (qp - kp < config.window) | (kp < config.sink)
    elif name == "block":
        m = (kp < config.block_size) | (kp // config.block_size == qp // config.block_size)
    elif isinstance(pattern, VerticalSlashPattern):
        m = torch.zeros(batch, heads, q_pos.numel(), k_pos.numel(), dtype=torch.bool)
        offsets = (qp - kp)[0, 0]
        for b in range(batch):
            for h in range(heads):
                m[b, h] = torch.isin(kp[0, 0], pattern.columns[b, h]) | torch.isin(offsets, pattern.diagonals[b, h])
    elif isinstance(pattern, BlockTopKPattern):
        m = torch.zeros(batch, heads, q_pos.numel(), k_pos.numel(), dtype=torch.bool)
        bs = pattern.block
        for b in range(batch):
            for h in range(heads):
                for i, p in enumerate(q_pos.tolist()):
                    row = p // bs - pattern.q_block_start
                    kept = pattern.selected[b, h, row][pattern.valid[b, h, row]]
                    m[b, h, i] = torch.isin(k_pos // bs, kept) | (k_pos < config.sink) | (p - k_pos < config.window)
    else:  # user pattern: trust its mask_mod
        b = torch.arange(batch).view(-1, 1, 1, 1)
        h = torch.arange(heads).view(1, -1, 1, 1)
        m = pattern.mask_mod(b, h, qp, kp)
    return (m & causal).expand(batch, heads, -1, -1)


def _attend(s, mask, v):
    s = s.masked_fill(~mask, -math.inf)
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # rows with no key -> zeros
    return p @ v


def oracle_attention(q, k, v, config: DeltaConfig, *, scale=None, pattern=None):
    """One-shot Δ attention (Nq == Nk) in float64. Returns (B, Hq, N, D) float64."""
    q, k, v = q.double(), k.double(), v.double()
    bsz, hq, n, d = q.shape
    g = hq // k.shape[1]
    kr, vr = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scale = 1 / math.sqrt(d) if scale is None else scale
    s = q @ kr.transpose(-1, -2) * scale
    pos = torch.arange(n)
    causal = (pos.view(1, -1) <= pos.view(-1, 1)).expand(bsz, hq, n, n)
    dense = _attend(s, causal, vr)
    if config.mode == "dense":
        return dense
    sparse = _attend(s, allowed_mask(config, pos, pos, pattern, bsz, hq), vr)
    if config.mode == "sparse":
        return sparse
    gamma = config.gamma
    tail = config.tail if config.tail is not None else max(128, gamma)
    c = min(n, n % gamma + tail)
    body = n - c
    out = torch.empty_like(sparse)
    if config.mode == "recompute":
        for p in range(n):
            exact = p >= body or p % gamma == 0
            out[:, :, p] = dense[:, :, p] if exact else sparse[:, :, p]
        return out

    # delta
    def delta_of_block(j):
        a = j * gamma
        return dense[:, :, a] - sparse[:, :, a]

    n_blocks = -(-body // gamma)  # the last body block may be partial (tail not a multiple of γ)
    lam = _scales(config, [delta_of_block(j) for j in range(n_blocks)], bsz, hq)  # (B, H, n_blocks)
    chosen = _extra_blocks(config, [delta_of_block(j) for j in range(n_blocks)], bsz)  # per b: set of j
    half = gamma // 2

    def scaled(j, delta):  # λ_j · Δ, per (b, h)
        return lam[:, :, j].unsqueeze(-1) * delta

    filt = None
    for p in range(n):
        if p >= body:
            out[:, :, p] = dense[:, :, p]
            continue
        j = p // gamma
        z = scaled(j, delta_of_block(j))
        if config.interp == "linear":
            t = (p % gamma) / gamma
            nxt = scaled(j + 1, delta_of_block(j + 1)) if (j + 1) * gamma < body else z
            z = (1 - t) * z + t * nxt
        elif config.interp == "ema":
            beta = config.ema_beta
            filt = z if p == 0 else beta * filt + (1 - beta) * z
            z = filt
        elif config.interp == "abg":
            alpha, beta, gam = config.abg_coefficients
            if p == 0:
                filt = (z, torch.zeros_like(z), torch.zeros_like(z))
            else:
                x, vel, acc = filt
                xp, vp = x + vel + 0.5 * acc, vel + acc
                r = z - xp
                filt = (xp + alpha * r, vp + beta * r, acc + 2 * gam * r)
            z = filt[0]
        out[:, :, p] = sparse[:, :, p] + z
        for b in range(bsz):  # extra anchors: the rows of a chosen block from its midpoint on
            if j not in chosen[b]:
                continue
            mid = j * gamma + half
            extra = scaled(j, dense[:, :, mid] - sparse[:, :, mid])[b]
            this = scaled(j, delta_of_block(j))[b]
            nxt = scaled(j + 1, delta_of_block(j + 1))[b]
            o = p % gamma
            if config.interp == "repeat":
                zb = extra if o >= half else this
            elif o < half:
                zb = (1 - o / half) * this + (o / half) * extra
            else:
                t = (o - half) / (gamma - half)
                zb = (1 - t) * extra + t * nxt
            out[b, :, p] = sparse[b, :, p] + zb
            if o == half:
                out[b, :, p] = dense[b, :, p]  # the extra row is exact
        if config.delta_scale != 1.0 and p % gamma == 0:
            out[:, :, p] = dense[:, :, p]  # λ ≠ 1: anchor rows stay exact
    return out


def _scales(config: DeltaConfig, deltas, bsz, heads):
    """λ (B, H, n_blocks) for config.delta_scale, from the raw anchor Δs (a list of (B, H, D))."""
    n_blocks = len(deltas)
    ds = config.delta_scale
    if not isinstance(ds, str):
        return torch.full((bsz, heads, n_blocks), float(ds), dtype=torch.float64)
    lam = torch.ones(bsz, heads, n_blocks, dtype=torch.float64)
    # §13: a pair enters the sums only when both its anchors miss at least γ causal keys (by the base's
    # row_key_counts): a covered anchor's Δ is rounding noise, a nearly covered one's an ill-conditioned ratio
    positions = np.arange(n_blocks, dtype=np.int64) * config.gamma
    counts = resolve_sparse_method(config.sparse).row_key_counts(config, positions)
    measured = [True] * n_blocks if counts is None else [p + 1 - c >= config.gamma for c, p in zip(counts, positions)]
    for b in range(bsz):
        for h in range(heads):
            num = den = 0.0
            per_block = [1.0]
            for j in range(1, n_blocks):
                if measured[j] and measured[j - 1]:
                    num += float(deltas[j][b, h] @ deltas[j - 1][b, h])
                    den += float(deltas[j - 1][b, h] @ deltas[j - 1][b, h])
                per_block.append(1.0 if den == 0 else min(1.0, max(0.0, num / den)))
            if ds == "auto-global":
                per_block = [per_block[-1]] * n_blocks
            if ds == "auto-decay":  # the mean of ρ^t over t in [0, 1], written out independently of combine.py
                per_block = [r if r in (0.0, 1.0) else (r - 1.0) / math.log(r) for r in per_block]
            lam[b, h] = torch.tensor(per_block[:n_blocks], dtype=torch.float64)
    return lam


def _extra_blocks(config: DeltaConfig, deltas, bsz):
    """Per sequence, the set of γ-blocks that get an extra dense row at their midpoint."""
    n_blocks = len(deltas)
    f = config.extra_anchors
    if f == 0 or config.gamma < 2 or n_blocks < 2:
        return [set() for _ in range(bsz)]
    count = min(n_blocks - 1, math.ceil(round(f * n_blocks, 9)))
    chosen = []
    for b in range(bsz):
        scores = [(float((deltas[j + 1][b] - deltas[j][b]).norm(dim=-1).sum()), j) for j in range(n_blocks - 1)]
        ranked = sorted(scores, key=lambda sj: (-sj[0], sj[1]))  # highest score first, ties to the lower j
        chosen.append({j for _, j in ranked[:count]})
    return chosen
