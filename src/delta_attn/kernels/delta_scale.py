"""λ per γ-block for ``delta_scale="auto"`` (and ``"auto-decay"``, ``"auto-global"``) in the fused Δ path
(docs/algorithm.md §13), as two small kernels instead of a dozen PyTorch ones.

:func:`delta_attn.combine.delta_scales` and :func:`~delta_attn.combine.scale_deltas` are the definition (and
the unfused path); this computes the same ``given = λ_j Δ_j`` that the sparse kernel's epilogue adds, and the
running sums a chunked prefill carries, from the raw Δs of the call's anchors
(:func:`.anchor_sparse.anchor_sparse_rows` with ``dense``: D − Õ, written by the anchor kernel itself):

1. :func:`_lambda_terms_kernel` (one program per (b, h) and run of anchors): per anchor a its pair terms
   ⟨Δ_a, Δ_{a−1}⟩ and ‖Δ_{a−1}‖² in float32, Δ_{−1} being the carried block's Δ (a chunk that continues a
   γ-block), the previous chunk's last Δ (a chunk starting on a block boundary) or nothing (prompt start:
   the term is 0). A pair with an anchor left out of the sums (``combine.scale_left_out_blocks``: its sparse row
   misses fewer than γ keys) has both terms 0, as in the reference.
   Each program also writes its run's float64 totals.
2. :func:`_lambda_scale_kernel` (same grid): the float64 sums before its run (the carried sums plus the
   earlier runs' totals), the running sums inside its run (a float64 scan), λ_a = clip(Σnum / Σden, 0, 1)
   with 0/0 = 1, optionally the block mean decay, and ``given`` = λ·Δ (the raw Δ: only the sums leave the
   left-out anchors out, §13). The carried block keeps the carried sums' λ; the program of the last run
   writes the sums through the call's last block.

Two launches rather than one program per (b, h): at 128K there are ~2K anchors × 128 channels per head, and
32 programs (Llama-3-8B's heads) would read and write those 2 × 32 MiB through a quarter of an H100's SMs.
All three forms are fused: ``"auto-global"`` adds every run's totals instead of the earlier ones' and writes
no sums; ``"auto-decay"`` maps λ through (ρ − 1)/ln ρ (``combine.block_mean_decay``), with ln(1 + x) for
x = ρ − 1 taken as x·ln(u)/(u − 1), u = 1 + x, which keeps log1p's accuracy near ρ = 1 in float64.
The dot products are float32 (as in the reference) in another summation order, so λ matches the reference to
float32 rounding, not bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..backend import CallPlan
from ..combine import scale_left_out_blocks
from ..config import DELTA_SCALE_MODES
from .dense_rows import stand_in

#: ``delta_scale`` string → the kernels' MODE.
MODES = {"auto": 0, "auto-decay": 1, "auto-global": 2}
#: Anchors per program (BA), run totals per step of the prefix loop (BP; one step up to BA·BP = 16K anchors), warps.
CONFIG = dict(BA=32, BP=512, num_warps=4)


# What a call has (a previous Δ, left-out anchors, a carried block, carried sums) depends on where its chunk falls,
# so these are runtime flags, never constexprs: as constexprs each combination was a compilation, and a new prompt
# length could meet a combination the warm-up had not (tests/test_kernels_specialize.py).
@triton.jit(do_not_specialize=["n_anchor", "has_prev", "has_left_out", "left_out_off"])
def _lambda_terms_kernel(
    Deltas,
    Prev,
    LeftOut,
    Terms,
    RunSums,
    n_anchor,
    has_prev,
    has_left_out,
    left_out_off,
    D: tl.constexpr,
    BD: tl.constexpr,
    BA: tl.constexpr,
):
    """Terms[bh, 0, a] = ⟨Δ_a, Δ_{a−1}⟩, Terms[bh, 1, a] = ‖Δ_{a−1}‖² (float32), both 0 for a pair with a
    left-out anchor, and RunSums[bh, run] = the float64 sums of this run's terms.

    Deltas: (BH, n_anchor, D) float32 contiguous; Prev: (BH, D) Δ_{−1} (has_prev ≠ 0); LeftOut: uint8/bool, entry
    left_out_off + a + 1 for anchor a and entry left_out_off for Δ_{−1} (has_left_out ≠ 0)."""
    bh = tl.program_id(0).to(tl.int64)
    run = tl.program_id(1)
    a = run * BA + tl.arange(0, BA)
    a_ok = a < n_anchor
    offs_d = tl.arange(0, BD)
    d_ok = offs_d < D
    base = Deltas + bh * n_anchor * D
    cur = tl.load(base + a[:, None] * D + offs_d[None, :], mask=a_ok[:, None] & d_ok[None, :], other=0.0)
    pred_ok = a_ok & (a >= 1)
    pred = tl.load(base + (a - 1)[:, None] * D + offs_d[None, :], mask=pred_ok[:, None] & d_ok[None, :], other=0.0)
    # anchor 0 pairs with the block before the call's first anchor (zeros without one: the term is 0)
    prev = tl.load(Prev + bh * D + offs_d, mask=d_ok & (has_prev != 0), other=0.0)
    pred = tl.where((a == 0)[:, None], prev[None, :], pred)
    num = tl.sum(cur * pred, axis=1)
    den = tl.sum(pred * pred, axis=1)
    # a pair with an anchor that misses fewer than γ keys adds exact zeros to both sums (selected, as in the
    # reference: a non-finite Δ of such an anchor stays out too)
    out_ok = a_ok & (has_left_out != 0)
    cur_out = tl.load(LeftOut + left_out_off + a + 1, mask=out_ok, other=0) != 0
    pred_out = tl.load(LeftOut + left_out_off + a, mask=out_ok, other=0) != 0
    pair_out = cur_out | pred_out
    num = tl.where(pair_out, 0.0, num)
    den = tl.where(pair_out, 0.0, den)
    t_base = Terms + bh * 2 * n_anchor
    tl.store(t_base + a, num, mask=a_ok)
    tl.store(t_base + n_anchor + a, den, mask=a_ok)
    r_ptr = RunSums + (bh * tl.num_programs(1) + run) * 2
    tl.store(r_ptr, tl.sum(num.to(tl.float64), axis=0))
    tl.store(r_ptr + 1, tl.sum(den.to(tl.float64), axis=0))


@triton.jit
def _lstsq_lambda(num, den, MODE: tl.constexpr):
    """clip(num / den, 0, 1) with 0/0 → 1 (``combine._lstsq_factor``), then for MODE 1 the block mean decay
    (``combine.block_mean_decay``); float64 in, float64 out; a NaN stays NaN, as with torch.clamp."""
    safe_den = tl.where(den > 0, den, 1.0)
    ratio = tl.where(den > 0, num / safe_den, 1.0)
    lam = tl.where(ratio < 0.0, 0.0, tl.where(ratio > 1.0, 1.0, ratio))
    if MODE == 1:
        inner = (lam > 0.0) & (lam < 1.0)
        x = tl.where(inner, lam - 1.0, -0.5)
        u = 1.0 + x
        # log1p(x) = x·ln(u)/(u − 1) (u ≠ 1): exact to a few ulp where ln(1 + x) alone would lose x's digits
        log1p = tl.where(u == 1.0, x, tl.log(u) * (x / tl.where(u == 1.0, 1.0, u - 1.0)))
        lam = tl.where(inner, x / log1p, lam)
    return lam


@triton.jit(do_not_specialize=["n_anchor", "carried", "has_start"])
def _lambda_scale_kernel(
    Deltas,
    Prev,
    Terms,
    RunSums,
    Start,
    Given,
    Sums,
    n_anchor,
    carried,
    has_start,
    D: tl.constexpr,
    BD: tl.constexpr,
    BA: tl.constexpr,
    BP: tl.constexpr,
    MODE: tl.constexpr,
):
    """Given[bh, a + carried] = λ_a·Δ_a for this program's run of anchors (and Given[bh, 0] = λ·Prev for the
    carried block, carried = 1, first run); the last run writes Sums[bh] (MODE 0/1). Start: (BH, 2) float64
    carried sums (has_start ≠ 0); RunSums: (BH, n_runs, 2) float64 from :func:`_lambda_terms_kernel`."""
    bh = tl.program_id(0).to(tl.int64)
    run = tl.program_id(1)
    lo = run * BA
    num0 = tl.load(Start + bh * 2, mask=has_start != 0, other=0.0).to(tl.float64)
    den0 = tl.load(Start + bh * 2 + 1, mask=has_start != 0, other=0.0).to(tl.float64)
    t_base = Terms + bh * 2 * n_anchor
    # the sums before this run from the earlier runs' totals (auto-global: every run's)
    n_runs = (n_anchor + BA - 1) // BA
    end = n_runs if MODE == 2 else run
    r_base = RunSums + bh * n_runs * 2
    acc_num = tl.zeros([BP], tl.float64)
    acc_den = tl.zeros([BP], tl.float64)
    for p0 in range(0, end, BP):
        idx = p0 + tl.arange(0, BP)
        ok = idx < end
        acc_num += tl.load(r_base + idx * 2, mask=ok, other=0.0)
        acc_den += tl.load(r_base + idx * 2 + 1, mask=ok, other=0.0)
    num_before = num0 + tl.sum(acc_num, axis=0)
    den_before = den0 + tl.sum(acc_den, axis=0)
    a = lo + tl.arange(0, BA)
    a_ok = a < n_anchor
    offs_d = tl.arange(0, BD)
    d_ok = offs_d < D
    term_num = tl.load(t_base + a, mask=a_ok, other=0.0).to(tl.float64)
    term_den = tl.load(t_base + n_anchor + a, mask=a_ok, other=0.0).to(tl.float64)
    if MODE == 2:
        num = num_before + tl.zeros([BA], tl.float64)
        den = den_before + tl.zeros([BA], tl.float64)
    else:  # block a's λ reads the anchors up to a: the running sums through it
        num = num_before + tl.cumsum(term_num, axis=0)
        den = den_before + tl.cumsum(term_den, axis=0)
    lam = _lstsq_lambda(num, den, MODE).to(tl.float32)
    n_blocks = n_anchor + carried
    g_base = Given + bh * n_blocks * D
    m2 = a_ok[:, None] & d_ok[None, :]
    delta = tl.load(Deltas + bh * n_anchor * D + a[:, None] * D + offs_d[None, :], mask=m2, other=0.0)
    tl.store(g_base + (a + carried)[:, None] * D + offs_d[None, :], delta * lam[:, None], mask=m2)
    if carried != 0:
        if run == 0:  # the carried block keeps the carried sums' λ (auto-global: the call's)
            if MODE == 2:
                lam0 = _lstsq_lambda(num_before, den_before, MODE).to(tl.float32)
            else:
                lam0 = _lstsq_lambda(num0, den0, MODE).to(tl.float32)
            prev = tl.load(Prev + bh * D + offs_d, mask=d_ok, other=0.0)
            tl.store(g_base + offs_d, prev * lam0, mask=d_ok)
    if MODE != 2:
        if run == tl.num_programs(1) - 1:  # the sums through the call's last block, for the next chunk
            tl.store(Sums + bh * 2, num_before + tl.sum(term_num, axis=0))
            tl.store(Sums + bh * 2 + 1, den_before + tl.sum(term_den, axis=0))


def scaled_block_deltas(
    plan: CallPlan, anchor_deltas: Tensor, *, config: dict | None = None
) -> tuple[Tensor, Tensor | None]:
    """``(given, sums)`` for the fused epilogue: what ``scale_deltas(raw, λ)`` and ``delta_scales(plan, raw)``
    give for ``raw`` = the carried Δ (if any) then ``anchor_deltas``.

    anchor_deltas: (B, H, n_anchor, D) raw Δ = D − Õ of the call's anchors (``plan.n_anchors``), float32.
    Returns ``given`` (B, H, n_blocks, D) float32 contiguous, λ_jΔ_j of every γ-block the call touches (the
    carried one first), and ``sums`` (B, H, 2) float64, the running sums through the call's last block
    (None for ``"auto-global"``, as :func:`~delta_attn.combine.delta_scales`). ``config``: BA, BP, num_warps
    (default :data:`CONFIG`).
    """
    mode = plan.config.delta_scale
    if mode not in DELTA_SCALE_MODES:
        raise ValueError(f"scaled_block_deltas computes the data-driven λ {DELTA_SCALE_MODES}, not {mode!r}")
    bsz, heads, n_anchor, d = anchor_deltas.shape
    carried = plan.carried_delta is not None
    n_blocks = n_anchor + int(carried)
    if n_blocks != plan.n_blocks or n_anchor != plan.n_anchors:
        raise ValueError(
            f"anchor_deltas has {n_anchor} anchors; the call has {plan.n_anchors} anchors and {plan.n_blocks} "
            "γ-blocks (pass the Δs of the call's anchors, without the carried block)"
        )
    device = anchor_deltas.device
    deltas = anchor_deltas.float().contiguous()
    given = torch.empty(bsz, heads, n_blocks, d, device=device, dtype=torch.float32)
    sums = torch.empty(bsz, heads, 2, device=device, dtype=torch.float64)
    prev = plan.carried_delta if carried else plan.previous_delta
    has_prev = prev is not None
    # Every pointer keeps one type and 16-byte alignment whatever the call has (absent inputs get stand-ins of the
    # same dtype, the left-out mask is offset by an argument rather than sliced): one compilation serves all calls
    prev = prev.float().contiguous() if has_prev else given  # (unread without has_prev)
    start = plan.carried_sums.double().contiguous() if plan.carried_sums is not None else sums
    # entry 0 is the block before the call's first block; with a carried block, the one before its first anchor
    left_out = scale_left_out_blocks(plan, plan.first_block - 1, n_blocks + 1, device=device)
    has_left_out = left_out is not None
    if not has_left_out:
        left_out = stand_in(device, torch.bool)
    cfg = dict(CONFIG if config is None else config)
    ba, bp = cfg.pop("BA"), cfg.pop("BP")
    bd = max(16, triton.next_power_of_2(d))
    bh = bsz * heads
    n_runs = triton.cdiv(n_anchor, ba)
    if n_anchor:
        terms = torch.empty(bh, 2, n_anchor, device=device, dtype=torch.float32)
        run_sums = torch.empty(bh, n_runs, 2, device=device, dtype=torch.float64)
        _lambda_terms_kernel[(bh, n_runs)](
            deltas,
            prev,
            left_out,
            terms,
            run_sums,
            n_anchor,
            int(has_prev),
            int(has_left_out),
            int(carried),
            D=d,
            BD=bd,
            BA=ba,
            **cfg,
        )
    else:  # a chunk inside the carried block: no anchor, no term (stand-ins of the usual dtypes)
        terms, run_sums = given, sums
    _lambda_scale_kernel[(bh, max(1, n_runs))](
        deltas,
        prev,
        terms,
        run_sums,
        start,
        given,
        sums,
        n_anchor,
        int(carried),
        int(plan.carried_sums is not None),
        D=d,
        BD=bd,
        BA=ba,
        BP=bp,
        MODE=MODES[mode],
        **cfg,
    )
    return given, (None if mode == "auto-global" else sums)
