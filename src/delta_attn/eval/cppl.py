"""Continuation perplexity: the KV cache a prefill writes, scored the way decoding reads it.

Row-wise perplexity (:mod:`delta_attn.eval.ppl`) scores every row of one prefill, so Δ's approximate body
rows are what is scored. Decoding never reads those rows' outputs: it reads the *KV cache* the prefill
wrote, with dense attention. Continuation perplexity measures that. For each window of ``L`` tokens:

1. prefill the first ``L − M`` tokens with the method under test as ONE prompt (``prompt_len = L − M``,
   so its exact tail covers the prompt's last rows), keeping the cache;
2. score the last ``M`` tokens teacher-forced in one forward against that cache. The integration treats a
   forward over a cached prefix as decode (dense over the whole cache, every mode; see
   :mod:`delta_attn.hf`), so the ``M`` rows are dense, as greedy decoding of them would be.

The first scored token is predicted by the prefill's last position (an exact tail row), the others by the
continuation forward. With ``mode="dense"`` the result is exactly the row-wise NLL of the last ``M``
tokens of one dense forward (tested).

Records (``"record": "cppl"``, in the perplexity file): document, ``length`` (L), ``cont`` (M), method,
causality, the NLL summed over the M tokens, ``tokens`` (= M), and the full ``config``; the resume key is
(document, L, M, method).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..methods import Method
from .records import JsonlWriter


@torch.inference_mode()
def continuation_nll(model, ids: torch.Tensor, cont: int, slice_len: int = 1024) -> list[float]:
    """Summed NLL of the last ``cont`` tokens of each row of ``ids`` (B, L), given a prefill of the first
    ``L − cont`` with the model's current attention and a dense teacher-forced continuation."""
    from transformers import DynamicCache

    from ..compat import cache_argument

    n = ids.shape[1]
    if not 1 <= cont < n:
        raise ValueError(f"continuation of {cont} tokens needs 1 <= M < window length {n}")
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    cache_arg = cache_argument(base)
    cache = DynamicCache(config=model.config)
    p = n - cont
    pre = base(input_ids=ids[:, :p], use_cache=True, **{cache_arg: cache}).last_hidden_state[:, -1:]
    hid = base(input_ids=ids[:, p:-1], use_cache=True, **{cache_arg: cache}).last_hidden_state if cont > 1 else None
    hidden = pre if hid is None else torch.cat([pre, hid], dim=1)  # (B, M, H): predicts tokens p .. n-1
    del cache
    total = torch.zeros(ids.shape[0], dtype=torch.float64, device=ids.device)
    for s in range(0, cont, slice_len):
        e = min(cont, s + slice_len)
        logits = model.lm_head(hidden[:, s:e]).float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, p + s : p + e], reduction="none")
        total += nll.double().sum(-1)
    return total.tolist()


def run_cppl(
    model,
    docs: Sequence[tuple[str, list[int]]],
    methods: Sequence[Method],
    writer: JsonlWriter,
    *,
    length: int,
    conts: Sequence[int],
    batch_size: int,
    done: set,
    configs: dict[str, dict],
    run_id: str,
    log: Callable[[str], None] = print,
    deadline=None,
) -> int:
    """Continuation perplexity of every (document, M, method) not in ``done`` at ``length``; records written.

    ``done`` holds :func:`delta_attn.eval.records.cppl_key` tuples.
    """
    import delta_attn

    from .ppl import score_in_batches

    def records_of(m: Method, cont: int):
        def records(chunk, sums, wall):
            return [
                {
                    "record": "cppl",
                    "doc": name,
                    "length": length,
                    "cont": cont,
                    "method": m.name,
                    "causal": m.causal,
                    "nll_sum": round(s, 4),
                    "tokens": cont,
                    "run_id": run_id,
                    "batch": {"size": len(chunk), "wall_s": round(wall, 4)},
                    "config": configs[m.name],
                }
                for (name, _), s in zip(chunk, sums)
            ]

        return records

    written = 0
    try:
        for m in methods:
            for cont in conts:
                ds = [d for d in docs if (d[0], length, cont, m.name) not in done]
                n, stopped = score_in_batches(
                    model,
                    m,
                    ds,
                    writer,
                    batch_size=batch_size,
                    score=lambda ids, cont=cont: continuation_nll(model, ids, cont),
                    records=records_of(m, cont),
                    what=f"continuation ppl {m.name}@{length} M={cont}",
                    log=log,
                    deadline=deadline,
                )
                written += n
                if stopped:
                    return written
    finally:
        delta_attn.disable(model)
    return written
