"""Rope scaling at load time (``--rope-scaling yarn:FACTOR[:ORIGINAL]``): running a model past its trained context.

YaRN (Peng et al. 2023, arXiv:2309.00071) stretches the rotary frequencies of a RoPE model so that positions up
to ``factor × original`` stay in the range the model saw in training, and scales cos/sin by
``0.1·ln(factor) + 1``. Qwen's model card for Qwen2.5-Coder recommends exactly this for prompts beyond 32K
(``{"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}``). transformers implements it
(``ROPE_INIT_FUNCTIONS["yarn"]`` in ``modeling_rope_utils``), read by the rotary embedding of models whose
config carries ``rope_parameters`` (Llama, Qwen2, ...); this module only sets that config.

Why at load and never in the model cache: the de-quantised copy under ``<cache>/models/`` is keyed by the
GGUF's sha256 alone and must stay the model as trained; the scaling is applied to a copy of the config each
time the weights load. transformers' YaRN is static (the same stretched frequencies at every position, short
prompts included), so a scaled run is another model setting: result records carry it in their ``config``
(:func:`delta_attn.eval.records.record_config`), and resume never mixes scaled with unscaled records.

Nothing here imports torch or transformers at module level (``--help`` parses ``--rope-scaling``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

#: rope types ``--rope-scaling`` accepts (transformers has more; YaRN is the one the models we run recommend)
ROPE_TYPES = ("yarn",)
TITLES = {"yarn": "YaRN"}
SYNTAX = "yarn:FACTOR or yarn:FACTOR:ORIGINAL_CONTEXT (e.g. yarn:4 or yarn:4:32768), or none"


class RopeScalingError(ValueError):
    """A rope scaling this model cannot take (the command line reports it as a usage error)."""


@dataclass(frozen=True)
class RopeScaling:
    """A rope scaling as given: ``kind`` (``"yarn"``), ``factor`` > 1 and the trained context ``original``
    (None: the model's own context length, read from its header or config when it loads)."""

    kind: str
    factor: float
    original: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ROPE_TYPES:
            raise ValueError(f"unknown rope scaling type {self.kind!r}; expected {SYNTAX}")
        if not (isinstance(self.factor, (int, float)) and math.isfinite(self.factor) and self.factor > 1):
            raise ValueError(f"the {self.kind} factor must be a finite number > 1, got {self.factor}")
        if self.original is not None and (not isinstance(self.original, int) or self.original < 1):
            raise ValueError(f"the original context must be a positive integer, got {self.original}")

    def resolved(self, trained_context: int) -> RopeScaling:
        """This scaling with ``original`` filled in from the model's ``trained_context`` when not given."""
        return self if self.original is not None else RopeScaling(self.kind, self.factor, int(trained_context))

    @property
    def spec(self) -> str:
        """How records and messages name it: ``yarn:4:32768`` (``yarn:4`` while ``original`` is unresolved)."""
        text = f"{self.kind}:{self.factor:g}"
        return text if self.original is None else f"{text}:{self.original}"

    @property
    def title(self) -> str:
        """How prose names it: ``YaRN factor 4``."""
        return f"{TITLES.get(self.kind, self.kind)} factor {self.factor:g}"

    @property
    def context_length(self) -> int:
        """Positions the scaled model covers: ``factor × original`` (``original`` must be resolved)."""
        if self.original is None:
            raise ValueError(f"{self.spec}: the original context is not resolved yet")
        return int(self.factor * self.original)


def parse_rope_scaling(text: str) -> RopeScaling | None:
    """``none`` -> None; ``yarn:4`` / ``yarn:4:32768`` -> :class:`RopeScaling`; anything else: ``ValueError``."""
    parts = [p.strip() for p in text.strip().split(":")]
    if parts == ["none"]:
        return None
    if parts[0] not in ROPE_TYPES:
        raise ValueError(f"unknown rope scaling type {parts[0]!r}; expected {SYNTAX}")
    if len(parts) not in (2, 3):
        raise ValueError(f"expected {SYNTAX}, got {text!r}")
    try:
        factor = float(parts[1])
    except ValueError:
        raise ValueError(f"the {parts[0]} factor must be a number, got {parts[1]!r}") from None
    original = None
    if len(parts) == 3:
        try:
            original = int(parts[2])
        except ValueError:
            raise ValueError(f"the original context must be an integer, got {parts[2]!r}") from None
    return RopeScaling(parts[0], factor, original)


def check_model_type(model_type: str | None, where: str) -> None:
    """Refuse, before any weight loads, a transformers model type whose config has no ``rope_parameters`` (its
    rotary embedding, if any, would ignore the scaling). An unknown type is left to :func:`check_applied`."""
    from transformers import CONFIG_MAPPING

    if not model_type or model_type not in CONFIG_MAPPING:
        return
    config_class = CONFIG_MAPPING[model_type]
    if "rope_parameters" not in getattr(config_class, "__dataclass_fields__", {}) and not hasattr(
        config_class, "rope_parameters"
    ):
        raise RopeScalingError(
            f"{where}: transformers' {config_class.__name__} has no rope_parameters, so --rope-scaling cannot apply "
            "to this model; run it without --rope-scaling"
        )


def scaled_config(config, scaling: RopeScaling, where: str):
    """A copy of the transformers ``config`` with ``scaling`` in its (text) config's ``rope_parameters`` and
    ``max_position_embeddings`` = factor × original. Raises :class:`RopeScalingError` for a config without
    rope parameters, with per-layer ones, or already scaled."""
    config = copy.deepcopy(config)
    text = config.get_text_config()
    params = getattr(text, "rope_parameters", None)
    if not isinstance(params, dict) or not params:
        raise RopeScalingError(
            f"{where}: transformers' {type(text).__name__} has no rope_parameters, so --rope-scaling cannot apply "
            "to this model; run it without --rope-scaling"
        )
    nested = getattr(text, "nested_rope_parameter_keys", lambda p: [])(params)
    if nested:
        raise RopeScalingError(
            f"{where}: {type(text).__name__} has rope parameters per layer type ({', '.join(nested)}); "
            "--rope-scaling supports one global RoPE only"
        )
    current = params.get("rope_type", params.get("type", "default"))
    if current != "default":
        raise RopeScalingError(
            f"{where}: the model's config already scales its RoPE ({current}: {params}); pass --rope-scaling none "
            "(the default) to run it as configured"
        )
    scaling = scaling.resolved(text.max_position_embeddings)
    params = {k: v for k, v in params.items() if k != "type"}
    params.update(rope_type=scaling.kind, factor=float(scaling.factor))
    params["original_max_position_embeddings"] = scaling.original
    text.rope_parameters = params
    # the scaled model's reach, as Qwen's YaRN configs state it; transformers' YaRN reads factor and original,
    # and its check that max_position_embeddings / original == factor then holds
    text.max_position_embeddings = scaling.context_length
    return config


def check_applied(model, scaling: RopeScaling, where: str) -> None:
    """Every rotary embedding of the loaded ``model`` uses ``scaling``'s type: a model class whose rotary
    embedding ignores ``rope_parameters`` would otherwise run unscaled under a scaled label."""
    rotaries = [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "rope_type")]
    wrong = sorted({f"{type(m).__name__} ({m.rope_type})" for m in rotaries if m.rope_type != scaling.kind})
    if not rotaries or wrong:
        found = ", ".join(wrong) if wrong else "no rotary embedding with a rope_type"
        raise RopeScalingError(
            f"{where}: transformers' {type(model).__name__} did not apply --rope-scaling {scaling.spec} "
            f"(found {found}); run it without --rope-scaling"
        )
