"""Method specs: the one vocabulary naming a :class:`delta_attn.DeltaConfig` in eval, bench, demo, generate, serve.

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
    delta_l0.5             Δ scaled by λ = 0.5 (``delta_scale``; docs/algorithm.md §13)
    delta_auto             λ fitted causally from the anchors (``delta_scale="auto"``)
    delta_autod            λ_auto averaged over the block under geometric decay (``"auto-decay"``, causal)
    delta_autog            λ fitted on all anchors of the call (``"auto-global"``, non-causal; the one spelling:
                           ``delta_global`` is refused)
    delta_x25              a second dense row in 25 % of the γ-blocks (``extra_anchors=0.25``, non-causal)
    delta_g16_auto         options compose

BASE is a registered sparse method (``streaming``, ``block``, ``vertical_slash``/``vs``, ``topk``);
without one, the ``--base`` default applies (streaming). MODE is a :class:`DeltaConfig` mode.
Options (on either part, ``_``-separated):

    g<int>  γ (anchor stride)       w<int>  window        s<int>  sink tokens     t<int>  tail rows
    b<int>  block_size (block)      v<int>  vertical_size  d<int>  slash_size (diagonals)
    k<int>  topk_blocks             repeat | linear | ema[<β>] | abg[<α>]   interpolation of Δ
    l<λ>    delta_scale λ in [0, 1]  auto | autod | autog   delta_scale "auto" / "auto-decay" / "auto-global"
    x<int>  extra_anchors in percent of the γ-blocks (x25 = 0.25)

Anything not given comes from the defaults (CLI: ``--base --window --sink --gamma --block-size ...``).
The spec string itself is the method's name in every output file and table.

This module parses a spec (:func:`parse_method`), names what decides its results (:func:`canonical_config`)
and describes it (:func:`describe_config` for legends, :func:`describe_settings` for logs); the command
line's ``DeltaConfig`` fields come from :func:`settings_from_args`; :func:`config_expression` writes a config
back as a line of Python.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import BUILTIN_SPARSE_METHODS, MODES, DeltaConfig

BASE_ALIASES = {"vs": "vertical_slash", "stream": "streaming", "str": "streaming"}
_OPT = re.compile(r"^(g|w|s|t|b|v|d|k)(\d+)$|^(repeat|linear)$|^(ema|abg)(\d*\.?\d*)$")
_VARIANT_OPT = re.compile(r"^l(\d*\.?\d+)$|^x(\d+)$")
#: the spec words of DeltaConfig.delta_scale's data-driven forms (docs/algorithm.md §13): a new form is one
#: entry here (its value one of config.DELTA_SCALE_MODES)
DELTA_SCALE_WORDS = {"auto": "auto", "autod": "auto-decay", "autog": "auto-global"}
#: spellings that once named a variant elsewhere, refused with the one spelling to use instead
RETIRED_WORDS = {"global": "autog"}
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
        return describe_config(self.canonical())

    def config_dict(self) -> dict | None:
        """Every :class:`DeltaConfig` field (None for dense): what the run header records."""
        if self.config is None:
            return None
        d = dataclasses.asdict(self.config)
        d["sparse"] = self.config.method_name
        return d

    def canonical(self) -> dict:
        """The settings that decide this method's results (see :func:`canonical_config`)."""
        return canonical_config(self.config)


#: the DeltaConfig fields each built-in sparse base reads
BASE_FIELDS = {
    "streaming": ("sink", "window"),
    "topk": ("sink", "window", "topk_block", "topk_blocks"),
    "block": ("block_size",),
    "vertical_slash": ("vertical_size", "slash_size", "vs_last_q", "vs_first_columns", "vs_last_diagonals"),
    "dense": (),
}
_ALL_BASE_FIELDS = tuple(sorted({f for fields in BASE_FIELDS.values() for f in fields}))


