"""backend="fa4" kernels trace and compile for sm_90 on a machine without a GPU (where flash-attn-4 is installed;
CI does not install it, so there this skips like the GPU tests): the consumer wrapper of the native-window sparse
base, the sink + window mask_mod and the packed-anchor mask_mod (tests/fa4_compile_check.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from delta_attn.kernels import fa4

HERE = Path(__file__).parent


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn-4 is not installed")
def test_fa4_kernels_compile_for_sm90_without_a_gpu():
    if fa4._hooks() is None:
        pytest.skip(f"flash-attn-4 is not {fa4.WRAPPED_FA4}, the release the kernel wrappers patch")
    env = dict(os.environ, FLASH_ATTENTION_NUM_SMS="132", FLASH_ATTENTION_ARCH="sm_90", CUTE_DSL_ARCH="sm_90a")
    run = subprocess.run(
        [sys.executable, str(HERE / "fa4_compile_check.py")], env=env, capture_output=True, text=True, timeout=600
    )
    done = {line.split()[1] for line in run.stdout.splitlines() if line.startswith("FA4COMPILE ")}
    assert run.returncode == 0 and done == {
        "native-window",
        "native-window-block-add",
        "native-window-block-add-padded-head-dim",
        "sink-window-mask_mod-block-add",
        "sink-window-mask_mod",
        "packed-anchors",
        "private-cache",
    }, run.stdout[-2000:] + run.stderr[-4000:]
