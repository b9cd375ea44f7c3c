"""Chunked prefill through a transformers model: :func:`chunked_prefill` and its :class:`PrefillOutput`.

The model is switched to Δ attention first (:func:`delta_attn.enable`, :mod:`delta_attn.hf`); each chunk is
one forward whose attention calls read the prompt-wide context (:class:`~delta_attn.hf.PrefillState`: prompt
length, per-layer Δ state) that :mod:`delta_attn.hf` attaches to the model. :meth:`PrefillOutput.generate`
continues a prefill with the decode loop (:mod:`delta_attn.decoding`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from .compat import cache_argument, last_logits_only, left_padding_position_ids
from .decoding import GenerationResult, Prefilled, SamplingParams, decode
from .hf import DECODE_ROOM, PrefillState, delta_binding, derive_left_padding
from .kv_cache import PreallocatedCache


@dataclass
class PrefillOutput:
    """Result of :func:`chunked_prefill` (and of :func:`delta_attn.distributed.cp_prefill`).

    Continue it with :meth:`generate` — ``res.generate(max_new_tokens=32)`` — which decodes from the cache
    it holds: the prompt is never fed to the model again. (``model.generate(input_ids, past_key_values=
    res.past_key_values)`` does not do that: it prefills the prompt again on top of the cache, silently
    giving another answer.)

    past_key_values: the filled cache (every prompt position given so far).
    logits: (B, vocab) logits of the last position given (the next-token distribution once the prompt is complete).
    attention_mask: (B, cached length) the prompt's mask so far (ones if none was given), to extend while decoding.
    state: the :class:`PrefillState` (prompt length + per-layer :class:`~delta_attn.DeltaState`) to pass back as
        ``state=`` when more of the same prompt follows; updated in place by that call (copy it to fork).
    model: the model that wrote the cache (what :meth:`generate` decodes with); ``copy.deepcopy`` of a
        PrefillOutput copies everything else and shares the model.
    """

    past_key_values: Any
    logits: Tensor
    attention_mask: Tensor
    state: PrefillState
    model: Any = field(default=None, repr=False, compare=False)

    def __deepcopy__(self, memo: dict) -> PrefillOutput:
        import copy

        memo[id(self.model)] = self.model  # fork the cache and state, never the weights
        return PrefillOutput(
            copy.deepcopy(self.past_key_values, memo),
            copy.deepcopy(self.logits, memo),
            copy.deepcopy(self.attention_mask, memo),
            copy.deepcopy(self.state, memo),
            self.model,
        )

    def generate(
        self,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_token_ids: Iterable[int] | None = None,
        on_token: Callable[[int, int], bool] | None = None,
    ) -> GenerationResult:
        """Decode up to ``max_new_tokens`` tokens per sequence from this prefill (dense over the cache).

        The first token comes from :attr:`logits`, every later one from one decode step over the cache, so
        the result equals one-shot prefill + decoding token for token (greedy), at any chunk size. The
        cache grows by the decoded tokens: a PrefillOutput continues once (``copy.deepcopy(res).generate(...)``
        continues a copy, e.g. to sample several replies from one prefill).

        Args:
            max_new_tokens: at most this many tokens per sequence.
            temperature: 0 (default) = greedy; > 0 samples (with ``top_p``; ``seed`` seeds the sampler).
            stop_token_ids: tokens that end a sequence (not included in its tokens). Default: the model's
                ``generation_config.eos_token_id`` (as ``model.generate`` stops); ``()`` for none.
            on_token: ``(sequence index, token id) -> keep going?``, called for every generated token.
        Returns:
            :class:`delta_attn.generation.GenerationResult`: ``tokens`` (the new ids per sequence),
            ``finish_reasons``, timings.
        """

        if self.model is None:
            raise ValueError(
                "this PrefillOutput was built without its model: create it with delta_attn.chunked_prefill"
            )
        cached = self.past_key_values.get_seq_length()
        given = self.attention_mask.shape[1]
        if cached != given:
            raise ValueError(
                f"this PrefillOutput was continued already (its cache holds {cached} tokens, the prompt {given}): "
                "a prefill continues once; to continue it several times, copy.deepcopy(res).generate(...) each time"
            )
        if self.state.prompt_len > given:
            raise ValueError(
                f"the prompt is not complete: {given} of its {self.state.prompt_len} tokens are prefilled "
                "(prompt_len); pass the rest to chunked_prefill(model, rest, past_key_values=res.past_key_values, "
                "state=res.state) first"
            )
        if stop_token_ids is None:
            stop_token_ids = _eos_ids(self.model)
        params = SamplingParams(
            max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, stop_token_ids=frozenset(stop_token_ids)
        )
        start = Prefilled(self.past_key_values, self.logits, self.attention_mask)
        return decode(self.model, start, [params] * self.logits.shape[0], on_token=on_token)


def _eos_ids(model) -> frozenset[int]:
    """The end-of-sequence ids ``model.generate`` stops at: ``generation_config.eos_token_id`` (int or list)."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return frozenset()
    return frozenset([int(eos)] if isinstance(eos, int) else [int(i) for i in eos])


