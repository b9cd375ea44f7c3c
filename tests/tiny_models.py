"""The tiny random models and token ids the HF-level tests share (a helper module, not a test file)."""

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


def tiny_llama(seed: int = 0, **changes):
    """A random-weight tiny Llama (:func:`tiny_llama_kwargs` with ``changes``) on the CPU, SDPA attention, eval mode;
    the weights are drawn from ``seed``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(
        LlamaConfig(**tiny_llama_kwargs(**changes)), attn_implementation="sdpa"
    ).eval()


def rand_ids(*shape, seed: int = 1, vocab: int = VOCAB):
    """Random token ids of ``shape`` in [3, vocab) (above the special ids), reproducible from ``seed``."""
    import torch

    return torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(seed))


def continue_greedily(model, ids, prefilled, new_tokens: int):
    """``model.generate`` continuing ``ids`` (1, N) after a prefill (:class:`delta_attn.PrefillOutput`): its
    argmax token, then ``new_tokens`` greedy tokens over the prefilled cache; returns every id (1, N + 1 + new)."""
    import torch

    nxt = prefilled.logits.argmax(-1, keepdim=True)
    n = ids.shape[1]
    with torch.no_grad():
        return model.generate(
            input_ids=torch.cat([ids, nxt], 1),
            attention_mask=torch.ones(1, n + 1, dtype=torch.long),
            past_key_values=prefilled.past_key_values,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
        )
