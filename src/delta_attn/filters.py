"""Causal smoothing of the Δ sequence: the ``ema`` and ``abg`` interpolations as one linear scan.

Both filters are linear time-invariant systems over the token axis, per head and channel:

    s_i = M s_{i-1} + K z_i,      output x_i = s_i[0]

* ``ema``: state (e,), ``M = [[β]]``, ``K = [1-β]``  →  e_i = β e_{i-1} + (1-β) z_i.
* ``abg``: state (position, velocity, acceleration); predict with ``F`` (unit time step), then
  correct with gains ``[α, β, 2γ_f]`` on the residual ``z_i - x_pred``:
  ``M = (I - G H) F``, ``K = G``, ``H = [1, 0, 0]``.

The scan starts from ``s_{-1} = [z_0, 0, ...]`` so that the first output equals z_0 (the first
anchor row stays exact). A Python loop over 131K tokens takes seconds (the paper's authors measured
~7 s per layer); here the sequence is cut into blocks of T steps and each block is two small matmuls
against precomputed powers of M, which is exact up to rounding.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor


def ema_system(beta: float) -> tuple[Tensor, Tensor]:
    """(M, K) in float64 for ``e_i = β e_{i-1} + (1-β) z_i``."""
    return torch.tensor([[beta]], dtype=torch.float64), torch.tensor([1.0 - beta], dtype=torch.float64)


def abg_system(alpha: float, beta: float, gamma: float) -> tuple[Tensor, Tensor]:
    """(M, K) in float64 of the α-β-γ filter with unit time step."""
    f = torch.tensor([[1.0, 1.0, 0.5], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    g = torch.tensor([alpha, beta, 2.0 * gamma], dtype=torch.float64)
    h = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    m = (torch.eye(3, dtype=torch.float64) - g.view(3, 1) @ h) @ f
    return m, g


def initial_state(z0: Tensor, n_states: int) -> Tensor:
    """``s_{-1} = [z_0, 0, ...]`` of shape (..., S, D) for a first input z0 of shape (..., D)."""
    s = torch.zeros(*z0.shape[:-1], n_states, z0.shape[-1], dtype=z0.dtype, device=z0.device)
    s[..., 0, :] = z0
    return s


@lru_cache(maxsize=32)
def _block_operators(m_key: tuple, k_key: tuple, block: int):
    m = torch.tensor(m_key, dtype=torch.float64)
    k = torch.tensor(k_key, dtype=torch.float64)
    s = m.shape[0]
    powers = [torch.eye(s, dtype=torch.float64)]
    for _ in range(block):
        powers.append(m @ powers[-1])
    p = torch.stack(powers)  # (block+1, S, S): M^t
    impulse = p[:block] @ k  # (block, S): M^t K
    idx = torch.arange(block)
    lag = idx.view(-1, 1) - idx.view(1, -1)  # t - k
    w = torch.where(lag >= 0, impulse[lag.clamp(min=0), 0], torch.zeros(()))  # (T, T) output weights
    return p, impulse, w


def lti_scan(z: Tensor, m: Tensor, k: Tensor, s_prev: Tensor, *, block: int = 128) -> tuple[Tensor, Tensor]:
    """Run ``s_i = M s_{i-1} + K z_i`` over the second-to-last axis of z.

    Args:
        z: inputs (..., T, D).
        m: (S, S) and k: (S,) system matrices (float64; cast to z's dtype inside).
        s_prev: state before the first input, (..., S, D).
    Returns:
        (x, s_last): outputs x_i = s_i[0] of shape (..., T, D) and the final state (..., S, D).

    Non-finite inputs (docs/algorithm.md §12): a channel's outputs are NaN from its first non-finite
    input on, and the outputs before it are bit-identical to those of the same finite prefix. (The
    blocked product multiplies later inputs by the zeros above the diagonal, and 0·NaN would spread a
    NaN to earlier rows; so such inputs are zeroed for the product and the NaN is put back after.)
    """
    bad = ~torch.isfinite(z)
    if not bool(bad.any()):
        return _blocked_scan(z, m, k, s_prev, block)
    x, s = _blocked_scan(z.masked_fill(bad, 0.0), m, k, s_prev, block)
    poisoned = bad.cumsum(dim=-2) > 0  # (..., T, D): at or after the channel's first non-finite input
    return x.masked_fill(poisoned, float("nan")), s.masked_fill(poisoned[..., -1:, :], float("nan"))


def _blocked_scan(z: Tensor, m: Tensor, k: Tensor, s_prev: Tensor, block: int) -> tuple[Tensor, Tensor]:
    p64, imp64, w64 = _block_operators(tuple(map(tuple, m.tolist())), tuple(k.tolist()), block)
    dt, dev = z.dtype, z.device
    p, imp, w = p64.to(dev, dt), imp64.to(dev, dt), w64.to(dev, dt)
    t_total = z.shape[-2]
    outs = []
    s = s_prev.to(dt)
    for t0 in range(0, t_total, block):
        zb = z[..., t0 : t0 + block, :]
        tb = zb.shape[-2]
        carry = torch.einsum("ts,...sd->...td", p[1 : tb + 1, 0, :], s)
        outs.append(carry + torch.einsum("tk,...kd->...td", w[:tb, :tb], zb))
        # final state: M^tb s + sum_k M^(tb-1-k) K z_k
        ws = imp[:tb].flip(0).transpose(0, 1)  # (S, tb): column k holds M^(tb-1-k) K
        s = torch.einsum("rs,...sd->...rd", p[tb], s) + torch.einsum("rk,...kd->...rd", ws, zb)
    x = torch.cat(outs, dim=-2) if outs else z.new_zeros(z.shape)
    return x, s