def canonical_config(config) -> dict:
    """The fields of ``config`` (a :class:`DeltaConfig`, None = the model's dense attention) that decide
    its results, as a sorted dict: two configs give the same outputs iff their canonical dicts are equal.

    Only what the method reads is kept (the base's own options; γ, the effective tail and the
    interpolation's parameters for ``delta``/``recompute``), so e.g. ``--block-size`` does not make a
    streaming run differ. ``backend`` is left out: it changes rounding, not the method.
    """
    if config is None or config.mode == "dense":
        return {"mode": "dense"}
    base = config.method_name
    d: dict = {"mode": config.mode, "sparse": base}
    for name in BASE_FIELDS.get(base, _ALL_BASE_FIELDS):  # an unknown (user) base: keep every base option
        d[name] = getattr(config, name)
    if config.mode in ("delta", "recompute"):
        d["gamma"] = config.gamma
        d["tail"] = config.min_tail
    if config.mode == "delta":
        d["interp"] = config.interp
        if config.interp == "ema":
            d["ema_beta"] = config.ema_beta
        elif config.interp == "abg":
            d["abg"] = list(config.abg_coefficients)
        # the Δ variants (docs/algorithm.md §13) only when not the paper's: records written before these
        # fields existed then keep comparing equal (they resume and report as before)
        if config.delta_scale != 1.0:
            d["delta_scale"] = config.delta_scale
        if config.extra_anchors:
            d["extra_anchors"] = config.extra_anchors
    dl = config.dense_layers
    layers = list(range(dl)) if isinstance(dl, int) else sorted(set(dl))
    if layers:
        d["dense_layers"] = layers
    return dict(sorted(d.items()))


def describe_config(c: dict) -> str:
    """One line for legends from a :func:`canonical_config` dict: base and its budget, mode, γ, interpolation."""
    if c.get("mode") == "dense":
        return "dense attention (SDPA)"
    base = c.get("sparse", "?")
    if base == "streaming":
        base_s = f"streaming (sink {c['sink']} + window {c['window']})"
    elif base == "block":
        base_s = f"block (anchor block + own block, block_size {c['block_size']})"
    elif base == "vertical_slash":
        base_s = f"vertical_slash ({c['vertical_size']} columns + {c['slash_size']} diagonals)"
    elif base == "topk":
        base_s = f"topk ({c['topk_blocks']} blocks of {c['topk_block']} + sink {c['sink']} + window {c['window']})"
    else:
        base_s = base
    if "dense_layers" in c:
        base_s += f", layers {c['dense_layers']} dense"
    if c["mode"] == "sparse":
        return f"{base_s}, sparse only"
    gamma = c["gamma"]
    tail = "" if c["tail"] == DeltaConfig(gamma=gamma).min_tail else f", tail {c['tail']}"
    interp = c.get("interp", "repeat")
    if interp == "ema":
        interp_s = f", interp=ema β={c['ema_beta']}"
    elif interp == "abg":
        interp_s = f", interp=abg α={c['abg'][0]}"
    else:
        interp_s = "" if interp == "repeat" else f", interp={interp}"
    variant = ""
    if c.get("delta_scale", 1.0) != 1.0:
        variant += f", λ={c['delta_scale']}"
    if c.get("extra_anchors"):
        variant += f", extra anchors {100 * c['extra_anchors']:g}% of blocks"
    why = non_causal_reason(c)
    extra = f" (non-causal: {why})" if why else ""
    return f"{base_s} + {c['mode']} γ={gamma}{tail}{interp_s}{variant}{extra}"


def non_causal_reason(c: dict) -> str | None:
    """:attr:`DeltaConfig.non_causal_reason` of a canonical dict (None when causal, or dense)."""
    if c.get("mode") != "delta":
        return None
    fields = {k: c[k] for k in ("interp", "delta_scale", "extra_anchors") if k in c}
    return DeltaConfig(mode="delta", **fields).non_causal_reason


def canonical_from_dict(fields: dict | None) -> dict:
    """:func:`canonical_config` of a run header's recorded ``DeltaConfig`` fields (None = dense)."""
    if fields is None:
        return canonical_config(None)
    known = {f.name for f in dataclasses.fields(DeltaConfig)}
    return canonical_config(DeltaConfig(**{k: v for k, v in fields.items() if k in known}))


