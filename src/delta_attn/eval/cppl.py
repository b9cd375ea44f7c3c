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

import inspect
import time
import traceback
from collections.abc import Callable, Sequence

import torch

from .methods import Method
from .records import JsonlWriter


@torch.inference_mode()
def continuation_nll(model, ids: torch.Tensor, cont: int, slice_len: int = 1024) -> list[float]:
    """Summed NLL of the last ``cont`` tokens of each row of ``ids`` (B, L), given a prefill of the first
    ``L − cont`` with the model's current attention and a dense teacher-forced continuation."""
    from transformers import DynamicCache

    n = ids.shape[1]
    if not 1 <= cont < n:
        raise ValueError(f"continuation of {cont} tokens needs 1 <= M < window length {n}")
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
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

    device = next(model.parameters()).device
    written = 0
    try:
        for m in methods:
            for cont in conts:
                ds = [d for d in docs if (d[0], length, cont, m.name) not in done]
                bs, i = batch_size, 0
                try:
                    if m.is_dense:
                        delta_attn.disable(model)
                    else:
                        delta_attn.enable(model, m.config)
                    while i < len(ds):
                        if deadline is not None and not deadline.allows(0.0):
                            log(f"time limit: continuation ppl stopped before {m.name}@{length} M={cont}")
                            return written
                        chunk = ds[i : i + bs]
                        ids = torch.tensor([d[1] for d in chunk], dtype=torch.long, device=device)
                        t0 = time.perf_counter()
                        try:
                            sums = continuation_nll(model, ids, cont)
                        except torch.OutOfMemoryError:
                            if bs == 1:
                                raise
                            bs = max(1, bs // 2)
                            del ids
                            torch.cuda.empty_cache()
                            log(f"out of memory: continuation ppl {m.name}@{length} continues with batch {bs}")
                            continue
                        wall = time.perf_counter() - t0
                        recs = [
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
                        writer.write(recs)
                        written += len(recs)
                        i += len(chunk)
                except NotImplementedError as exc:  # a variant the operator does not implement yet
                    log(f"SKIPPED continuation ppl {m.name}@{length} M={cont} ({len(ds) - i} documents): {exc}")
                except Exception:  # one broken method must not cost the others
                    log(
                        f"ERROR in continuation ppl {m.name}@{length} M={cont}, {len(ds) - i} documents skipped:\n"
                        f"{traceback.format_exc()}"
                    )
    finally:
        delta_attn.disable(model)
    return written
