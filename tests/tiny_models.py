"""The tiny random Llama the HF-level tests share (a helper module, not a test file)."""

from __future__ import annotations

VOCAB = 256


def tiny_llama_kwargs(**changes) -> dict:
    """``LlamaConfig`` keyword arguments of a 2-layer, 4-head (2 KV heads), d=16 model; ``changes`` override."""
    return (
        dict(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        | changes
    )
