"""The package root: the operator needs only torch and numpy; the Hugging Face names load on first use."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import delta_attn

# Packages the operator must not pull in (the [hf] and [eval] extras). tqdm is checked against what
# `import torch` loads by itself (torch imports tqdm when it is installed).
HEAVY = ("transformers", "accelerate", "scipy", "matplotlib", "gguf", "tqdm")


def run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter that imports this checkout of delta_attn; returns its JSON output."""
    src = os.path.dirname(os.path.dirname(delta_attn.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_operator_needs_only_torch_and_numpy():
    found = run_python(
        """
import json, sys
import numpy, torch
preloaded = set(sys.modules)
import delta_attn
from delta_attn import DeltaConfig, delta_attention
q, k = torch.randn(2, 4, 70, 16), torch.randn(2, 2, 70, 16)
out = delta_attention(q, k, k, DeltaConfig(window=8, sink=2, gamma=8, interp="ema"))
loaded = {name.split(".")[0] for name in set(sys.modules) - preloaded}
print(json.dumps({"loaded": sorted(loaded), "transformers": "transformers" in sys.modules, "shape": list(out.shape)}))
"""
    )
    assert found["shape"] == [2, 4, 70, 16]
    assert not found["transformers"]
    assert not set(HEAVY) & set(found["loaded"]), found["loaded"]


def test_hugging_face_names_load_and_register_on_first_use():
    found = run_python(
        """
import json, sys
import delta_attn
before = "transformers" in sys.modules
enable = delta_attn.enable
from delta_attn import PrefillOutput, chunked_prefill
from transformers import AttentionInterface
try:
    delta_attn.no_such_name
    missing = None
except AttributeError as exc:
    missing = str(exc)
print(json.dumps({"before": before, "registered": "delta" in AttentionInterface._global_mapping,
                  "enable": enable.__module__, "missing": missing}))
"""
    )
    assert not found["before"]
    assert found["registered"] and found["enable"] == "delta_attn.hf"
    assert "no attribute 'no_such_name'" in found["missing"]


def test_public_names():
    from delta_attn.backend import DeltaState

    assert set(delta_attn.__all__) >= {"DeltaConfig", "DeltaState", "delta_attention", "enable", "chunked_prefill"}
    assert delta_attn.DeltaState is DeltaState
    assert {"enable", "chunked_prefill", "delta_attention"} <= set(dir(delta_attn))


def test_builtin_sparse_names_match_the_registry():
    """config.BUILTIN_SPARSE_METHODS lets DeltaConfig validate built-in names without importing torch."""
    from delta_attn import sparse
    from delta_attn.config import BUILTIN_SPARSE_METHODS

    builtin_classes = (
        sparse.StreamingMethod,
        sparse.VerticalSlashMethod,
        sparse.BlockTopKMethod,
        sparse.BlockMethod,
        sparse.DenseMethod,
    )
    # other tests may register their own methods in this process: count only the built-in classes
    builtins = {
        name
        for name in sparse.available_sparse_methods()
        if type(sparse.resolve_sparse_method(name)) in builtin_classes
    }
    assert builtins == set(BUILTIN_SPARSE_METHODS)


def test_all_lists_every_lazy_name():
    import delta_attn

    assert set(delta_attn.__all__) == {"DeltaConfig", "__version__", *delta_attn._LAZY}
