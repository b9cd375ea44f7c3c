"""``python -m delta_attn.bench.profile`` on CPU (Triton's interpreter, tiny shapes): the code path of the
kernel-by-kernel profile and of the anchor-row tile sweep; on a GPU the same script gives the numbers in
BENCHMARKS.md."""

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_profile_cli_profiles_methods_and_sweeps_anchor_tiles(tmp_path):
    # the CPU base config leaves ``tail`` at its default (None), as the GPU run's does: the sweep counts anchors
    # with the config's tail rule (the first H100 run crashed on N − None)
    out = tmp_path / "prof.json"
    cmd = [
        sys.executable, "-m", "delta_attn.bench.profile", "--device", "cpu", "--length", "200", "--heads", "4,2",
        "--head-dim", "16", "--reps", "1", "--methods", "delta,delta_auto", "--anchor-tiles", "64:4,32:4,16:4",
        "--out", str(out),
    ]  # fmt: skip
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=SRC)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "delta_auto − delta:" in proc.stdout
    rec = json.loads(out.read_text())
    assert set(rec["results"]) == {"delta", "delta_auto"}
    assert all(r["kernels"] for r in rec["results"].values())
    tiles = rec["anchor_tiles"]
    assert [(t["BM"], t["num_warps"]) for t in tiles] == [(64, 4), (32, 4), (16, 4)]
    assert [t["default"] for t in tiles] == [True, False, False]  # float32's default config is BM 64, 4 warps
    assert all(t["ms"] > 0 for t in tiles)
    assert all(t["diff"] < 1e-5 for t in tiles[1:])  # the tiling changes the summation order only
