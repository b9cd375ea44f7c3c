"""The Δ apply for ``interp="ema"``/``"abg"`` (and the unfused ``"repeat"``): a causal linear filter
over the row axis, ``s_i = M s_{i-1} + K z_i``, ``x_i = s_i[0]``, output ``Õ_i + x_i``.

Why it is cheap: the filter input z is the repeated Δ, constant over each γ-block (a *segment*;
the first and last segment of a call may be partial). For a segment with input u that starts from
state s, after t+1 steps

    s_t = M^(t+1) s + (Σ_{k≤t} M^k) K u,     x_t = e0ᵀ M^(t+1) s + e0ᵀ (Σ_{k≤t} M^k) K u,

so with the tables ``P[L] = M^L`` and ``Qv[L] = Σ_{k<L} M^k K`` (L = 0..γ) the work splits into
1. :func:`_segment_states`: a sequential pass over segments only (N/γ steps, one small
   matrix-vector product each) giving the state at every segment start, and
2. :func:`_segment_apply`: every row in parallel, ``x_t = P[t+1][0]·s + Qv[t+1][0] u``, fused with
   the read of Õ and the write of the output.

States have at most 3 components (abg: position, velocity, acceleration); ema uses 1 and
"repeat" is the system M = 0, K = 1 (x_i = z_i).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import triton
import triton.language as tl

S_MAX = 3


@lru_cache(maxsize=32)
def _tables64(m_key: tuple, k_key: tuple, gamma: int) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(m_key, dtype=torch.float64)
    kv = torch.tensor(k_key, dtype=torch.float64)
    s = m.shape[0]
    mp = torch.zeros(S_MAX, S_MAX, dtype=torch.float64)
    mp[:s, :s] = m
    kp = torch.zeros(S_MAX, dtype=torch.float64)
    kp[:s] = kv
    p = [torch.eye(S_MAX, dtype=torch.float64)]
    qv = [torch.zeros(S_MAX, dtype=torch.float64)]
    for _ in range(gamma):
        qv.append(qv[-1] + p[-1] @ kp)  # Σ_{k<L} M^k K
        p.append(mp @ p[-1])  # M^L
    return torch.stack(p).contiguous(), torch.stack(qv).contiguous()


def tables(m: torch.Tensor, k: torch.Tensor, gamma: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(P (γ+1, 3, 3), Qv (γ+1, 3)) float32 on ``device`` for the system (m, k) padded to 3 states."""
    p, qv = _tables64(tuple(map(tuple, m.tolist())), tuple(k.tolist()), int(gamma))
    return p.to(device, torch.float32), qv.to(device, torch.float32)


@triton.jit
def _seg_bounds(j, first_block, q_start, body_end, GAMMA):
    lo = tl.maximum((first_block + j) * GAMMA, q_start)
    hi = tl.minimum((first_block + j + 1) * GAMMA, body_end)
    return lo, hi


@triton.jit(do_not_specialize=["n_seg", "first_block", "q_start", "body_end"])
def _segment_states(
    Deltas, SPrev, States, SLast, P, Qv, n_seg, first_block, q_start, body_end, GAMMA, D, BD: tl.constexpr
):
    """Sequential over segments; program = (batch·head, channel block). States: (BH, n_seg, 3, D)."""
    bh = tl.program_id(0)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    ok = d < D
    sp = SPrev + bh.to(tl.int64) * 3 * D + d
    s0 = tl.load(sp, mask=ok, other=0.0)
    s1 = tl.load(sp + D, mask=ok, other=0.0)
    s2 = tl.load(sp + 2 * D, mask=ok, other=0.0)
    for j in range(n_seg):
        st = States + (bh.to(tl.int64) * n_seg + j) * 3 * D + d
        tl.store(st, s0, mask=ok)
        tl.store(st + D, s1, mask=ok)
        tl.store(st + 2 * D, s2, mask=ok)
        lo, hi = _seg_bounds(j, first_block, q_start, body_end, GAMMA)
        L = hi - lo
        u = tl.load(Deltas + (bh.to(tl.int64) * n_seg + j) * D + d, mask=ok, other=0.0)
        pm = P + L * 9
        qv = Qv + L * 3
        n0 = tl.load(pm) * s0 + tl.load(pm + 1) * s1 + tl.load(pm + 2) * s2 + tl.load(qv) * u
        n1 = tl.load(pm + 3) * s0 + tl.load(pm + 4) * s1 + tl.load(pm + 5) * s2 + tl.load(qv + 1) * u
        n2 = tl.load(pm + 6) * s0 + tl.load(pm + 7) * s1 + tl.load(pm + 8) * s2 + tl.load(qv + 2) * u
        s0, s1, s2 = n0, n1, n2
    sl = SLast + bh.to(tl.int64) * 3 * D + d
    tl.store(sl, s0, mask=ok)
    tl.store(sl + D, s1, mask=ok)
    tl.store(sl + 2 * D, s2, mask=ok)


