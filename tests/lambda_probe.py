"""Inputs where λ = "auto" would be ill-conditioned, and the λ a backend used, for the conditioning tests.

Shared by tests/test_lambda_conditioning.py in-process (PyTorch) and in a fresh interpreter process (the
Triton kernels under ``TRITON_INTERPRET=1``), which imports it by path.
"""

from __future__ import annotations

import torch

from delta_attn.backend import SequenceState
from delta_attn.config import DeltaConfig

#: sink 4 + window 4, γ 8: the anchor at 0 sees every key, the anchor at 8 misses one key (4), the one at 16
#: misses 9 keys, and every later one more
CONFIG = DeltaConfig(sink=4, window=4, gamma=8, tail=8, delta_scale="auto")
MISSED_KEY, NEARLY_COVERED_ANCHOR = 4, 8
#: the score s·q_8·k_4 the construction gives the missed key: its share of row 8's softmax is then ~e^−2.5/9,
#: so Δ of the anchor at 8 is ~1/40 of the next anchor's Δ (which misses 9 keys of typical score)
MISSED_SCORE = -2.5


def ill_conditioned_qkv(seed: int, b: int, h: int, n: int, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random float64 q, k, v (b, h, n, d) — fresh values — except the component of k_4 along q_8, set so that the
    one key the anchor at 8 misses has the score :data:`MISSED_SCORE` with it (per head). The anchor's Δ is then
    small next to its successor's: the pair (Δ_2, Δ_1) of the least-squares ratio is ill-conditioned."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64) for _ in range(3))
    anchor_q = q[:, :, NEARLY_COVERED_ANCHOR]
    unit = anchor_q / anchor_q.norm(dim=-1, keepdim=True)
    key = k[:, :, MISSED_KEY]
    along = MISSED_SCORE * d**0.5 / anchor_q.norm(dim=-1, keepdim=True)  # s·q·k = MISSED_SCORE, s = 1/√d
    k[:, :, MISSED_KEY] = key - (key * unit).sum(-1, keepdim=True) * unit + along * unit
    return q, k, v


def captured_lambdas(run, kernel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(λ, raw Δ)`` per γ-block of the whole prompt, float64 (B, H, n_blocks) and (B, H, n_blocks, D), that
    ``run()`` (one prefill, one-shot or chunk by chunk) used: from ``combine.delta_scales`` (PyTorch) or, with
    ``kernel``, recovered from the fused kernels' λ_jΔ_j (``kernels.delta_scale.scaled_block_deltas``). A
    chunk's carried block repeats the previous chunk's last block and is dropped."""
    import delta_attn.combine as combine_mod

    calls = []
    if kernel:
        import delta_attn.kernels.prefill as prefill_mod

        fused = prefill_mod.scaled_block_deltas

        def spy(plan, anchor_deltas, **kw):
            given, sums = fused(plan, anchor_deltas, **kw)
            raw = anchor_deltas.double()
            lam = (given[:, :, -raw.shape[2] :].double() * raw).sum(-1) / raw.square().sum(-1)
            calls.append((lam, raw))
            return given, sums

        owner, name, original = prefill_mod, "scaled_block_deltas", fused
    else:
        original = combine_mod.delta_scales

        def spy(plan, deltas):
            lam, sums = original(plan, deltas)
            skip = 1 if plan.carried_delta is not None else 0
            calls.append((lam[:, :, skip:].double(), deltas[:, :, skip:].double()))
            return lam, sums

        owner, name = combine_mod, "delta_scales"
    setattr(owner, name, spy)
    try:
        run()
    finally:
        setattr(owner, name, original)
    assert calls, "the prefill computed no λ (not the data-driven path)"
    return torch.cat([c[0] for c in calls], dim=2), torch.cat([c[1] for c in calls], dim=2)


def prefill(fn, q, k, v, chunks=(), **kw) -> None:
    """Run the prefill ``fn`` (a backend) over q, k, v with :data:`CONFIG`, one-shot or in ``chunks``."""
    n, d = q.shape[2], q.shape[3]
    common = dict(scale=d**-0.5, prompt_len=n, **kw)
    if not chunks:
        fn(q, k, v, CONFIG, **common)
        return
    state, start = SequenceState(), 0
    for size in chunks:
        end = start + size
        fn(q[:, :, start:end], k[:, :, :end], v[:, :, :end], CONFIG, state=state, **common)
        start = end
