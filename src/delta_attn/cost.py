"""The cost model of Δ prefill: attention query-key pairs and FLOPs (docs/algorithm.md §10).

Counts are per (batch element, query head), for a one-shot prefill of ``n`` tokens:

* **dense causal**: row p scores p + 1 keys, ``n(n+1)/2`` in all (:func:`causal_pairs`);
* **the sparse base**: row p scores the keys its pattern keeps. The base method says how many
  (:meth:`delta_attn.sparse.SparseMethod.row_key_counts`): exactly for the static bases
  (``streaming``, ``block``, ``dense``), as the budget it is configured with for the data-dependent
  ones (``topk``, ``vertical_slash``: an upper bound, and only when asked for with
  ``allow_upper_bound=True``); a base that says nothing has no analytic cost (``ValueError``);
* **the dense rows** of ``delta``/``recompute`` (anchors every γ below the tail, then every tail row,
  :attr:`delta_attn.backend.CallPlan.dense_pos`), each over its own causal prefix;
* **the extra anchors** of ``extra_anchors > 0`` (docs/algorithm.md §13): ``ceil(f · n_blocks)`` more
  dense rows at block midpoints. Which blocks is chosen from the data, so their pairs are counted at
  the latest blocks they may sit at (an upper bound; ``exact`` is then False). They are included in
  ``dense_rows``/``n_dense_rows`` and reported alone in ``extra_rows``/``n_extra_rows``. Choosing the
  blocks (a norm per block and head) and ``delta_scale`` (a dot product per anchor) are O(N·d/γ), not
  counted, like the Δ broadcast.

A method's total (:attr:`PrefillCost.total`) counts what it needs: ``delta`` scores the base only on
the rows before the exact tail (the tail's sparse rows are never used; the Triton backend skips them),
``recompute`` and ``sparse`` on every row. One pair costs ``4·d`` FLOPs (``q·k`` and ``p·v``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import extra_anchor_count, plan_call
from .config import DeltaConfig
from .sparse import resolve_sparse_method

FLOPS_PER_PAIR_PER_DIM = 4  # 2 for the score q·k, 2 for the weighted value p·v


def pair_flops(pairs: int, head_dim: int, heads: int = 1, batch: int = 1) -> int:
    """Attention FLOPs of ``pairs`` query-key pairs per head, for ``batch`` × ``heads`` heads of size ``head_dim``."""
    return FLOPS_PER_PAIR_PER_DIM * head_dim * heads * batch * pairs


def causal_pairs(n: int) -> int:
    """Query-key pairs of dense causal attention over ``n`` tokens: n(n+1)/2."""
    return n * (n + 1) // 2


def dense_row_positions(config: DeltaConfig, n: int) -> np.ndarray:
    """Absolute positions of the rows computed densely in an ``n``-token prefill (ascending, int64)."""
    return plan_call(config, 0, n, n).dense_pos.numpy().astype(np.int64)


def dense_row_count(config: DeltaConfig, n: int) -> int:
    """How many rows of an ``n``-token prefill are dense (anchors + tail; all for ``dense``, none for ``sparse``)."""
    return int(plan_call(config, 0, n, n).dense_pos.numel())


def base_pairs(config: DeltaConfig, lo: int, hi: int, *, allow_upper_bound: bool = False) -> tuple[int, bool]:
    """Pairs the sparse base scores over the rows ``[lo, hi)``, and whether the count is exact.

    Raises ``ValueError`` for a base without an analytic cost, and for a data-dependent base unless
    ``allow_upper_bound`` (then its configured budget is counted: an upper bound).
    """
    method = resolve_sparse_method(config.sparse)
    exact = bool(getattr(method, "cost_is_exact", True))
    if not exact and not allow_upper_bound:
        raise ValueError(
            f"no analytic cost for sparse base {config.method_name!r}: its pattern depends on the data; pass "
            "allow_upper_bound=True to count the budget it is configured with (an upper bound)"
        )
    counts = method.row_key_counts(config, np.arange(lo, max(lo, hi), dtype=np.int64))
    if counts is None:
        raise ValueError(
            f"no analytic cost for sparse base {config.method_name!r}; give its SparseMethod a row_key_counts()"
        )
    return int(np.asarray(counts, dtype=np.int64).sum()), exact


@dataclass(frozen=True)
class PrefillCost:
    """Query-key pairs of one (batch element, query head) in an ``n``-token prefill under one config.

    base:       the sparse base over every row (0 for ``mode="dense"``).
    base_body:  the sparse base over the rows before the exact tail (what ``delta`` needs).
    dense_rows: the dense rows, each over its causal prefix (every row for ``dense``, none for ``sparse``).
    n_dense_rows: how many rows are dense.
    exact:      False when the base is data-dependent and ``base``/``base_body`` are its budget, or when
                extra anchors are counted at their latest possible blocks (an upper bound).
    extra_rows, n_extra_rows: the part of ``dense_rows``/``n_dense_rows`` that are ``extra_anchors`` rows.
    """

    mode: str
    n: int
    base: int
    base_body: int
    dense_rows: int
    n_dense_rows: int
    exact: bool
    extra_rows: int = 0
    n_extra_rows: int = 0

    @property
    def total(self) -> int:
        """Pairs the method needs (see the module docstring)."""
        if self.mode == "delta":
            return self.base_body + self.dense_rows
        return self.base + self.dense_rows

    @property
    def dense_fraction(self) -> float:
        """:attr:`total` relative to dense causal attention."""
        return self.total / max(1, causal_pairs(self.n))

    def flops(self, head_dim: int, heads: int = 1, batch: int = 1) -> int:
        """Attention FLOPs of :attr:`total` for ``batch`` × ``heads`` query heads of dimension ``head_dim``."""
        return pair_flops(self.total, head_dim, heads, batch)


def prefill_cost(config: DeltaConfig, n: int, *, allow_upper_bound: bool = False) -> PrefillCost:
    """The :class:`PrefillCost` of a one-shot prefill of ``n`` tokens with ``config``."""
    dense_pos = dense_row_positions(config, n)
    dense_rows = int((dense_pos + 1).sum())
    if config.mode == "dense":
        return PrefillCost("dense", n, 0, 0, dense_rows, len(dense_pos), True)
    tail_start = n - config.tail_rows(n)
    base_body, exact = base_pairs(config, 0, tail_start, allow_upper_bound=allow_upper_bound)
    base_tail, _ = base_pairs(config, tail_start, n, allow_upper_bound=allow_upper_bound)
    extra_pos = extra_row_positions_bound(config, n)
    extra_rows = int((extra_pos + 1).sum())
    return PrefillCost(
        config.mode,
        n,
        base_body + base_tail,
        base_body,
        dense_rows + extra_rows,
        len(dense_pos) + len(extra_pos),
        exact and not len(extra_pos),
        extra_rows,
        len(extra_pos),
    )


def extra_row_positions_bound(config: DeltaConfig, n: int) -> np.ndarray:
    """The ``extra_anchors`` rows of an ``n``-token prefill placed at the latest blocks they may take.

    ``ceil(f · n_blocks)`` blocks among those with a next anchor (j < n_blocks − 1), each with a row at
    ``jγ + γ//2``; the data choose which, so the latest ones bound the pairs from above.
    """
    n_blocks = -(-(n - config.tail_rows(n)) // config.gamma)  # anchors below the tail
    count = extra_anchor_count(config, n_blocks)
    blocks = np.arange(n_blocks - 1 - count, n_blocks - 1, dtype=np.int64)
    return blocks * config.gamma + config.gamma // 2
