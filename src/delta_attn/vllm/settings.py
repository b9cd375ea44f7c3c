"""The backend's settings, read from vLLM's ``additional_config["delta"]`` (no vLLM import here).

``vllm serve MODEL --attention-backend CUSTOM --additional-config '{"delta": {"window": 2048, "gamma": 64}}'``
passes a JSON object whose keys are :class:`~delta_attn.DeltaConfig` fields, plus one key of the vLLM
integration, ``min_prompt``: prompts shorter than that run vLLM's stock FlashAttention (for them Δ saves
nothing). :class:`DeltaConfig` validates the fields itself; errors name the field and the setting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import DeltaConfig

#: the key of ``VllmConfig.additional_config`` that holds the settings
ADDITIONAL_CONFIG_KEY = "delta"
#: the settings of the vLLM integration that are not DeltaConfig fields
VLLM_ONLY_FIELDS = ("min_prompt",)


def default_min_prompt(config: DeltaConfig) -> int:
    """Shortest prompt that takes the Δ path by default: 2 × (sink + window).

    Below that a sink + window base already sees most keys of most rows, so Δ costs about what dense costs
    and stock FlashAttention is both exact and faster.
    """
    return 2 * (config.sink + config.window)


@dataclass(frozen=True)
class VllmDeltaSettings:
    """What the vLLM backend runs: the Δ config and which prompts take the Δ path.

    config:     the :class:`DeltaConfig` of every Δ layer (``dense_layers`` keeps layers on stock FA).
    min_prompt: prompts with fewer tokens run stock FlashAttention for every row; longer prompts run Δ on
                their prompt rows (decode rows always run stock FlashAttention).
    """

    config: DeltaConfig
    min_prompt: int

    def takes_delta(self, prompt_len: int) -> bool:
        """Whether a prompt of ``prompt_len`` tokens is prefilled with Δ."""
        return prompt_len >= self.min_prompt

    def describe(self) -> str:
        c = self.config
        return (
            f"Δ {c.mode} {c.method_name}, sink {c.sink}, window {c.window}, gamma {c.gamma}, interp {c.interp}, "
            f"delta_scale {c.delta_scale}, tail {c.min_tail}; prompts of >= {self.min_prompt} tokens"
        )


def parse_settings(additional_config: Mapping[str, Any] | None) -> VllmDeltaSettings:
    """The settings in ``additional_config["delta"]`` (defaults when absent).

    Raises ``ValueError``/``TypeError`` naming the offending field: an unknown key (with the list of known
    ones), a value :class:`DeltaConfig` refuses (its own message), a ``min_prompt`` that is not an int ≥ 1, or
    a non-causal setting — vLLM prefills long prompts in chunks, and a non-causal Δ variant (``interp="linear"``,
    ``delta_scale="auto-global"``, ``extra_anchors > 0``) reads anchors that come in later chunks.
    """
    where = f"additional_config[{ADDITIONAL_CONFIG_KEY!r}]"
    raw: Any = None
    if additional_config is not None:
        if not isinstance(additional_config, Mapping):
            raise TypeError(f"vLLM's additional_config must be a JSON object, got {type(additional_config).__name__}")
        raw = additional_config.get(ADDITIONAL_CONFIG_KEY)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise TypeError(
            f"{where} must be a JSON object of DeltaConfig fields, e.g. "
            f'{{"{ADDITIONAL_CONFIG_KEY}": {{"window": 2048, "gamma": 64}}}}; got {raw!r}'
        )
    fields = dict(raw)
    min_prompt = fields.pop("min_prompt", None)
    known = {f.name for f in dataclasses.fields(DeltaConfig)}
    unknown = sorted(k for k in fields if k not in known)
    if unknown:
        raise ValueError(
            f"{where}: unknown field {unknown[0]!r}; the fields are DeltaConfig's "
            f"({', '.join(sorted(known))}) and {', '.join(VLLM_ONLY_FIELDS)}"
        )
    if "sparse" in fields and not isinstance(fields["sparse"], str):
        raise TypeError(
            f"{where}: field 'sparse' must be a registered method name (a string), got {fields['sparse']!r}"
        )
    try:
        config = DeltaConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: {exc}") from exc
    if not config.is_causal:
        raise ValueError(
            f"{where}: {config.non_causal_reason} is non-causal (rows read later anchors), but vLLM prefills long "
            "prompts in chunks; choose interp 'repeat'/'ema'/'abg', delta_scale a float, 'auto' or 'auto-decay', "
            "extra_anchors 0"
        )
    if min_prompt is None:
        min_prompt = default_min_prompt(config)
    elif isinstance(min_prompt, bool) or not isinstance(min_prompt, int) or min_prompt < 1:
        raise ValueError(f"{where}: field 'min_prompt' must be an int >= 1 (prompt tokens), got {min_prompt!r}")
    return VllmDeltaSettings(config=config, min_prompt=min_prompt)
