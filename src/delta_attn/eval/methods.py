"""Named evaluation methods: a small spec syntax over :class:`delta_attn.DeltaConfig`.

A method spec is ``[BASE+]MODE{_OPT}`` or ``BASE{_OPT}``::

    dense                  exact attention (prefill with the model's own SDPA path)
    sparse                 the base alone (no dense rows)           -- "sparse-only"
    recompute              base + dense anchor/tail rows, no broadcast
    delta                  base + Δ correction (the method)
    delta_g16              ... with γ = 16
    block                  the block base alone (= block+sparse)
    block+delta            Δ on the block base
    vertical_slash+delta   Δ on MInference's vertical-slash base ("vs" is an alias)
    delta_ema0.9           Δ with the causal EMA interpolation, β = 0.9
    streaming_w512_s128+sparse   the streaming base with window 512 and 128 sinks

BASE is a registered sparse method (``streaming``, ``block``, ``vertical_slash``/``vs``, ``topk``);
without one, the ``--base`` default applies (streaming). MODE is a :class:`DeltaConfig` mode.
Options (on either part, ``_``-separated):

    g<int>  γ (anchor stride)       w<int>  window        s<int>  sink tokens     t<int>  tail rows
    b<int>  block_size (block)      v<int>  vertical_size  d<int>  slash_size (diagonals)
    k<int>  topk_blocks             repeat | linear | ema[<β>] | abg[<α>]   interpolation of Δ

Anything not given comes from the defaults (CLI: ``--base --window --sink --gamma --block-size ...``).
The spec string itself is the method's name in every output file and table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BASE_ALIASES = {"vs": "vertical_slash", "stream": "streaming", "str": "streaming"}
MODES = ("dense", "sparse", "recompute", "delta")
_OPT = re.compile(r"^(g|w|s|t|b|v|d|k)(\d+)$|^(repeat|linear)$|^(ema|abg)(\d*\.?\d*)$")
_INT_FIELDS = {
    "g": "gamma",
    "w": "window",
    "s": "sink",
    "t": "tail",
    "b": "block_size",
    "v": "vertical_size",
    "d": "slash_size",
    "k": "topk_blocks",
}


@dataclass(frozen=True)
class Method:
    """A named method: ``config`` is None for dense (the model's stock attention)."""

    name: str
    config: Any  # DeltaConfig | None

    @property
    def is_dense(self) -> bool:
        return self.config is None

    @property
    def causal(self) -> bool:
        return self.config is None or self.config.is_causal

    def describe(self) -> str:
        """One line for legends: base, window/sink or block, mode, γ, interpolation."""
        c = self.config
        if c is None:
            return "dense attention (SDPA)"
        base = c.method_name
        if base == "streaming":
            base_s = f"streaming (sink {c.sink} + window {c.window})"
        elif base == "block":
            base_s = f"block (anchor block + own block, block_size {c.block_size})"
        elif base == "vertical_slash":
            base_s = f"vertical_slash ({c.vertical_size} columns + {c.slash_size} diagonals)"
        elif base == "topk":
            base_s = f"topk ({c.topk_blocks} blocks of {c.topk_block} + sink {c.sink} + window {c.window})"
        else:
            base_s = base
        if c.mode == "sparse":
            return f"{base_s}, sparse only"
        if c.mode == "dense":
            return "dense attention (through delta_attention)"
        interp = (
            ""
            if c.interp == "repeat"
            else f", interp={c.interp}"
            + (f" β={c.ema_beta}" if c.interp == "ema" else f" α={c.abg_alpha}" if c.interp == "abg" else "")
        )
        extra = " (non-causal)" if not c.is_causal else ""
        return f"{base_s} + {c.mode} γ={c.gamma}{interp}{extra}"

    def config_dict(self) -> dict | None:
        if self.config is None:
            return None
        import dataclasses

        d = dataclasses.asdict(self.config)
        d["sparse"] = self.config.method_name
        return d


def _base_name(part: str) -> tuple[str | None, str]:
    """Split a leading sparse-base name off ``part`` (longest match); returns (base or None, rest)."""
    from ..sparse import available_sparse_methods

    names = sorted(set(available_sparse_methods()) | set(BASE_ALIASES), key=len, reverse=True)
    for n in names:
        if part == n or part.startswith(n + "_"):
            return BASE_ALIASES.get(n, n), part[len(n) :]
    return None, part


def _apply_opts(opts: str, fields: dict, spec: str) -> None:
    for opt in filter(None, opts.split("_")):
        m = _OPT.match(opt)
        if not m:
            raise ValueError(f"method {spec!r}: unknown option {opt!r} (see delta_attn.eval.methods for the syntax)")
        if m.group(1):
            fields[_INT_FIELDS[m.group(1)]] = int(m.group(2))
        elif m.group(3):
            fields["interp"] = m.group(3)
        else:
            fields["interp"] = m.group(4)
            if m.group(5):
                fields["ema_beta" if m.group(4) == "ema" else "abg_alpha"] = float(m.group(5))


def parse_method(spec: str, defaults: dict | None = None) -> Method:
    """Parse one method spec (see the module docstring) into a :class:`Method`."""
    from ..config import DeltaConfig

    spec = spec.strip()
    if not spec:
        raise ValueError("empty method spec")
    defaults = dict(defaults or {})
    fields: dict = {}
    base: str | None = None
    if "+" in spec:
        base_part, mode_part = spec.split("+", 1)
        base, rest = _base_name(base_part)
        if base is None:
            raise ValueError(f"method {spec!r}: unknown sparse base {base_part!r}")
        _apply_opts(rest, fields, spec)
    else:
        mode_part = spec
    mode = next((m for m in MODES if mode_part == m or mode_part.startswith(m + "_")), None)
    if mode is not None:
        _apply_opts(mode_part[len(mode) :], fields, spec)
    else:
        if "+" in spec:
            raise ValueError(f"method {spec!r}: unknown mode in {mode_part!r}; choose from {MODES}")
        base, rest = _base_name(mode_part)
        if base is None:
            raise ValueError(f"method {spec!r}: neither a mode {MODES} nor a sparse base")
        mode = "sparse"
        _apply_opts(rest, fields, spec)
    if mode == "dense":
        return Method(spec, None)
    cfg = {**defaults, **fields, "mode": mode}
    if base is not None:
        cfg["sparse"] = base
    return Method(spec, DeltaConfig(**cfg))


def parse_methods(specs: str | Sequence[str], defaults: dict | None = None) -> list[Method]:
    """Comma-separated (or listed) method specs, de-duplicated, in order."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    out: list[Method] = []
    for s in items:
        if s.strip() and all(m.name != s.strip() for m in out):
            out.append(parse_method(s, defaults))
    if not out:
        raise ValueError("no methods given")
    return out


def defaults_from_args(args) -> dict:
    """DeltaConfig defaults from the common CLI options (``--base --window --sink --gamma ...``)."""
    d = {
        "sparse": args.base,
        "window": args.window,
        "sink": args.sink,
        "gamma": args.gamma,
        "block_size": args.block_size,
        "vertical_size": args.vertical_size,
        "slash_size": args.slash_size,
        "backend": args.backend,
    }
    if getattr(args, "tail", None) is not None:
        d["tail"] = args.tail
    return d
