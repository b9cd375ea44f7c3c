"""Which model ``delta-attn serve`` runs: a named model (default SmolLM2), a GGUF file or a local Hugging Face folder.

:func:`inspect_model` reads only headers and configs (what the command line checks its options
against before anything heavy happens); :func:`load_model` loads the weights. Both go through
:mod:`delta_attn.models`, offline: a GGUF is de-quantised once, then read from its cache; a folder is read
with ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cli_options import UsageError


@dataclass(frozen=True)
class ModelSource:
    """A model found on disk, not loaded yet."""

    path: Path  # the GGUF file or the Hugging Face folder
    is_gguf: bool
    name: str  # what clients call it
    context_length: int
    num_layers: int


def inspect_model(model: str | Path | None, name: str | None = None) -> ModelSource:
    """Describe ``model``: a name of :mod:`delta_attn.models`, a GGUF file or a folder with ``config.json``
    (None: the default, SmolLM2-135M-Instruct), from its header or config alone."""
    from ..models import ModelMissingError, model_info, resolve

    try:
        ref = resolve(str(model) if model is not None else None)
        info = model_info(ref)
    except ModelMissingError as exc:
        raise UsageError(f"MODEL {model}: {exc}") from None
    default_name = Path(info.file).stem if ref.is_gguf else ref.path.name
    return ModelSource(ref.path, ref.is_gguf, name or default_name, info.context_length, info.num_layers)


def load_model(source: ModelSource, *, device: str | None, dtype: str | None):
    """``(model, tokenizer)`` of ``source`` in eval mode on ``device`` (default CUDA if available, else CPU).

    ``dtype`` (a torch dtype name) defaults to bfloat16 on CUDA and float32 on CPU.
    """
    import torch

    from .. import models

    torch_dtype = getattr(torch, dtype) if dtype else None
    model, tokenizer = models.load_model(source.path, device=device, dtype=torch_dtype)
    # the reply is decoded a few tokens at a time (serve.text): spaces must not be "cleaned up" between pieces
    tokenizer.clean_up_tokenization_spaces = False
    return model.eval(), tokenizer
