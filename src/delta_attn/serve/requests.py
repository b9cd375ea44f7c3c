"""Request bodies: checked field by field before anything runs, every mistake an :class:`APIError`.

The field names a request may carry are transformers' serving schemas (its ``TypedDict`` request types
built on the ``openai`` package's), plus ``delta``; pydantic models here check the types and ranges of
the fields this server acts on. Fields of the schema that would change the answer in a way this server
does not implement (``logprobs``, ``tools``, penalties, ``n`` > 1, ...) are refused unless they carry
their neutral value, rather than silently ignored; the rest (``user``, ``metadata``, ...) are accepted
and have no effect.

``"delta": {...}`` overrides the server's :class:`~delta_attn.DeltaConfig` for one request: any of its
fields, validated by ``DeltaConfig`` itself (its error message is the answer's message).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import DeltaConfig
from .engine import Settings
from .errors import APIError

MAX_STOP_STRINGS = 4  # OpenAI's limit

# fields of the schemas whose effect this server does not implement: accepted only with these neutral values
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "best_of": (1,),
    "echo": (False,),
    "logprobs": (False, 0),
    "top_logprobs": (0,),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logit_bias": ({},),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
    "response_format": ({"type": "text"},),
    "generation_config": (),
    "audio": (),
    "modalities": (["text"],),
    "prediction": (),
    "reasoning_effort": (),
    "web_search_options": (),
}


class _Body(BaseModel):
    """Fields both endpoints share. Strict: ``"5"`` is not an int and ``true`` is not a number."""

    model_config = ConfigDict(strict=True, extra="allow")

    model: str | None = None
    stream: bool | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    delta: dict[str, Any] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _check_stop(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        if value is None or (
            isinstance(items, list) and all(isinstance(s, str) and s for s in items) and len(items) <= MAX_STOP_STRINGS
        ):
            return value
        raise ValueError(f"expected a non-empty string or a list of at most {MAX_STOP_STRINGS} non-empty strings")


class _TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    type: Literal["text", "input_text"]
    text: str


class _Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _check_content(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(
            isinstance(p, dict) and p.get("type") in ("text", "input_text") for p in value
        ):
            return value
        raise ValueError("expected a string or a list of text parts ({'type': 'text', 'text': ...})")


class ChatBody(_Body):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    chat_template_kwargs: dict[str, Any] | None = None

    def settings(self, base: DeltaConfig) -> Settings:
        return _settings(self, base, self.max_completion_tokens or self.max_tokens)


class CompletionBody(_Body):
    prompt: str = Field(min_length=1)
    suffix: str | None = None

    def settings(self, base: DeltaConfig) -> Settings:
        return _settings(self, base, self.max_tokens)


def parse_json(raw: bytes) -> dict:
    """The request body as a JSON object."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise APIError(f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(f"the request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


def parse(
    kind: type[ChatBody] | type[CompletionBody], body: dict, allowed: frozenset[str]
) -> ChatBody | CompletionBody:
    """``body`` checked against ``kind``; ``allowed`` are the field names transformers' schema knows."""
    unknown = sorted(set(body) - allowed - {"delta"})
    if unknown:
        raise APIError(
            f"unknown field {unknown[0]!r} (this endpoint takes {sorted(allowed | {'delta'})})", param=unknown[0]
        )
    for name, neutral in _NEUTRAL.items():
        if body.get(name) is not None and body[name] not in neutral:
            raise APIError(f"{name}={body[name]!r} is not supported by this server", param=name, code="unsupported")
    try:
        return kind.model_validate(body)
    except ValidationError as exc:
        raise _as_api_error(exc) from None


def _as_api_error(exc: ValidationError) -> APIError:
    error = exc.errors(include_url=False)[0]
    loc = [str(p) for p in error["loc"] if not _is_union_tag(p)]
    param = ".".join(loc) or None
    if error["type"] == "missing":
        return APIError(f"missing required field {param!r}", param=param)
    message = error["msg"].removeprefix("Value error, ")
    got = json.dumps(error.get("input"), default=str)[:80]
    return APIError(f"invalid {param!r}: {message[:1].lower()}{message[1:]} (got {got})", param=param)


def _is_union_tag(part: Any) -> bool:
    """pydantic names the member of a union it tried (``'str'``, ``'list[_TextPart]'``) inside error locations."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "none") or "[" in part)


def delta_config(base: DeltaConfig, override: Mapping[str, Any] | None) -> DeltaConfig:
    """``base`` with the fields of ``override`` replaced; a field ``DeltaConfig`` lacks or rejects is an APIError."""
    if not override:
        return base
    known = {f.name for f in dataclasses.fields(DeltaConfig)}
    unknown = sorted(set(override) - known)
    if unknown:
        raise APIError(f"delta: unknown setting {unknown[0]!r}; DeltaConfig has {sorted(known)}", param="delta")
    if "sparse" in override and not isinstance(override["sparse"], str):
        raise APIError(f"delta: sparse must be a method name, got {override['sparse']!r}", param="delta")
    try:
        return base.replace(**override)
    except (TypeError, ValueError) as exc:
        raise APIError(f"delta: {exc}", param="delta") from None


def _settings(body: _Body, base: DeltaConfig, max_tokens: int | None) -> Settings:
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return Settings(
        config=delta_config(base, body.delta),
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,  # OpenAI's default
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=stop,
    )