@torch.no_grad()
def chunked_prefill(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    chunk_size: int = 2048,
    past_key_values: Any = None,
    prompt_len: int | None = None,
    state: PrefillState | None = None,
    max_cache_len: int | None = None,
    progress: bool = False,
) -> PrefillOutput:
    """Prefill a long prompt in chunks of ``chunk_size`` tokens with Δ attention.

    Activation memory is bounded by the chunk (plus the KV cache). Each chunk's queries attend to
    the cached prefix and to themselves; sinks, windows and anchors sit at absolute prompt positions
    and the exact tail is placed at the end of the whole prompt, so the result equals a one-shot
    Δ prefill of the prompt up to rounding (a per-layer :class:`~delta_attn.DeltaState` carries the
    open γ-block's Δ from chunk to chunk).

    Args:
        model: a model switched on with :func:`enable`.
        input_ids: (B, N) prompt token ids (left-padded if B > 1), or the next N tokens of a prompt
            begun by an earlier call (then pass that call's ``past_key_values`` and ``state``).
        attention_mask: (B, cached + N), 1 for real tokens, 0 for left padding (default all ones).
        chunk_size: tokens per forward (a multiple of γ keeps chunk boundaries on γ-blocks; any value works).
        past_key_values: the cache to fill: default a new :class:`~delta_attn.kv_cache.PreallocatedCache`
            of ``max_cache_len`` tokens; pass ``DynamicCache(config=model.config)`` for transformers' own. A
            non-empty cache must come from an earlier call on the same prompt, together with its ``state``.
        prompt_len: the whole prompt's length (cached + all tokens still to come) when ``input_ids`` is
            not the end of the prompt: it places the exact tail. Default: cached + N (this call ends it).
        state: ``PrefillOutput.state`` of the earlier call when continuing a prompt.
        max_cache_len: tokens of the new :class:`~delta_attn.kv_cache.PreallocatedCache` (at least the
            prompt; default ``prompt_len + DECODE_ROOM``): one buffer per layer, chunks written in place, no
            chunk re-copies the cache (decoding past it grows the buffers by 25 %). On an H100 it is also the
            faster cache at 128K — 1.03×, 1.09× and 1.10× one-shot for the Llama-3-8B shape, Qwen2.5-Coder-1.5B
            and the llama-3.2-1b shape, against 1.07×, 1.14× and 1.15× for ``DynamicCache``, which
            concatenates per chunk (BENCHMARKS.md, 2026-12-06). Only used when ``past_key_values`` is None.
        progress: show a tqdm bar over the chunks.
    Returns:
        :class:`PrefillOutput` (cache, last-position logits (B, vocab), attention mask, state). Continue it
        with ``res.generate(max_new_tokens=...)`` (:meth:`PrefillOutput.generate`): it decodes from the
        cache, equal token for token to one-shot prefill + decoding.
    """
    binding = delta_binding(model)
    if binding is None:
        raise ValueError(
            "chunked_prefill needs a model switched to delta attention: call delta_attn.enable(model, config) first"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (batch, seq_len) with seq_len >= 1, got shape {tuple(input_ids.shape)}")
    binding.config.require_causal("it cannot run chunked")
    if max_cache_len is not None and past_key_values is not None:
        raise ValueError(
            "max_cache_len sizes a new cache: pass it without past_key_values (the given cache keeps its size)"
        )
    past = 0 if past_key_values is None else past_key_values.get_seq_length()
    n = input_ids.shape[1]
    if past and state is None:
        raise ValueError(
            "past_key_values already holds tokens: to continue a prompt pass state=<the earlier "
            "PrefillOutput.state>; to start a prompt pass an empty cache (or none)"
        )
    if state is not None and not isinstance(state, PrefillState):
        raise TypeError(f"state must be the .state of a PrefillOutput, got {type(state).__name__}")
    total = past + n
    if prompt_len is None:
        prompt_len = state.prompt_len if state is not None else total
    if state is not None and prompt_len != state.prompt_len:
        raise ValueError(
            f"prompt_len={prompt_len} differs from the prompt_len={state.prompt_len} this prompt began with"
        )
    if prompt_len < total:
        raise ValueError(f"prompt_len={prompt_len} is shorter than the {total} tokens given so far")
    if max_cache_len is not None and (
        isinstance(max_cache_len, bool) or not isinstance(max_cache_len, int) or max_cache_len < prompt_len
    ):
        raise ValueError(f"max_cache_len must be an int >= the prompt length {prompt_len}, got {max_cache_len!r}")
    if past_key_values is not None:
        cache = past_key_values
    else:  # the in-place cache: bounded memory, and the faster one on an H100 (docstring)
        cache = PreallocatedCache(max_cache_len or prompt_len + DECODE_ROOM, config=model.config)
    bsz = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = input_ids.new_ones(bsz, total)
    if attention_mask.shape != (bsz, total):
        raise ValueError(
            f"attention_mask must be (batch, cached + new) = {(bsz, total)}, got {tuple(attention_mask.shape)}"
        )
    derive_left_padding(attention_mask, total, total, False, bsz)  # raises a clear error for right padding
    position_ids = left_padding_position_ids(attention_mask)
    extra = last_logits_only(model)
    cache_arg = cache_argument(model)
    starts = range(past, total, chunk_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="chunked prefill", unit="chunk")
    binding.chunk = state if state is not None else PrefillState(prompt_len=prompt_len)
    try:
        for s in starts:
            e = min(total, s + chunk_size)
            out = model(
                input_ids=input_ids[:, s - past : e - past],
                attention_mask=attention_mask[:, :e],
                position_ids=position_ids[:, s:e],
                use_cache=True,
                **{cache_arg: cache},
                **extra,
            )
    finally:
        ctx, binding.chunk = binding.chunk, None
    # the model fills `cache` in place (and returns it under a name that depends on the transformers version)
    return PrefillOutput(
        past_key_values=cache, logits=out.logits[:, -1], attention_mask=attention_mask, state=ctx, model=model
    )
