"""`DeltaConfig`: every knob of Δ attention in one validated dataclass.

The defaults follow the paper (γ = 64, StreamingLLM base with a 2048-token window) and, for the other
bases, MInference (vertical-slash sizes) and Star Attention (block size). The field notes below
mirror docs/algorithm.md (§3 rows and tail, §4 modes, §5 interpolations).

This module is the one source of the option vocabularies (:data:`MODES`, :data:`INTERPS`,
:data:`BACKENDS`) and of the tail rule (:meth:`DeltaConfig.tail_rows`); everything else imports them.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .sparse.base import SparseMethod

MODES = ("delta", "recompute", "sparse", "dense")
#: the base methods delta_attn.sparse registers at import (checked there); a config naming one of them is
#: validated without importing torch, so `import delta_attn` and the CLI's --help stay light
BUILTIN_SPARSE_METHODS = ("streaming", "vertical_slash", "topk", "block", "dense")
INTERPS = ("repeat", "linear", "ema", "abg")
FILTER_INTERPS = ("ema", "abg")  # linear filters over the repeated Δs: they carry a state across chunks
BACKENDS = ("auto", "reference", "triton", "fa4")
#: the data-driven forms of DeltaConfig.delta_scale (docs/algorithm.md §13): "auto" is causal (running
#: least squares over the anchors before each block), "auto-global" fits one factor on all anchors of the call
DELTA_SCALE_MODES = ("auto", "auto-decay", "auto-global")
#: the data-driven forms that read only earlier anchors (causal; chunked prefill carries their running sums)
CAUSAL_SCALE_MODES = ("auto", "auto-decay")
#: what a causal config looks like, for the errors of :meth:`DeltaConfig.require_causal`
CAUSAL_SETTINGS = "interp='repeat'/'ema'/'abg', delta_scale a float, 'auto' or 'auto-decay', extra_anchors=0"
#: ``chunk_size="auto"``, the default of :func:`delta_attn.generation.prefill` / ``generate`` and of
#: ``delta-attn generate --chunk-size``: a prompt longer than AUTO_CHUNK_ABOVE tokens is prefilled in chunks of
#: AUTO_CHUNK_SIZE tokens into the in-place cache when the model runs Δ with causal settings (one forward
#: otherwise). On an H100 that took 1.00–1.04× the one-shot time at 128K–512K (1.03–1.12× in an earlier run)
#: while the 512K peak fell from 50.5 to 19.4 GB (BENCHMARKS.md, 2026-12-07 and 2026-12-06). Defined here, not
#: in generation.py, so that the CLI's help quotes them without importing torch; generation.py re-exports them
#: and reads its own copies (patch those to change the rule).
AUTO_CHUNK_SIZE = 16384
AUTO_CHUNK_ABOVE = 32768


#: the largest value of every integer field (token counts, strides, layer indices): 2**31 - 1, int32.
#: Why int32 and not int64: the Triton kernels hold token positions, row lists and key-index tables in
#: int32 (kernels/dense_rows.py, kernels/blocks.py), so no prompt there is longer than 2**31 - 1 tokens and
#: a larger window / sink / block / γ would mean nothing more than "all of it"; and with both a field and a
#: prompt length below 2**31, every product the cost model and the reference path form (window × N key
#: counts, block index × γ positions, in numpy/torch int64) stays below 2**62 and cannot overflow int64.
#: A larger Python int (``gamma=10**20``) would otherwise pass here and fail later with an OverflowError.
MAX_INT_FIELD = 2**31 - 1


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"DeltaConfig.{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"DeltaConfig.{name} must be >= {minimum}, got {_short(value)}")
    if value > MAX_INT_FIELD:
        raise ValueError(
            f"DeltaConfig.{name} must be <= {MAX_INT_FIELD} (2**31 - 1, the int32 bound of token positions in "
            f"the kernels), got {_short(value)}"
        )


def _short(value: int) -> str:
    """An int for an error message: a huge one by its size, not as thousands of digits."""
    if abs(value) < 10**30:
        return str(value)
    # str() of a 5,000-digit int raises ValueError (Python's int-to-str digit limit): name its size instead
    return f"a {'negative ' if value < 0 else ''}{abs(value).bit_length()}-bit integer"


def _check_float(name: str, value: Any, low: float, high: float, *, low_open: bool, high_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"DeltaConfig.{name} must be a float, got {type(value).__name__} ({value!r})")
    lo_ok = value > low if low_open else value >= low
    hi_ok = value < high if high_open else value <= high
    if not (lo_ok and hi_ok):
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        got = _short(value) if isinstance(value, int) else value
        raise ValueError(f"DeltaConfig.{name} must lie in {lb}{low}, {high}{hb}, got {got}")


@dataclass(frozen=True)
class DeltaConfig:
    """Configuration of Δ attention prefill.

    Core fields
    -----------
    sparse:  the sparse base method: a registered name (``"streaming"``, ``"vertical_slash"``,
             ``"topk"``, ``"block"``, ``"dense"``, or one added with
             :func:`delta_attn.register_sparse_method`) or a :class:`delta_attn.sparse.SparseMethod`
             instance. Default ``"streaming"`` (sink + sliding window, the paper's main base).
    window:  sliding-window length W for ``streaming`` and ``topk``: query i sees key j when
             ``i - j < window`` (so ``window=1`` is the diagonal only). Default 2048 (paper).
    sink:    number of leading "attention sink" keys every query sees (``streaming``, ``topk``).
             Default 128 (the reference code uses 128–1024; 128 keeps the base cheapest).
    gamma:   γ, the anchor stride: the first row of every γ-block is computed densely. Default 64.
    mode:    ``"delta"`` (sparse + Δ correction, the method), ``"recompute"`` (sparse, with the
             anchor and tail rows overwritten by dense rows, no broadcast), ``"sparse"`` (base only,
             no dense tail) or ``"dense"`` (exact causal attention). Default ``"delta"``.
    interp:  how Δ spreads over the rows of a γ-block: ``"repeat"`` (the paper; causal),
             ``"linear"`` (between this and the next anchor; **non-causal**, row i reads row
             (j+1)γ > i), ``"ema"`` (causal exponential moving average over the repeated Δs),
             ``"abg"`` (causal α-β-γ tracking filter). Default ``"repeat"``.
    tail:    minimum number of exact (dense) rows at the end of the prompt. ``None`` means
             ``max(128, gamma)``. The actual tail is ``min(N, N % gamma + tail)`` rows so that the
             rows before it are a whole number of γ-blocks.

    Interpolation options
    ---------------------
    ema_beta:  β of ``e_i = β·e_{i-1} + (1-β)·Δ(i)``, in [0, 1). Default 0.75 (paper tried 0.5–0.95).
    abg_alpha: α of the α-β-γ filter, in (0, 1]. Default 0.1; ``abg_beta`` defaults to α²/2 and
               ``abg_gamma`` to α³/6 (the rebuttal's settings).

    Δ variants (docs/algorithm.md §13; both only change ``mode="delta"``)
    ----------------------------------------------------------------------
    delta_scale: λ, the shrinkage of the broadcast correction: body rows get ``Õ_i + λ·Δ(i)``;
        anchor and tail rows stay exact. A float in [0, 1] (1.0 = the paper, the default; 0.0 gives
        exactly ``mode="recompute"``), ``"auto"`` — λ per (sequence, head) from the anchors seen so far:
        the least-squares factor predicting each anchor's Δ from its predecessor's, clipped to [0, 1]
        (causal: block j uses anchors ≤ j only; chunked prefill carries the running sums),
        ``"auto-decay"`` — that factor ρ averaged over the block as if the correlation decayed
        geometrically with the distance to the anchor, (ρ − 1)/ln ρ ≥ ρ (causal, like ``"auto"``) — or
        ``"auto-global"``, the same factor fitted on all anchors of the call (**non-causal**).
    extra_anchors: fraction in [0, 1] of γ-blocks that get a second dense row at their midpoint; the
        blocks whose Δ changes most between neighbouring anchors are chosen (adaptive anchors, as in
        the official code's iterative correction). The rows from the midpoint on use the new Δ
        (``"repeat"``; ``"linear"`` interpolates anchor → extra anchor → next anchor; ``"ema"``/``"abg"``
        are refused). Costs about ``extra_anchors / gamma`` of dense attention more; **non-causal**
        (the choice reads later anchors). Default 0.0.

    Base-method options
    -------------------
    vertical_size, slash_size: vertical-slash budget per head: top key columns and top diagonals
        (MInference's common default 1000 / 6096).
    vs_last_q: number of final queries used to estimate the pattern (MInference: 64).
    vs_first_columns, vs_last_diagonals: always-kept columns / diagonals (MInference: 30 / 100).
    topk_block: block size (queries and keys) of the ``topk`` base. Default 64.
    topk_blocks: key blocks kept per query block and head (besides sink + window). Default 32.
    block_size: Star-Attention block length for ``block``: every token sees the first (anchor)
        block and, causally, its own block. Default 2048 (the paper's Star-Attention experiment).

    Integration / execution
    -----------------------
    dense_layers: layers run with dense attention when the config is used inside a model:
        an int k means layers 0..k-1, a sequence lists layer indices. Default 0 (none).
    backend: ``"auto"`` (Triton kernels on CUDA when available, else the PyTorch reference),
        ``"reference"``, ``"triton"`` or ``"fa4"`` (the sparse base and the dense rows on FlashAttention 4's
        kernels, ``pip install flash-attn-4``, sm_90+; sink + window only: :mod:`delta_attn.kernels.fa4_prefill`).
    """

    sparse: str | "SparseMethod" = "streaming"
    window: int = 2048
    sink: int = 128
    gamma: int = 64
    mode: str = "delta"
    interp: str = "repeat"
    tail: int | None = None
    ema_beta: float = 0.75
    abg_alpha: float = 0.1
    abg_beta: float | None = None
    abg_gamma: float | None = None
    vertical_size: int = 1000
    slash_size: int = 6096
    vs_last_q: int = 64
    vs_first_columns: int = 30
    vs_last_diagonals: int = 100
    topk_block: int = 64
    topk_blocks: int = 32
    block_size: int = 2048
    dense_layers: int | Sequence[int] = 0
    backend: str = "auto"
    delta_scale: float | str = 1.0
    extra_anchors: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.sparse, str):
            if self.sparse not in BUILTIN_SPARSE_METHODS:
                if "delta_attn.sparse" not in sys.modules:
                    # nothing can be registered before delta_attn.sparse is imported: refuse without importing
                    # it (it imports torch), so that the command line reports a misspelt name at once
                    raise ValueError(
                        f"unknown sparse method {self.sparse!r}; choose one of {sorted(BUILTIN_SPARSE_METHODS)} "
                        "or register your own with delta_attn.register_sparse_method(name, method)"
                    )
                from .sparse import resolve_sparse_method  # local: sparse imports config (and torch)

                resolve_sparse_method(self.sparse)  # raises ValueError listing the known names
        elif not hasattr(self.sparse, "plan"):
            raise TypeError(
                "DeltaConfig.sparse must be a registered method name or an object with a "
                f"`plan(q, k, config, q_start)` method (a delta_attn.sparse.SparseMethod); got {self.sparse!r}"
            )
        if self.mode not in MODES:
            raise ValueError(f"DeltaConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.interp not in INTERPS:
            raise ValueError(f"DeltaConfig.interp must be one of {INTERPS}, got {self.interp!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"DeltaConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        _check_int("gamma", self.gamma, 1)
        _check_int("window", self.window, 1)
        _check_int("sink", self.sink, 0)
        if self.tail is not None:
            _check_int("tail", self.tail, 0)
        _check_float("ema_beta", self.ema_beta, 0.0, 1.0, low_open=False, high_open=True)
        _check_float("abg_alpha", self.abg_alpha, 0.0, 1.0, low_open=True, high_open=False)
        if self.abg_beta is not None:
            _check_float("abg_beta", self.abg_beta, 0.0, 2.0, low_open=False, high_open=False)
        if self.abg_gamma is not None:
            _check_float("abg_gamma", self.abg_gamma, 0.0, 2.0, low_open=False, high_open=False)
        for name in ("vertical_size", "slash_size", "vs_first_columns", "vs_last_diagonals", "topk_blocks"):
            _check_int(name, getattr(self, name), 0)
        for name in ("vs_last_q", "topk_block", "block_size"):
            _check_int(name, getattr(self, name), 1)
        if isinstance(self.delta_scale, str):
            if self.delta_scale not in DELTA_SCALE_MODES:
                raise ValueError(
                    f"DeltaConfig.delta_scale must be a float in [0, 1] or one of {DELTA_SCALE_MODES}, "
                    f"got {self.delta_scale!r}"
                )
        else:
            _check_float("delta_scale", self.delta_scale, 0.0, 1.0, low_open=False, high_open=False)
        _check_float("extra_anchors", self.extra_anchors, 0.0, 1.0, low_open=False, high_open=False)
        if self.extra_anchors > 0 and self.interp in FILTER_INTERPS:
            raise ValueError(
                f"DeltaConfig.extra_anchors works with interp 'repeat' or 'linear' (an extra anchor splits a "
                f"γ-block's Δ; the {self.interp!r} filter has no such split): set interp='repeat'/'linear' "
                "or extra_anchors=0"
            )
        dl = self.dense_layers
        if isinstance(dl, bool) or not isinstance(dl, (int, Sequence)) or isinstance(dl, str):
            raise TypeError(f"DeltaConfig.dense_layers must be an int or a sequence of ints, got {dl!r}")
        if isinstance(dl, int):
            _check_int("dense_layers", dl, 0)
        else:
            for i in dl:
                if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= MAX_INT_FIELD:
                    got = _short(i) if isinstance(i, int) and not isinstance(i, bool) else repr(i)
                    raise ValueError(
                        f"DeltaConfig.dense_layers entries must be ints in [0, {MAX_INT_FIELD}] (2**31 - 1), "
                        f"got {got} in dense_layers"
                    )
            object.__setattr__(self, "dense_layers", tuple(dl))

    # ---- derived values -------------------------------------------------------------------

    @property
    def min_tail(self) -> int:
        """Minimum exact rows at the end of the prompt (``tail`` or ``max(128, gamma)``)."""
        return self.tail if self.tail is not None else max(128, self.gamma)

    def tail_rows(self, n: int) -> int:
        """Exact rows at the end of an ``n``-token prompt: ``min(n, n % gamma + min_tail)``."""
        return min(n, n % self.gamma + self.min_tail)

    @property
    def abg_coefficients(self) -> tuple[float, float, float]:
        """(α, β, γ_f) of the α-β-γ filter with the documented defaults filled in."""
        a = float(self.abg_alpha)
        b = float(self.abg_beta) if self.abg_beta is not None else a * a / 2.0
        g = float(self.abg_gamma) if self.abg_gamma is not None else a**3 / 6.0
        return a, b, g

    @property
    def is_causal(self) -> bool:
        """Whether row i depends on rows ≤ i only. False for ``mode="delta"`` with ``interp="linear"``
        (it reads the next anchor), ``delta_scale="auto-global"`` or ``extra_anchors > 0``."""
        if self.mode != "delta":
            return True
        return not (self.interp == "linear" or self.delta_scale == "auto-global" or self.extra_anchors > 0)

    @property
    def non_causal_reason(self) -> str | None:
        """The setting that makes the config non-causal, named for error messages (None when causal)."""
        if self.mode != "delta":
            return None
        if self.interp == "linear":
            return 'interp="linear"'
        if self.delta_scale == "auto-global":
            return 'delta_scale="auto-global"'
        if self.extra_anchors > 0:
            return f"extra_anchors={self.extra_anchors}"
        return None

    def non_causal_problem(self, consequence: str) -> str | None:
        """The one message for a non-causal config asked to run on part of a prompt (chunks, shards):
        ``consequence`` says what it cannot do. None when the config is causal."""
        if self.is_causal:
            return None
        return (
            f"{self.non_causal_reason} makes rows read later anchors (it is non-causal), so {consequence}; "
            f"prefill the whole prompt in one call or choose causal settings ({CAUSAL_SETTINGS})"
        )

    def require_causal(self, consequence: str) -> None:
        """Raise ValueError (:meth:`non_causal_problem`) unless the config is causal."""
        problem = self.non_causal_problem(consequence)
        if problem is not None:
            raise ValueError(problem)

    def is_dense_layer(self, layer_idx: int | None) -> bool:
        """Whether ``layer_idx`` is listed in ``dense_layers``."""
        if layer_idx is None:
            return False
        if isinstance(self.dense_layers, int):
            return layer_idx < self.dense_layers
        return layer_idx in self.dense_layers

    def replace(self, **changes: Any) -> "DeltaConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def method_name(self) -> str:
        """Name of the sparse base (for tables and logs)."""
        return self.sparse if isinstance(self.sparse, str) else getattr(self.sparse, "name", type(self.sparse).__name__)


DEFAULT_CONFIG = DeltaConfig()  # what `config=None` means everywhere (the operator and the HF integration)
