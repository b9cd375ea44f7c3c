"""Issue 16, tenth session: the two FA4 passes of Δ, before and after this session's changes, one Llama-3-8B layer
(bf16, 32 query / 8 KV heads, head dim 128, sink 128 + window 2048, γ 64) at 128K on one GPU. Times are CUDA-event
medians of the same run (so only the ratios between rows are claims):

  Õ    mask_mod (before) | native window, full tiles unmasked (after) | FA4's native window, no sink, no lists
  D    FA4 pack_gqa on per-128-row lists (before) | rows (anchor, head) packed here (anchor_rows(pack_rows=True),
       the default while this ran; measured slower, so the default went back to FA4's pack_gqa) | unpacked
  FA4 dense causal ÷ 64 (the share of dense Δ's anchors are)

and the largest |difference| between before and after (both are checked against float64 in tests/test_fa4_tiles.py).
Writes $1/fa4_native_probe.json; prints a table last."""

from __future__ import annotations

import json
import math
import sys

import torch

from delta_attn.bench.layer import time_cuda
from delta_attn.kernels import fa4

out_dir = sys.argv[1] if len(sys.argv) > 1 else "."
n = int(sys.argv[2]) if len(sys.argv) > 2 else 131072
B, HQ, HKV, D, SINK, WINDOW, GAMMA = 1, 32, 8, 128, 128, 2048, 64
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(B, n, h, D, device="cuda", dtype=torch.bfloat16, generator=g) for h in (HQ, HKV, HKV))
scale = 1 / math.sqrt(D)
qa = q[:, 0::GAMMA]
n_a = qa.shape[1]


def old_anchors():  # the ninth session's call: FA4's pack_gqa, lists per 128 unpacked rows
    lists = fa4.cached_tile_lists(n_a, n, start=0, step=GAMMA, sink=0, window=fa4._INF, device="cuda")
    return fa4._run(qa, k, v, lists, scale, True, mask_mod=fa4._strided_causal_mask(), scalars=fa4._int32s(0, GAMMA))


rows = {
    "O mask_mod (before)": lambda: fa4.sparse_base(q, k, v, sink=SINK, window=WINDOW, scale=scale, native=False),
    "O native window (after)": lambda: fa4.sparse_base(q, k, v, sink=SINK, window=WINDOW, scale=scale, native=True),
    "O FA4 local, no sink, no lists": lambda: fa4.plain_attention(q, k, v, scale, window=(WINDOW - 1, 0)),
    "D FA4 pack_gqa (before)": old_anchors,
    "D packed rows (after)": lambda: fa4.anchor_rows(qa, k, v, start=0, step=GAMMA, scale=scale, pack_rows=True),
    "D unpacked": lambda: fa4.anchor_rows(qa, k, v, start=0, step=GAMMA, scale=scale, pack_gqa=False),
    "FA4 dense causal": lambda: fa4.plain_attention(q, k, v, scale, causal=True),
}
report = {"n": n, "gpu": torch.cuda.get_device_name(), "ms": {}}
for name, fn in rows.items():
    report["ms"][name] = time_cuda(fn, warmup=3, reps=5 if "dense" in name else 15, budget_s=10.0)["ms"]
    print(f"{name:34s} {report['ms'][name]:9.3f} ms", flush=True)
diff_o = (rows["O mask_mod (before)"]().float() - rows["O native window (after)"]().float()).abs().max().item()
diff_d = (old_anchors().float() - rows["D packed rows (after)"]().float()).abs().max().item()
report["max_abs_diff"] = {"O": diff_o, "D": diff_d}
json.dump(report, open(f"{out_dir}/fa4_native_probe.json", "w"), indent=1)
ms = report["ms"]
print(f"\n| {n // 1024}K, {report['gpu']} | ms | ratio |\n|---|---:|---:|")
print(
    f"| Õ mask_mod → native | {ms['O mask_mod (before)']:.2f} → {ms['O native window (after)']:.2f} | "
    f"{ms['O mask_mod (before)'] / ms['O native window (after)']:.3f} |"
)
print(f"| Õ FA4 local without sink (floor) | {ms['O FA4 local, no sink, no lists']:.2f} | |")
print(
    f"| D pack_gqa → packed rows | {ms['D FA4 pack_gqa (before)']:.2f} → {ms['D packed rows (after)']:.2f} | "
    f"{ms['D FA4 pack_gqa (before)'] / ms['D packed rows (after)']:.3f} |"
)
print(f"| D unpacked | {ms['D unpacked']:.2f} | |")
print(f"| FA4 dense causal ÷ 64 | {ms['FA4 dense causal'] / 64:.2f} | |")
print(f"| max abs diff before/after: Õ {diff_o:.2e}, D {diff_d:.2e} | | |")
