"""Prefill time on the CPU (the PyTorch reference path): dense vs Δ settings on one ~3.4K-token prompt.

    OMP_WAIT_POLICY=PASSIVE python scripts/cpu_prefill.py [TOKENS] [REPEATS]

The bundled SmolLM2-135M-Instruct prefills the first TOKENS tokens (default 3400) of README.md (three
times over) once per setting, settings interleaved, REPEATS rounds (default 2). It prints the wall time and
the process CPU time of each prefill (on shared cores the CPU time is the fairer comparison), then the
medians. The README's CPU paragraph quotes its output.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

import delta_attn
from delta_attn import DeltaConfig
from delta_attn.generation import prefill
from delta_attn.models import load_model

SETTINGS = {
    "dense": DeltaConfig(mode="dense"),
    "delta sink 128 + window 2048, gamma 64 (generate/serve defaults)": DeltaConfig(window=2048, sink=128, gamma=64),
    "delta sink 64 + window 256, gamma 64 (demo defaults)": DeltaConfig(window=256, sink=64, gamma=64),
    "delta sink 32 + window 128, gamma 128": DeltaConfig(window=128, sink=32, gamma=128, tail=128),
}


def main() -> None:
    tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 3400
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    model, tok = load_model(device="cpu")
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8") * 3
    ids = tok(text)["input_ids"][:tokens]
    wall: dict[str, list[float]] = {name: [] for name in SETTINGS}
    cpu: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for round_ in range(repeats):
        for name, config in SETTINGS.items():
            delta_attn.enable(model, config)
            t, c = time.perf_counter(), time.process_time()
            prefill(model, [ids])
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
            print(f"round {round_}: {name}: {wall[name][-1]:.2f} s wall, {cpu[name][-1]:.2f} s CPU", flush=True)
    print(f"\n{len(ids)} prompt tokens, {torch.get_num_threads()} torch threads; medians of {repeats}:")
    for name in SETTINGS:
        print(f"  {name:66s} {statistics.median(wall[name]):7.2f} s wall  {statistics.median(cpu[name]):7.2f} s CPU")


if __name__ == "__main__":
    main()