@triton.jit(do_not_specialize=["n_seg", "first_block", "q_start", "body_end"])
def _segment_apply(
    Sparse,
    Out,
    Deltas,
    States,
    P,
    Qv,
    Hq,
    n_seg,
    first_block,
    q_start,
    body_end,
    ssb,
    ssh,
    ssn,
    sob,
    soh,
    son,
    GAMMA,
    D: tl.constexpr,
    BD: tl.constexpr,
    RT: tl.constexpr,
):
    """Program = (segment, batch·head): out rows = Õ rows + filter output, RT rows at a time."""
    j = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    d = tl.arange(0, BD)
    ok = d < D
    st = States + (bh.to(tl.int64) * n_seg + j) * 3 * D + d
    s0 = tl.load(st, mask=ok, other=0.0)
    s1 = tl.load(st + D, mask=ok, other=0.0)
    s2 = tl.load(st + 2 * D, mask=ok, other=0.0)
    u = tl.load(Deltas + (bh.to(tl.int64) * n_seg + j) * D + d, mask=ok, other=0.0)
    lo, hi = _seg_bounds(j, first_block, q_start, body_end, GAMMA)
    for r0 in range(lo, hi, RT):
        r = r0 + tl.arange(0, RT)
        r_ok = r < hi
        t1 = tl.where(r_ok, r - lo + 1, 0)  # table index t+1
        a0 = tl.load(P + t1 * 9)
        a1 = tl.load(P + t1 * 9 + 1)
        a2 = tl.load(P + t1 * 9 + 2)
        bt = tl.load(Qv + t1 * 3)
        x = a0[:, None] * s0[None, :] + a1[:, None] * s1[None, :] + a2[:, None] * s2[None, :] + bt[:, None] * u[None, :]
        m = r_ok[:, None] & ok[None, :]
        row = (r - q_start).to(tl.int64)[:, None]
        o = tl.load(Sparse + b.to(tl.int64) * ssb + h.to(tl.int64) * ssh + row * ssn + d[None, :], mask=m, other=0.0)
        tl.store(
            Out + b.to(tl.int64) * sob + h.to(tl.int64) * soh + row * son + d[None, :],
            (o.to(tl.float32) + x).to(Out.dtype.element_ty),
            mask=m,
        )


