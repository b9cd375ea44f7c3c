"""The shape of a model (layers, widths, heads, vocabulary) read without loading its weights.

What the GPU-time model of ``delta-attn eval plan`` (:mod:`delta_attn.eval.plan`) needs to count FLOPs and
bytes. Sources, cheapest first:

* a **named model** (:data:`~delta_attn.models.registry.NAMED_MODELS`): the static :class:`ModelShape` of its
  registry record, so a model that is not downloaded yet (a 1 GB Qwen file) can still be planned for;
* a **``.gguf`` file**: its header (``<arch>.block_count``, ``.embedding_length``, ``.attention.head_count``
  ...), read by :func:`delta_attn.models.read_gguf_metadata` without the ``gguf`` package and without
  decoding the vocabulary (only its length is counted when ``<arch>.vocab_size`` is absent);
* a **Hugging Face folder**: its ``config.json`` (the ``text_config`` of a multimodal one).

Only dense decoder layers with a gated MLP (Llama, Qwen2, Mistral ...: three FFN matrices) are counted;
a mixture-of-experts config is refused with a clear error rather than mis-counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide a decoder's prefill FLOPs and decode bytes."""

    layers: int
    hidden: int
    heads: int  # query heads
    kv_heads: int
    head_dim: int
    ffn: int  # intermediate size of the gated MLP
    vocab: int

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model shape: {name} must be a positive int, got {value!r}")
        if self.heads % self.kv_heads:
            raise ValueError(f"model shape: {self.heads} query heads are not a multiple of {self.kv_heads} KV heads")

    @property
    def params_nonemb(self) -> int:
        """Weights of the decoder layers (q, k, v, o projections and the three MLP matrices; norms and biases,
        < 0.1 %, left out): each multiplies every token once, 2 FLOPs per weight."""
        attn = 2 * self.hidden * self.heads * self.head_dim + 2 * self.hidden * self.kv_heads * self.head_dim
        return self.layers * (attn + 3 * self.hidden * self.ffn)

    @property
    def output_params(self) -> int:
        """The output projection (vocab × hidden; read in full by every decode step, tied or not)."""
        return self.vocab * self.hidden

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """K and V of one token over all layers (bf16 by default)."""
        return self.layers * 2 * self.kv_heads * self.head_dim * bytes_per_value

    def weight_bytes(self, bytes_per_value: int = 2) -> int:
        """Weights one decode step reads: the layers plus the output projection (bf16 by default)."""
        return (self.params_nonemb + self.output_params) * bytes_per_value

    def describe(self) -> str:
        return (
            f"{self.layers} layers, hidden {self.hidden}, {self.heads} query / {self.kv_heads} KV heads × "
            f"{self.head_dim}, FFN {self.ffn}, vocab {self.vocab} ({self.params_nonemb / 1e6:.0f}M layer weights)"
        )


def shape_from_hf_config(config: dict, where: str = "config.json") -> ModelShape:
    """The :class:`ModelShape` of a Hugging Face ``config.json`` (already parsed); ``where`` names it in errors."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config

    def get(*keys, default=None):
        for k in keys:
            value = text.get(k, config.get(k))
            if value is not None:
                return value
        return default

    if get("num_experts", "num_local_experts", "n_routed_experts"):
        raise ValueError(f"{where}: a mixture-of-experts model; the cost model counts dense MLPs only")
    needed = {
        "num_hidden_layers": get("num_hidden_layers", "n_layer", "num_layers"),
        "hidden_size": get("hidden_size", "n_embd", "d_model"),
        "num_attention_heads": get("num_attention_heads", "n_head"),
        "intermediate_size": get("intermediate_size", "n_inner", "ffn_dim"),
        "vocab_size": get("vocab_size"),
    }
    missing = [k for k, v in needed.items() if not isinstance(v, int)]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}: cannot read the model's shape")
    heads = needed["num_attention_heads"]
    return ModelShape(
        layers=needed["num_hidden_layers"],
        hidden=needed["hidden_size"],
        heads=heads,
        kv_heads=get("num_key_value_heads", default=heads),
        head_dim=get("head_dim", default=needed["hidden_size"] // heads),
        ffn=needed["intermediate_size"],
        vocab=needed["vocab_size"],
    )


def shape_from_gguf(path: str | Path) -> ModelShape:
    """The :class:`ModelShape` of a GGUF file from its header (no weights, no ``gguf`` package needed)."""
    from . import read_gguf_metadata

    arch = read_gguf_metadata(path, ["general.architecture"]).get("general.architecture")
    if not isinstance(arch, str):
        raise ValueError(f"{path}: GGUF metadata lacks general.architecture")
    keys = {
        "layers": f"{arch}.block_count",
        "hidden": f"{arch}.embedding_length",
        "heads": f"{arch}.attention.head_count",
        "ffn": f"{arch}.feed_forward_length",
    }
    optional = [f"{arch}.attention.head_count_kv", f"{arch}.attention.key_length", f"{arch}.vocab_size"]
    if read_gguf_metadata(path, [f"{arch}.expert_count"]).get(f"{arch}.expert_count"):
        raise ValueError(f"{path}: a mixture-of-experts model; the cost model counts dense MLPs only")
    meta = read_gguf_metadata(path, [*keys.values(), *optional])
    missing = [k for k in keys.values() if not isinstance(meta.get(k), int)]
    if missing:
        raise ValueError(f"{path}: GGUF metadata lacks {', '.join(missing)} (per-layer head counts are not supported)")
    vocab = meta.get(f"{arch}.vocab_size")
    if not isinstance(vocab, int):
        vocab = read_gguf_metadata(path, ["tokenizer.ggml.tokens"], array_lengths=True).get("tokenizer.ggml.tokens")
    if not isinstance(vocab, int):
        raise ValueError(f"{path}: GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
    heads, hidden = meta[keys["heads"]], meta[keys["hidden"]]
    return ModelShape(
        layers=meta[keys["layers"]],
        hidden=hidden,
        heads=heads,
        kv_heads=meta.get(f"{arch}.attention.head_count_kv", heads),
        head_dim=meta.get(f"{arch}.attention.key_length", hidden // heads),
        ffn=meta[keys["ffn"]],
        vocab=vocab,
    )


def model_shape(model: str | Path | None = None) -> ModelShape:
    """The shape of ``--model NAME|PATH`` (None: the default model) without loading weights.

    A named model's shape is its registry record's (the file need not be on this machine); a ``.gguf``
    file's comes from its header, a Hugging Face folder's from ``config.json``. Raises ``ValueError`` naming
    the problem (unknown name, missing file, header or config without the sizes).
    """
    from .registry import DEFAULT_MODEL, NAMED_MODELS, check_spec

    text = DEFAULT_MODEL if model is None else str(model)
    check_spec(text)
    named = NAMED_MODELS.get(text)
    if named is not None:
        return named.shape
    path = Path(text).expanduser()
    if path.is_file():
        return shape_from_gguf(path)
    config = path / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{config} does not load ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{config} is not a JSON object")
    return shape_from_hf_config(data, str(config))
