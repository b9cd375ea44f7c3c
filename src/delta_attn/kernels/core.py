"""Triton building blocks shared by the attention kernels: one online-softmax step and tile loads.

Conventions used by every kernel in this package:

* Scores are kept in base 2: ``qk_scale = scale * log2(e)`` and ``exp2`` replaces ``exp``; a
  row's log-sum-exp is therefore ``m + log2(l)`` (base 2) wherever partial results are merged.
* A masked tile uses ``-inf`` for forbidden keys and guards the running max, so a row that has
  seen no allowed key yet keeps ``l = 0`` and ends as zeros (never NaN), like the reference.
* Head dims that are not a power of two (e.g. 80) are padded to ``BD`` with masked loads; the
  padded columns of q and v are zero, so they change no score and are never stored.
* Offsets that can pass 2**31 elements (batch/head strides at 1M tokens) are formed in int64.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def softmax_step(acc, l_i, m_i, q, k, v, qk_scale, allowed, MASKED: tl.constexpr, DOT_PREC: tl.constexpr):
    """One key tile of flash attention.

    q: [BM, BD]; k: [BD, BN] (already transposed); v: [BN, BD]; allowed: [BM, BN] bool (read only
    when MASKED). acc: [BM, BD] fp32 un-normalised output, l_i / m_i: [BM] running sum / max (base 2).
    """
    qk = tl.dot(q, k, input_precision=DOT_PREC)
    if MASKED:
        qk = tl.where(allowed, qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing allowed yet stays empty
        p = tl.math.exp2(qk - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
    return acc, l_i, m_new


@triton.jit
def row_pointers(X, b, head, row, sxb, sxh, sxn, offs_d):
    """Pointers [BM, BD] into a (B, H, N, D) tensor with unit stride on D: tile row r is row ``row[r]`` of head
    ``head[r]`` of sequence ``b``. int64 offsets: a 1M-token tensor overflows int32."""
    return (
        X + b.to(tl.int64) * sxb + head[:, None].to(tl.int64) * sxh + row[:, None].to(tl.int64) * sxn + offs_d[None, :]
    )


@triton.jit
def load_q_rows(Q, b, head, pos, q_start, sqb, sqh, sqn, offs_d, row_ok, d_ok):
    """The query tile [BM, BD]: row r is position ``pos[r]`` of query head ``head[r]`` of sequence ``b``
    (Q holds positions ``q_start``…), zeros where ``row_ok`` or ``d_ok`` is False."""
    ptrs = row_pointers(Q, b, head, pos - q_start, sqb, sqh, sqn, offs_d)
    return tl.load(ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)


@triton.jit
def kv_pointers(K, V, k_base, v_base, offs_n, offs_d, skn, svn):
    """Pointer tiles of keys 0..BN-1 of one KV head: K^T as [BD, BN] and V as [BN, BD].

    Built once per program; the key loop only adds ``k0 * stride`` (a scalar) to them."""
    kt_ptrs = K + k_base + offs_n[None, :] * skn + offs_d[:, None]
    v_ptrs = V + v_base + offs_n[:, None] * svn + offs_d[None, :]
    return kt_ptrs, v_ptrs


@triton.jit
def load_kv(
    kt_ptrs,
    v_ptrs,
    desc_k,
    desc_v,
    row0,
    tma_b,
    tma_h,
    k0,
    offs_n,
    offs_d,
    skn,
    svn,
    n_keys,
    D: tl.constexpr,
    CHECK_N: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """Keys ``k0 .. k0+BN-1`` of one KV head: returns k as [BD, BN] and v as [BN, BD].

    With ``USE_TMA`` the tiles come through the tensor-memory accelerator (see
    :func:`make_kv_descriptors`; out-of-range rows/columns are zero-filled by the hardware); otherwise
    through plain pointer loads, masked when ``CHECK_N`` (tile may cross ``n_keys``) or when D is padded.
    """
    if USE_TMA == 3:  # host descriptors over (B, Hkv, Nk, D) with any strides: box (1, 1, BN, BD)
        # drop the two unit dims as triton.tools.ragged_tma.load_ragged does after its rank-4 loads
        k = desc_k.load([tma_b, tma_h, k0, 0])
        k = tl.reshape(k, k.shape[2:]).T
        v = desc_v.load([tma_b, tma_h, k0, 0])
        v = tl.reshape(v, v.shape[2:])
    elif USE_TMA:
        k = desc_k.load([row0 + k0, 0]).T
        v = desc_v.load([row0 + k0, 0])
    else:
        ko = tl.cast(k0, tl.int64) * skn
        vo = tl.cast(k0, tl.int64) * svn
        d_ok = offs_d < D
        if CHECK_N:
            n_ok = (k0 + offs_n) < n_keys
            k = tl.load(kt_ptrs + ko, mask=n_ok[None, :] & d_ok[:, None], other=0.0)
            v = tl.load(v_ptrs + vo, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        elif D == offs_d.shape[0]:  # no padding: unmasked loads
            k = tl.load(kt_ptrs + ko)
            v = tl.load(v_ptrs + vo)
        else:
            k = tl.load(kt_ptrs + ko, mask=d_ok[:, None], other=0.0)
            v = tl.load(v_ptrs + vo, mask=d_ok[None, :], other=0.0)
    return k, v


@triton.jit
def make_kv_descriptors(
    K,
    V,
    DescK,
    DescV,
    k_base,
    v_base,
    bh_kv,
    n_keys,
    skn,
    svn,
    D: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """TMA access to one KV head: returns (desc_k, desc_v, row0), keys then at rows ``row0 + k``.

    USE_TMA 3: host descriptors over the 4-D (B, Hkv, Nk, D) tensors with their own strides (any
    16-byte-aligned layout: transposed projections, views of a longer cache buffer), rows past Nk of a
    head zero-filled; :func:`load_kv` indexes them by (b, hk, key); 2: the host descriptors over
    (B·Hkv·Nk, D), row0 = (b·Hkv + hk)·Nk (contiguous K/V; rows past Nk belong to the next head;
    callers mask them); 1: descriptors made here over this head's (Nk, D) (one descriptor write and
    fence per program), out-of-range rows zero-filled; 0: no TMA (pointer loads).
    """
    if USE_TMA == 2 or USE_TMA == 3:
        desc_k = DescK
        desc_v = DescV
        row0 = bh_kv * n_keys
    elif USE_TMA == 1:
        desc_k = tl.make_tensor_descriptor(K + k_base, shape=[n_keys, D], strides=[skn, 1], block_shape=[BN, BD])
        desc_v = tl.make_tensor_descriptor(V + v_base, shape=[n_keys, D], strides=[svn, 1], block_shape=[BN, BD])
        row0 = 0
    else:
        desc_k = 0
        desc_v = 0
        row0 = 0
    return desc_k, desc_v, row0
