"""Check and time context-parallel Δ prefill on N GPUs (or CPU processes): run under torchrun.

    torchrun --standalone --nproc-per-node 2 -m delta_attn.distributed.check --out results/
    python -m delta_attn.distributed.check                 # world size 1 (no torchrun needed)
    torchrun --standalone --nproc-per-node 2 -m delta_attn.distributed.check --dry-run   # CPU + gloo, tiny

1. **Equivalence**: for every static base × causal interpolation × γ ∈ {1, 16, 64}, and a shard length
   that splits γ-blocks, windows and the tail, :func:`cp_delta_attention` on each rank's shard vs
   :func:`delta_attn.delta_attention` on the whole sequence (computed on every rank); max abs error.
2. **Timing** of one attention layer (Llama-3-8B shape: 32 query / 8 KV heads, head dim 128, bf16,
   streaming W=2048, sink 128, γ=64) for each length: CP prefill (slowest rank, K/V gather included,
   and the gather alone) vs single-GPU ``delta_attention`` on rank 0. Lengths whose CP memory
   estimate does not fit on every rank are skipped (all ranks agree first, so none waits alone).

With world size 1 the "CP" column is the single-GPU call plus the CP bookkeeping (no speed-up is
possible; it shows the overhead). Prints a table on rank 0 and writes ``cp_check.json`` to ``--out``
(default ``$OUT`` or the current directory). Exit status 1 when an equivalence fails.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from ..config import DeltaConfig
from ..ops import delta_attention
from . import cp_delta_attention, gather_sequence, shard_bounds

GPU_LENGTHS = [131072, 262144, 524288, 1048576]
DRY_LENGTHS = [512, 1024]
BASES = ("streaming", "block", "dense")
INTERPS = ("repeat", "ema", "abg")
GAMMAS = (1, 16, 64)


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m delta_attn.distributed.check", description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU + gloo, tiny sizes (exercises the same code path)")
    p.add_argument("--lengths", default=None, help="comma-separated sequence lengths to time")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per length (after one warm-up)")
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="directory for cp_check.json")
    p.add_argument("--skip-timing", action="store_true")
    args = p.parse_args(argv)
    try:
        lengths = DRY_LENGTHS if args.dry_run else GPU_LENGTHS
        if args.lengths:
            lengths = [int(x) for x in args.lengths.split(",")]
        if any(n < 1 for n in lengths) or args.repeats < 1:
            raise ValueError
    except ValueError:
        p.error(f"--lengths must be positive integers separated by commas, --repeats >= 1; got {args.lengths!r}")
    args.lengths = lengths
    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device: run with --dry-run for the CPU + gloo path")
    return args


def _init(dry_run: bool) -> torch.device:
    if "RANK" not in os.environ:  # plain `python -m`: a world of one
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if dry_run:
        dist.init_process_group("gloo", timeout=timedelta(seconds=120))
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", timeout=timedelta(seconds=600), device_id=device)
    return device


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_equivalence(device, dry_run: bool) -> list[dict]:
    """Every base × interp × γ (and two dtypes on GPU): max |CP − single| of this rank's rows, max over ranks."""
    rank, world = dist.get_rank(), dist.get_world_size()
    n, heads, d = (203, (4, 2), 16) if dry_run else (12_345, (8, 2), 128)
    window, sink, tail = (24, 3, 40) if dry_run else (1024, 64, 300)
    dtypes = [(torch.float64, 1e-10)] if dry_run else [(torch.bfloat16, 5e-2), (torch.float32, 5e-3)]
    rows = []
    for dtype, tol in dtypes:
        for base in BASES:
            for interp in INTERPS:
                for gamma in GAMMAS:
                    cfg = DeltaConfig(
                        sparse=base,
                        window=window,
                        sink=sink,
                        block_size=4 * window,
                        gamma=gamma,
                        tail=tail,
                        interp=interp,
                    )
                    gen = torch.Generator(device="cpu").manual_seed(len(rows))
                    q, k, v = (
                        torch.randn(1, h, n, d, generator=gen).to(device, dtype) for h in (heads[0], heads[1], heads[1])
                    )
                    ref = delta_attention(q, k, v, cfg)
                    lo, hi = shard_bounds(n, world, rank)
                    got = cp_delta_attention(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], cfg)
                    err = torch.tensor([(got.double() - ref[:, :, lo:hi].double()).abs().max().item()], device=device)
                    dist.all_reduce(err, op=dist.ReduceOp.MAX)
                    rows.append(
                        dict(
                            dtype=str(dtype).removeprefix("torch."),
                            base=base,
                            interp=interp,
                            gamma=gamma,
                            n=n,
                            max_err=err.item(),
                            tol=tol,
                            ok=err.item() <= tol,
                        )
                    )
    return rows