def delta_scan_apply(
    sparse: torch.Tensor,
    deltas: torch.Tensor,
    s_prev: torch.Tensor,
    m: torch.Tensor,
    k: torch.Tensor,
    *,
    q_start: int,
    body_end: int,
    gamma: int,
    out: torch.Tensor,
) -> torch.Tensor:
    """out[:, :, i] = sparse[:, :, i] + x_i for rows ``i`` at positions ``[q_start, body_end)``.

    sparse, out: (B, Hq, Nq, D) (row 0 at q_start); deltas: (B, Hq, n_seg, D) float32, the filter
    input of each γ-block touched (block ``q_start // γ`` first); s_prev: (B, Hq, S, D) float32,
    the state before row q_start; (m, k): the system (float64, S ≤ 3). Returns the final state
    (B, Hq, S, D) float32, after row ``body_end - 1``.
    """
    bsz, hq, _, d = sparse.shape
    n_states = m.shape[0]
    first_block = q_start // gamma
    n_seg = deltas.shape[2]
    assert n_seg == (body_end - 1) // gamma - first_block + 1
    p_tab, q_tab = tables(m, k, gamma, sparse.device)
    sp = torch.zeros(bsz, hq, S_MAX, d, device=sparse.device, dtype=torch.float32)
    sp[:, :, :n_states] = s_prev
    deltas = deltas.float().contiguous()
    states = torch.empty(bsz * hq, n_seg, S_MAX, d, device=sparse.device, dtype=torch.float32)
    s_last = torch.empty(bsz, hq, S_MAX, d, device=sparse.device, dtype=torch.float32)
    bd_seq = min(32, triton.next_power_of_2(d))
    _segment_states[(bsz * hq, triton.cdiv(d, bd_seq))](
        deltas,
        sp,
        states,
        s_last,
        p_tab,
        q_tab,
        n_seg,
        first_block,
        q_start,
        body_end,
        gamma,
        d,
        BD=bd_seq,
        num_warps=1,
    )
    bd = triton.next_power_of_2(d)
    rt = max(16, min(64, triton.next_power_of_2(gamma)))
    _segment_apply[(n_seg, bsz * hq)](
        sparse,
        out,
        deltas,
        states,
        p_tab,
        q_tab,
        hq,
        n_seg,
        first_block,
        q_start,
        body_end,
        *sparse.stride()[:3],
        *out.stride()[:3],
        gamma,
        D=d,
        BD=bd,
        RT=rt,
        num_warps=4,
    )
    return s_last[:, :, :n_states]


@triton.jit(do_not_specialize=["n_rows", "q_start", "first_block", "n_seg"])
def _repeat_add_kernel(
    Out,
    Deltas,
    n_rows,
    q_start,
    first_block,
    n_seg,
    gamma,
    hq,
    s_b,
    s_h,
    s_n,
    D: tl.constexpr,
    BD: tl.constexpr,
    RT: tl.constexpr,
):
    """Out[b, h, r] += Deltas[b, h, (q_start + r) // γ − first_block] for the body rows r < n_rows (in place)."""
    bh = tl.program_id(1)
    b, h = bh // hq, bh % hq
    rows = (tl.program_id(0) * RT + tl.arange(0, RT)).to(tl.int64)
    cols = tl.arange(0, BD)
    ok = (rows < n_rows)[:, None] & (cols < D)[None, :]
    seg = (q_start + rows) // gamma - first_block
    ptr = Out + b.to(tl.int64) * s_b + h.to(tl.int64) * s_h + rows[:, None] * s_n + cols[None, :]
    x = tl.load(ptr, mask=ok, other=0.0).to(tl.float32)
    z = tl.load(Deltas + (bh.to(tl.int64) * n_seg + seg)[:, None] * D + cols[None, :], mask=ok, other=0.0)
    tl.store(ptr, (x + z).to(Out.dtype.element_ty), mask=ok)


def repeat_add(out: torch.Tensor, deltas: torch.Tensor, *, q_start: int, body_end: int, gamma: int) -> None:
    """``interp="repeat"`` in place: out[:, :, i] += deltas[:, :, block(i)] for the rows at positions
    ``[q_start, body_end)`` (row 0 of ``out`` at q_start; block(i) = i // γ − q_start // γ). One read and one write
    of each body row and no scan: what :func:`delta_scan_apply` does for the repeat system, at memory speed.

    out: (B, Hq, Nq, D), any strides with the last dim contiguous; deltas: (B, Hq, n_seg, D) float32 (λ applied).
    """
    bsz, hq, _, d = out.shape
    n_rows = body_end - q_start
    if n_rows <= 0:
        return
    assert out.stride(-1) == 1
    deltas = deltas.float().contiguous()
    rt = 32
    _repeat_add_kernel[(triton.cdiv(n_rows, rt), bsz * hq)](
        out,
        deltas,
        n_rows,
        q_start,
        q_start // gamma,
        deltas.shape[2],
        gamma,
        hq,
        *out.stride()[:3],
        D=d,
        BD=triton.next_power_of_2(d),
        RT=rt,
        num_warps=4,
    )
