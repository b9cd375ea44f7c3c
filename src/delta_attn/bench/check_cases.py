"""The cases of the GPU correctness checks (``python -m delta_attn.bench.check``).

Every base, mode, interpolation, Δ variant and chunking, at GPU sizes (:func:`gpu_cases`) and at Triton
interpreter sizes (:func:`tiny_cases`); :mod:`delta_attn.bench.check` runs them against the float64 oracle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..sparse import SparseMethod, resolve_sparse_method


class FrozenMethod(SparseMethod):
    """A sparse method that returns one pattern planned beforehand (absolute positions)."""

    def __init__(self, pattern, name: str) -> None:
        self.pattern = pattern
        self.name = name

    def plan(self, q, k, config, *, q_start, scale):
        return self.pattern

    def row_key_counts(self, config, positions):
        """The planned base's counts: λ = auto leaves out the anchors they say are exact (§13)."""
        return resolve_sparse_method(self.name).row_key_counts(config, positions)


@dataclass
class Case:
    name: str
    b: int = 1
    hq: int = 4
    hkv: int = 1
    n: int = 1000
    d: int = 128
    dtype: str = "bf16"
    cfg: dict = field(default_factory=dict)
    chunks: tuple = ()  # chunk lengths of a chunked prefill (empty: one call)
    layout: str = ""  # "hf": q/k/v in a model's (B, N, H, D) memory, seen as (B, H, N, D) (strided)


def gpu_cases() -> list[Case]:
    """Awkward shapes × modes × bases × interps, sized for one H200 (a few seconds in all)."""
    sw = dict(sink=16, window=256, gamma=64)
    c = [
        Case("delta-stream-g4", n=1000, cfg=sw),
        Case("delta-stream-big", hq=8, hkv=2, n=16411, cfg=dict(sink=128, window=2048, gamma=64)),
        Case("delta-d64-b2-mha", b=2, hq=3, hkv=3, n=777, d=64, cfg=sw),
        Case("delta-d80-g8", hq=8, hkv=1, n=1203, d=80, cfg=sw),
        Case("delta-g3-d128", hq=6, hkv=2, n=955, cfg=dict(sink=0, window=100, gamma=32)),
        Case("delta-gamma16", n=1100, cfg=dict(sink=4, window=300, gamma=16, tail=40)),
        Case("delta-gamma128", n=1500, cfg=dict(sink=4, window=300, gamma=128)),
        Case("delta-gamma48-unfused", n=1000, cfg=dict(sink=4, window=200, gamma=48)),
        Case("delta-gamma1", n=300, cfg=dict(sink=2, window=20, gamma=1, tail=0)),
        Case("delta-ema", n=1000, cfg=dict(sw, interp="ema", ema_beta=0.9)),
        Case("delta-abg", n=1000, cfg=dict(sw, interp="abg", abg_alpha=0.2)),
        Case("delta-linear", n=1000, cfg=dict(sw, interp="linear")),
        Case("sparse-stream", n=1000, cfg=dict(sw, mode="sparse")),
        Case("recompute-stream", n=1000, cfg=dict(sw, mode="recompute")),
        Case("dense-g4", n=1000, cfg=dict(mode="dense")),
        Case("dense-d80-mha", hq=2, hkv=2, n=700, d=80, cfg=dict(mode="dense")),
        Case("delta-block", n=1300, cfg=dict(gamma=64, sparse="block", block_size=300)),
        Case("delta-densebase", n=600, cfg=dict(gamma=64, sparse="dense")),
        Case(
            "delta-topk",
            hq=4,
            hkv=2,
            n=1500,
            cfg=dict(sink=8, window=128, gamma=64, sparse="topk", topk_block=64, topk_blocks=4),
        ),
        Case(
            "delta-topk-b48", n=1000, cfg=dict(sink=8, window=64, gamma=32, sparse="topk", topk_block=48, topk_blocks=3)
        ),
        Case(
            "delta-vs",
            hq=4,
            hkv=2,
            n=1500,
            cfg=dict(gamma=64, sparse="vertical_slash", vertical_size=40, slash_size=60, vs_last_q=64),
        ),
        Case("delta-maskmod", n=600, cfg=dict(gamma=64, sparse="strided")),
        Case("chunk-repeat", n=1500, chunks=(500, 433, 1, 566), cfg=sw),
        Case("chunk-ema", n=1500, chunks=(700, 1, 799), cfg=dict(sw, interp="abg")),
        Case("chunk-recompute-b2", b=2, n=1200, chunks=(613, 587), cfg=dict(sw, mode="recompute")),
        # K/V of a later chunk are views of a longer buffer (as PreallocatedCache hands them): strided, not contiguous
        Case("chunk-gqa-strided", hq=8, hkv=2, n=1500, chunks=(512, 488, 500), cfg=sw),
        Case(
            "chunk-vs",
            n=1200,
            chunks=(600, 600),
            cfg=dict(gamma=64, sparse="vertical_slash", vertical_size=30, slash_size=50),
        ),
        Case("prompt-longer", n=1000, chunks=(600, 250), cfg=dict(sw, tail=200)),
        Case("fp16-delta", n=1000, dtype="fp16", cfg=sw),
        Case("fp32-delta", n=700, d=64, dtype="fp32", cfg=sw),
        # Δ variants (docs/algorithm.md §13). λ="auto" and the extra-anchor choice are data-dependent: a
        # window below γ makes every anchor's Δ real (not rounding noise), and float32 keeps the kernel's
        # choices those of the float64 oracle
        Case("delta-scale0.5", n=1000, cfg=dict(sw, delta_scale=0.5)),
        Case("delta-scale0.5-abg", n=1000, cfg=dict(sw, interp="abg", delta_scale=0.5)),
        Case(
            "delta-auto", hq=4, hkv=2, n=1000, dtype="fp32", cfg=dict(sink=4, window=48, gamma=64, delta_scale="auto")
        ),
        Case(
            "delta-auto-ema",
            n=1000,
            dtype="fp32",
            cfg=dict(sink=4, window=48, gamma=64, interp="ema", delta_scale="auto"),
        ),
        Case(
            "delta-auto-global",
            b=2,
            n=1000,
            dtype="fp32",
            cfg=dict(sink=4, window=48, gamma=64, delta_scale="auto-global"),
        ),
        Case("delta-extra0.25", b=2, n=1300, dtype="fp32", cfg=dict(sink=4, window=48, gamma=64, extra_anchors=0.25)),
        Case(
            "delta-extra0.25-linear-auto",
            n=1300,
            dtype="fp32",
            cfg=dict(sink=4, window=48, gamma=64, interp="linear", extra_anchors=0.25, delta_scale="auto"),
        ),
        Case(
            "chunk-auto",
            n=1500,
            dtype="fp32",
            chunks=(500, 433, 1, 566),
            cfg=dict(sink=4, window=48, gamma=64, delta_scale="auto"),
        ),
        Case("chunk-scale0.5-abg", n=1500, chunks=(700, 1, 799), cfg=dict(sw, interp="abg", delta_scale=0.5)),
        # λ in the fused epilogue: float λ (chunked too), "auto" through the anchor-row Õ pass on GQA, head
        # dim 80, batch 2, the anchor-block base, and top-k (index lists: the unfused path)
        Case("chunk-scale0.3-gqa", hq=8, hkv=2, n=1500, chunks=(500, 433, 1, 566), cfg=dict(sw, delta_scale=0.3)),
        Case(
            "delta-auto-d80-g8",
            hq=8,
            hkv=1,
            n=1203,
            d=80,
            dtype="fp32",
            cfg=dict(sink=4, window=48, gamma=64, delta_scale="auto"),
        ),
        Case(
            "delta-auto-b2-gqa",
            b=2,
            hq=8,
            hkv=2,
            n=1500,
            cfg=dict(sink=4, window=48, gamma=64, delta_scale="auto"),
        ),
        Case(
            "delta-auto-block",
            n=1300,
            dtype="fp32",
            cfg=dict(gamma=64, sparse="block", block_size=300, delta_scale="auto"),
        ),
        Case(
            "delta-auto-topk",
            hq=4,
            hkv=2,
            n=1500,
            dtype="fp32",
            cfg=dict(sink=8, window=48, gamma=64, sparse="topk", topk_block=64, topk_blocks=4, delta_scale="auto"),
        ),
        Case("delta-hf-layout", hq=8, hkv=2, n=2000, cfg=sw, layout="hf"),
        Case(
            "chunk-hf-layout-auto",
            hq=8,
            hkv=2,
            n=1500,
            chunks=(700, 800),
            dtype="fp32",  # auto: a window below γ keeps every anchor's Δ real (not rounding noise), as above
            cfg=dict(sink=4, window=48, gamma=64, delta_scale="auto"),
            layout="hf",
        ),
        Case(
            "chunk-auto-gqa",
            hq=8,
            hkv=2,
            n=1500,
            dtype="fp32",
            chunks=(512, 488, 500),
            cfg=dict(sink=4, window=48, gamma=64, delta_scale="auto"),
        ),
        # auto-decay through the fused λ kernels: a chunk inside a block (carried Δ) and one on a boundary, d 64
        Case(
            "chunk-auto-decay-gqa",
            b=2,
            hq=8,
            hkv=2,
            n=1400,
            d=64,
            dtype="fp32",
            chunks=(480, 288, 632),  # GPU: carried Δ, then a block boundary; tiny (÷10, γ 8): the reverse
            cfg=dict(sink=4, window=48, gamma=64, delta_scale="auto-decay"),
        ),
    ]
    return c


