"""Where backend="fa4"'s time goes at 128K on one Llama-3-8B layer: device time per kernel (torch.profiler) and the
host time a call spends before returning (enqueue), against the Triton backend. Prints a table last.

``python scripts/gpu_calls/fa4_profile.py OUT_DIR [N] [epi]``: with ``epi`` also the Δ add in FA4's epilogue."""

from __future__ import annotations

import json
import math
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from delta_attn.config import DeltaConfig
from delta_attn.kernels import triton_prefill
from delta_attn.kernels.fa4_prefill import Passes, fa4_prefill
from delta_attn.kernels.prefill import ensure_allocator

out_dir = sys.argv[1] if len(sys.argv) > 1 else "."
n = int(sys.argv[2]) if len(sys.argv) > 2 else 131072
B, HQ, HKV, D = 1, 32, 8, 128
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (
    torch.randn(B, n, h, D, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2) for h in (HQ, HKV, HKV)
)
ensure_allocator()
cfg = DeltaConfig(sink=128, window=2048, gamma=64, sparse="streaming")
scale = 1 / math.sqrt(D)
report = {}
for name, fn in [
    ("fa4", lambda: fa4_prefill(q, k, v, cfg, scale=scale, prompt_len=n, passes=Passes(fused_add=False))),
    # the Δ add in FA4's epilogue (eleventh session), where the wrapper applies
    *(
        [("fa4-epi", lambda: fa4_prefill(q, k, v, cfg, scale=scale, prompt_len=n, passes=Passes(fused_add=True)))]
        if "epi" in sys.argv[3:]
        else []
    ),
    ("triton", lambda: triton_prefill(q, k, v, cfg, scale=scale, prompt_len=n)),
]:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    enq = []
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        enq.append((time.perf_counter() - t0) * 1e3)  # host time until the call returns (GPU still working)
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0:
            rows.append((e.key[:90], e.count // 5, e.self_device_time_total / 5 / 1e3))
    rows.sort(key=lambda r: -r[2])
    report[name] = dict(enqueue_ms=sorted(enq), kernels=rows[:14], device_ms=sum(r[2] for r in rows))
    print(
        f"== {name}: host time per call (enqueue, ms) {', '.join(f'{x:.2f}' for x in sorted(enq))}; "
        f"device time per call {report[name]['device_ms']:.2f} ms"
    )
    for key, cnt, ms in rows[:14]:
        print(f"   {ms:8.3f} ms  x{cnt:<3} {key}")
json.dump(report, open(f"{out_dir}/fa4_profile.json", "w"), indent=1)
