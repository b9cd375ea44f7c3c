"""The shape of a model (layers, widths, heads, vocabulary) read without loading its weights.

What the GPU-time model of ``delta-attn eval plan`` (:mod:`delta_attn.eval.plan`) needs to count FLOPs and
bytes. Sources, cheapest first:

* a **named model** (:data:`~delta_attn.models.registry.NAMED_MODELS`): the static :class:`ModelShape` of its
  registry record, so a model that is not downloaded yet (a 1 GB Qwen file) can still be planned for;
* a **``.gguf`` file**: its header (``<arch>.block_count``, ``.embedding_length``, ``.attention.head_count``
  ...), read by :func:`delta_attn.models.read_gguf_metadata` without the ``gguf`` package and without
  decoding the vocabulary (only its length is counted when ``<arch>.vocab_size`` is absent):
  :func:`delta_attn.models.shape_from_gguf`;
* a **Hugging Face folder**: its ``config.json`` (the ``text_config`` of a multimodal one):
  :func:`shape_from_hf_config`.

:func:`delta_attn.models.model_shape` picks the source for a ``--model NAME|PATH``. This module imports
nothing of the package (the registry's records hold a :class:`ModelShape`).

Only dense decoder layers with a gated MLP (Llama, Qwen2, Mistral ...: three FFN matrices) are counted;
a mixture-of-experts config is refused with a clear error rather than mis-counted.
"""

from __future__ import annotations

from dataclasses import dataclass


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