def _base_name(part: str) -> tuple[str | None, str]:
    """Split a leading sparse-base name off ``part`` (longest match); returns (base or None, rest)."""
    import sys

    # without delta_attn.sparse imported nothing else is registered: the built-in names, and no torch import
    known = BUILTIN_SPARSE_METHODS
    if "delta_attn.sparse" in sys.modules:
        from .sparse import available_sparse_methods

        known = available_sparse_methods()
    names = sorted(set(known) | set(BASE_ALIASES), key=len, reverse=True)
    for n in names:
        if part == n or part.startswith(n + "_"):
            return BASE_ALIASES.get(n, n), part[len(n) :]
    return None, part


def _apply_opts(opts: str, fields: dict, spec: str) -> None:
    for opt in filter(None, opts.split("_")):
        if opt in DELTA_SCALE_WORDS:
            fields["delta_scale"] = DELTA_SCALE_WORDS[opt]
            continue
        if opt in RETIRED_WORDS:
            new = RETIRED_WORDS[opt]
            raise ValueError(
                f"method {spec!r}: option {opt!r} is spelled {new!r} (e.g. delta_{new}); {opt!r} is not accepted"
            )
        v = _VARIANT_OPT.match(opt)
        if v:
            if v.group(1):
                fields["delta_scale"] = float(v.group(1))
            else:
                fields["extra_anchors"] = int(v.group(2)) / 100.0
            continue
        m = _OPT.match(opt)
        if not m:
            raise ValueError(f"method {spec!r}: unknown option {opt!r} (see delta_attn.methods for the syntax)")
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


def config_fields(config: DeltaConfig) -> dict:
    """Every field of ``config`` as a dict (shallow: a SparseMethod object stays itself), e.g. as spec defaults."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(DeltaConfig)}


def config_expression(config: DeltaConfig) -> str:
    """``config`` as a line of Python, ``DeltaConfig(window=256, sink=64, delta_scale="auto")``: the fewest
    fields whose values give the same results (equal :func:`canonical_config`). Fields at their default are
    left out, and so are those that change nothing in this mode (``interp`` of ``recompute``, say);
    ``backend`` too (it changes rounding, not the method). A base given as an object is named by its
    registered name."""
    import json

    target = canonical_config(config)
    default = DeltaConfig()
    kwargs = {}
    for f in dataclasses.fields(DeltaConfig):
        value = config.method_name if f.name == "sparse" else getattr(config, f.name)
        if f.name != "backend" and value != getattr(default, f.name):
            kwargs[f.name] = value
    for name in list(kwargs):  # drop each field the results do not depend on, given the others
        trial = {k: v for k, v in kwargs.items() if k != name}
        try:
            same = canonical_config(DeltaConfig(**trial)) == target
        except (TypeError, ValueError):  # without it the others would not be a valid config
            same = False
        if same:
            kwargs = trial
    # strings in double quotes, as the docs write them; numbers and tuples as Python prints them
    shown = ", ".join(f"{k}={json.dumps(v) if isinstance(v, str) else repr(v)}" for k, v in kwargs.items())
    return f"DeltaConfig({shown})"


def settings_from_args(args) -> dict:
    """The :class:`DeltaConfig` fields a parsed command line carries: every option whose ``dest`` is a field
    name (``--sparse/--base --window --sink --gamma --interp --tail --delta-scale ...``, ``--mode``,
    ``--dense-layers``, ``--backend`` where the command has them). A new field needs only its option."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(DeltaConfig) if hasattr(args, f.name)}


def describe_settings(config: DeltaConfig) -> str:
    """The Δ settings in a few words (logs, errors): the main ones, then every other field that differs from the
    default."""
    main = ("mode", "sparse", "sink", "window", "gamma", "interp")
    parts = [f"{config.mode} {config.method_name}", f"sink {config.sink}", f"window {config.window}"]
    parts += [f"gamma {config.gamma}", f"interp {config.interp}"]
    default = DeltaConfig()
    for f in dataclasses.fields(DeltaConfig):
        value = getattr(config, f.name)
        if f.name not in main and value != getattr(default, f.name):
            parts.append(f"{f.name} {value}")
    return ", ".join(parts)