def tiny_cases() -> list[Case]:
    """Small versions for Triton's CPU interpreter (float32 and float16; no bf16 on numpy)."""
    out = []
    for c in gpu_cases():
        if c.name in ("delta-stream-big",):
            continue
        cfg = dict(c.cfg)
        for key in ("window", "block_size"):
            if key in cfg:
                cfg[key] = max(1, cfg[key] // 10)
        if cfg.get("sparse") == "topk":
            cfg["topk_block"] = max(4, cfg["topk_block"] // 8)
        if cfg.get("sparse") == "vertical_slash":
            cfg.update(vertical_size=5, slash_size=8, vs_last_q=8)
        if "gamma" in cfg and cfg["gamma"] >= 32:
            cfg["gamma"] //= 8
        if "tail" in cfg and cfg["tail"]:
            cfg["tail"] = max(1, cfg["tail"] // 10)
        elif "gamma" in cfg or cfg.get("mode") in (None, "delta", "recompute"):
            cfg.setdefault("tail", 8)
        n = max(20, c.n // 10)
        chunks = tuple(max(1, x // 10) for x in c.chunks)
        if chunks and sum(c.chunks) == c.n:
            chunks = chunks[:-1] + (n - sum(chunks[:-1]),)
        hq = min(c.hq, 4)
        hkv = c.hkv if hq % c.hkv == 0 else 1
        d = 24 if c.d == 80 else min(c.d, 32)
        out.append(Case(c.name, c.b, hq, hkv, n, d, "fp16" if c.dtype == "fp16" else "fp32", cfg, chunks, c.layout))
    return out
