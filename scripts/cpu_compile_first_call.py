"""The first call at a new prompt length with compiled decoder layers, on the CPU, on a real model shape.

Reproduces, with real inductor (C++ code generation) instead of a GPU, what the H100 showed on 2026-12-08
(BENCHMARKS.md, twelfth session): layers compiled with ``dynamic=True`` and warmed up at as many tokens as the model
has hidden units (4,096 for the Llama-3-8B shape) compile again at the next length, because dynamo's duck sizing tied
the length to the hidden size. Three ways of compiling, each in a fresh process with its own inductor cache:

* ``stock``: ``layer.compile(dynamic=True)`` on every decoder layer (``nn.Module.compile``; the project before the
  fix);
* ``compile_layers``: :func:`delta_attn.compiled.compile_layers` (duck sizing off for the layers' calls), on its
  default backend (:class:`~delta_attn.compiled.SymbolicInt64Inductor`);
* ``compile_layers-stock``: the same on stock inductor (``backend="inductor-stock"``).

Each: random weights of the shape (``--layers`` of them, float32), dense attention (SDPA, eager inside the compiled
layers), a warm-up forward at ``--warmup`` tokens, then ``--reps`` + 1 forwards at ``--length`` tokens. Printed per
way: graphs compiled by the warm-up and added after it, the first call's time and the steady (fastest later) time.
Run from the repository root: ``OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/cpu_compile_first_call.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

WAYS = ("stock", "compile_layers", "compile_layers-stock")


def measure(way: str, shape: str, layers: int, warmup: int, length: int, reps: int) -> dict:
    import torch

    from delta_attn.bench.e2e import build_model
    from delta_attn.compiled import EAGER_SDPA, compile_layers, graphs_compiled

    model = build_model(shape, layers, max(warmup, length), "cpu", torch.float32, seed=0)
    if way == "stock":
        for layer in model.model.layers:
            layer.compile(dynamic=True)
    else:
        compile_layers(model, backend="inductor-stock" if way.endswith("-stock") else "inductor")
    model.set_attn_implementation(EAGER_SDPA)  # attention stays one eager SDPA call, as in `bench e2e --compile`
    gen = torch.Generator().manual_seed(1)

    def forward(n: int) -> float:
        ids = torch.randint(0, model.config.vocab_size, (1, n), generator=gen)
        t0 = time.perf_counter()
        with torch.no_grad():
            model(input_ids=ids, use_cache=True, logits_to_keep=1)
        return time.perf_counter() - t0

    warm_s = forward(warmup)
    graphs_warm = graphs_compiled()
    times = [forward(length) for _ in range(reps + 1)]
    return dict(
        way=way,
        warmup_s=warm_s,
        graphs_after_warmup=graphs_warm,
        graphs_added=graphs_compiled() - graphs_warm,
        first_s=times[0],
        steady_s=min(times[1:]),
        torch=torch.__version__,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="llama-3-8b", help="a bench e2e model shape (default llama-3-8b)")
    ap.add_argument("--layers", type=int, default=1, help="decoder layers kept (default 1)")
    ap.add_argument("--warmup", type=int, default=4096, help="warm-up tokens (default 4096, the 8B hidden size)")
    ap.add_argument("--length", type=int, default=4608, help="tokens of the timed calls (default 4608)")
    ap.add_argument("--reps", type=int, default=2, help="steady calls after the first (default 2)")
    ap.add_argument("--ways", default="stock,compile_layers", help="comma-separated, of: " + ", ".join(WAYS))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure this way in this process, print JSON
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, args.shape, args.layers, args.warmup, args.length, args.reps)))
        return 0
    rows = []
    for way in args.ways.split(","):
        if way not in WAYS:
            ap.error(f"unknown way {way!r}: use {', '.join(WAYS)}")
        with tempfile.TemporaryDirectory() as cache:  # nothing compiled by an earlier run is reused
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TORCH_LOGS="recompiles")
            cmd = [sys.executable, __file__, "--one", way, *sys.argv[1:]]
            print(f"== {way}: {' '.join(cmd[1:])}", flush=True)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        sys.stdout.write("".join(line + "\n" for line in proc.stderr.splitlines() if "guard" in line or " - " in line))
        found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not found:
            print(proc.stdout[-2000:], proc.stderr[-4000:])
            return 1
        rows.append(json.loads(found[-1][len("RESULT ") :]))
    print(
        f"\n{args.shape} shape, {args.layers} layer(s), float32, CPU; warm-up {args.warmup} tokens, then "
        f"{args.reps + 1} calls at {args.length}"
    )
    print("| way | warm-up s | graphs (warm-up) | graphs added | first call s | steady s | first ÷ steady |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['way']} | {r['warmup_s']:.1f} | {r['graphs_after_warmup']} | {r['graphs_added']} | "
            f"{r['first_s']:.2f} | {r['steady_s']:.2f} | {r['first_s'] / r['steady_s']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
