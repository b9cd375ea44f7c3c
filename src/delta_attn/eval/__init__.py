"""Evaluation suite: offline RULER-style tasks, perplexity, significance tests, analyses and reports.

Modules (one job each): :mod:`.ruler` (the 13 task generators), :mod:`.qa` (offline QA substitutes),
:mod:`.corpus` (public-domain texts), :mod:`.words` (word lists), :mod:`.scoring` (RULER's metrics),
:mod:`.stats` (paired permutation tests), :mod:`.methods` (method spec syntax), :mod:`.generation`
(batched greedy decoding), :mod:`.runner` (batching, resuming, time limits), :mod:`.records` (JSONL
files), :mod:`.ppl` (perplexity), :mod:`.analysis` (the paper's analyses on captured q/k/v),
:mod:`.report` (tables, plots, RESULTS.md), :mod:`.cost` (GPU time estimate), :mod:`.cli`
(``delta-attn eval ...``).

Nothing heavy is imported here.
"""