def _fits(n: int, world: int, device, heads, d, bytes_per: int) -> bool:
    if device.type != "cuda":
        return True
    shard = -(-n // world)
    need = (2 * heads[1] * n + 3 * heads[0] * shard) * d * bytes_per * 1.5  # gathered K/V, q/out/temp; margin
    ok = torch.tensor([int(need < torch.cuda.mem_get_info(device)[0])], device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # every rank agrees, so none enters a collective alone
    return bool(ok.item())


def time_layer(device, lengths, repeats: int, dry_run: bool) -> list[dict]:
    rank, world = dist.get_rank(), dist.get_world_size()
    heads, d = ((4, 2), 16) if dry_run else ((32, 8), 128)
    dtype = torch.float32 if dry_run else torch.bfloat16
    cfg = DeltaConfig(window=64, sink=8, gamma=16) if dry_run else DeltaConfig(window=2048, sink=128, gamma=64)
    rows = []
    for n in lengths:
        row = dict(n=n, world=world, cp_s=None, gather_s=None, single_s=None)
        rows.append(row)
        try:
            lo, hi = shard_bounds(n, world, rank)
        except ValueError:
            row["skipped"] = "too short for the world size"
            continue
        if not _fits(n, world, device, heads, d, 2 if dtype == torch.bfloat16 else 4):
            row["skipped"] = "CP does not fit in GPU memory"
            continue
        gen = torch.Generator(device="cpu").manual_seed(1000 + rank)
        q, k, v = (
            torch.randn(1, h, hi - lo, d, generator=gen).to(device, dtype) for h in (heads[0], heads[1], heads[1])
        )
        lengths_all = [shard_bounds(n, world, r)[1] - shard_bounds(n, world, r)[0] for r in range(world)]
        cp_times, gather_times = [], []
        for i in range(repeats + 1):
            dist.barrier()
            _sync(device)
            t0 = time.perf_counter()
            gather_sequence(k, lengths_all)
            gather_sequence(v, lengths_all)
            _sync(device)
            t1 = time.perf_counter()
            dist.barrier()
            _sync(device)
            t2 = time.perf_counter()
            cp_delta_attention(q, k, v, cfg)
            _sync(device)
            t3 = time.perf_counter()
            slowest = torch.tensor([t1 - t0, t3 - t2], device=device, dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            if i:  # the first run is the warm-up (kernel compilation)
                gather_times.append(slowest[0].item())
                cp_times.append(slowest[1].item())
        row.update(cp_s=statistics.median(cp_times), gather_s=statistics.median(gather_times))
        del q, k, v
        if rank == 0:
            row["single_s"] = _time_single(n, heads, d, dtype, cfg, device, repeats)
        dist.barrier()
    return rows


def _time_single(n, heads, d, dtype, cfg, device, repeats) -> float | str:
    try:
        gen = torch.Generator(device="cpu").manual_seed(7)
        q, k, v = (torch.randn(1, h, n, d, generator=gen).to(device, dtype) for h in (heads[0], heads[1], heads[1]))
        times = []
        for i in range(repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            delta_attention(q, k, v, cfg)
            _sync(device)
            if i:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)
    except torch.cuda.OutOfMemoryError:
        return "OOM"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _fmt(x) -> str:
    return f"{x * 1000:10.1f}" if isinstance(x, float) else f"{str(x):>10}"


def main(argv=None) -> int:
    args = _parse(argv)
    device = _init(args.dry_run)
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        equivalence = check_equivalence(device, args.dry_run)
        timing = [] if args.skip_timing else time_layer(device, args.lengths, args.repeats, args.dry_run)
    finally:
        dist.barrier()
    if rank == 0:
        failed = [r for r in equivalence if not r["ok"]]
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"context-parallel Δ prefill on {world} × {name} ({dist.get_backend()})")
        if world == 1:
            print("world size 1: 'CP' is the single-device call plus the CP bookkeeping (no speed-up possible)")
        worst = max(equivalence, key=lambda r: r["max_err"] / r["tol"])
        print(
            f"equivalence: {len(equivalence) - len(failed)}/{len(equivalence)} cases within tolerance "
            f"(worst {worst['max_err']:.2e} for {worst['dtype']} {worst['base']}/{worst['interp']}/γ={worst['gamma']})"
        )
        for r in failed:
            print(f"  FAILED {r}")
        if timing:
            print(f"{'tokens':>9} {'CP ms':>10} {'gather ms':>10} {'single ms':>10}  speed-up")
            for r in timing:
                speed = (
                    r["single_s"] / r["cp_s"] if all(isinstance(r[c], float) for c in ("cp_s", "single_s")) else None
                )
                note = f"{speed:6.2f}x" if speed else r.get("skipped", "")
                print(f"{r['n']:>9} {_fmt(r['cp_s'])} {_fmt(r['gather_s'])} {_fmt(r['single_s'])}  {note}")
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "cp_check.json")
        with open(path, "w") as f:
            json.dump(dict(world=world, device=name, equivalence=equivalence, timing=timing), f, indent=1)
        print(f"wrote {path}")
        status = 1 if failed else 0
    else:
        status = 0
    flag = torch.tensor([status], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    dist.destroy_process_group()
    return int(flag.item())


if __name__ == "__main__":
    sys.exit(main())
