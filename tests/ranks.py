"""Run a function on W gloo ranks in fresh processes, with timeouts (a helper module for tests).

``run_ranks(fn, world, *args)`` spawns ``world`` processes; each joins a gloo group (file rendezvous,
collective timeout ``collective_timeout`` s), runs ``fn(rank, world, *args)`` and sends back its
result or its traceback. The parent waits at most ``timeout`` s, kills what is left, and raises
:class:`RankError` listing every rank's error (or that it hung) — a failing rank never hangs a test.
``fn`` must be importable by name (a module-level function), and its results picklable.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import time
import traceback
from datetime import timedelta

import torch.multiprocessing as mp


class RankError(AssertionError):
    """One or more ranks failed; ``errors`` maps rank -> traceback text (or 'no result ...')."""

    def __init__(self, errors: dict[int, str]):
        self.errors = errors
        parts = [f"--- rank {r} ---\n{text}" for r, text in sorted(errors.items())]
        super().__init__("ranks failed:\n" + "\n".join(parts))


def _rank_main(fn, rank: int, world: int, init_file: str, collective_timeout: float, results, args) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # W processes share the machine's cores
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=collective_timeout),
        )
        results.put((rank, "ok", fn(rank, world, *args)))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn, world: int, *args, timeout: float = 120.0, collective_timeout: float = 30.0) -> list:
    """``[fn(0, world, *args), …, fn(world - 1, world, *args)]`` run on ``world`` gloo ranks; raises RankError."""
    ctx = mp.get_context("spawn")
    tmp = tempfile.mkdtemp(prefix="delta_ranks_")
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_rank_main,
            args=(fn, r, world, os.path.join(tmp, "rendezvous"), collective_timeout, results, args),
            daemon=True,
        )
        for r in range(world)
    ]
    for p in procs:
        p.start()
    got: dict[int, tuple[str, object]] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(got) < world and time.monotonic() < deadline:
            try:  # read before joining: a child blocks on exit until its queued result is read
                rank, status, value = results.get(timeout=0.5)
                got[rank] = (status, value)
            except queue.Empty:
                if all(not p.is_alive() for p in procs) and results.empty():
                    break
    finally:
        for p in procs:
            p.join(timeout=max(0.0, min(5.0, deadline - time.monotonic())))
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)
    errors = {r: str(v) for r, (s, v) in got.items() if s == "error"}
    for r, p in enumerate(procs):
        if r not in got:
            errors[r] = f"no result within {timeout:.0f} s (exit code {p.exitcode}): hung or crashed"
    if errors:
        raise RankError(errors)
    return [got[r][1] for r in range(world)]
