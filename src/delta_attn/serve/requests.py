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
MAX_TOKENS = 2**31 - 1  # a reply length is counted in int32 like the config's fields (delta_attn.config)

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
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
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
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    chat_template_kwargs: dict[str, Any] | None = None

    def settings(self, base: DeltaConfig) -> Settings:
        return _settings(self, base, self.max_completion_tokens or self.max_tokens)


class CompletionBody(_Body):
    prompt: str = Field(min_length=1)
    suffix: str | None = None

    def settings(self, base: DeltaConfig) -> Settings:
        return _settings(self, base, self.max_tokens)


MAX_JSON_DEPTH = 64  # a real request nests ~6 levels (body, messages, a message, content parts, a part)


def parse_json(raw: bytes) -> dict:
    """The request body as a JSON object of plain text: at most :data:`MAX_JSON_DEPTH` levels deep, every
    string (and key) valid Unicode. Runs off the event loop (a 4 MB body takes tens of milliseconds)."""
    try:
        body = json.loads(raw)
    except RecursionError:  # the C parser gives up near 1,000 levels
        raise APIError(
            f"the request body nests JSON too deeply (over {MAX_JSON_DEPTH} levels)", code="invalid_json"
        ) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise APIError(f"the request body is not valid JSON ({_one_line(exc)})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(f"the request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    _check_tree(body)
    return body


def _clip(text: str, limit: int = 80) -> str:
    """A client's text quoted in a message: at most ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _check_tree(body: dict) -> None:
    """Depth and text checks over the parsed body, iteratively (a recursive walk could itself overflow).

    A lone UTF-16 surrogate (``"\\ud800"`` in JSON is legal syntax but no character) cannot be encoded
    to UTF-8, so the tokenizer would fail on it later; it is refused here, naming where it is.
    """
    stack: list[tuple[object, int, str]] = [(body, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise APIError(
                f"the request body nests JSON {depth}+ levels deep (at {path or 'the top'}); at most "
                f"{MAX_JSON_DEPTH} are accepted",
                param=path.split(".", 1)[0] or None,
                code="invalid_json",
            )
        if isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else key
                _check_text(key, where, "a key")
                stack.append((item, depth + 1, where))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, f"{path}.{i}") for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, path, "the text")


def _check_text(text: str, path: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        where = _printable(path)
        raise APIError(
            f"invalid {where!r}: {what} holds a lone UTF-16 surrogate (\\u{ord(text[exc.start]):04x} at "
            f"character {exc.start}), which is not a character; send text as valid Unicode (a character "
            "outside the BMP is one surrogate pair)",
            param=where.split(".", 1)[0] or None,
            code="invalid_unicode",
        ) from None


def _printable(path: str) -> str:
    """``path`` without surrogates of its own (a key may hold them), for the message."""
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


def parse(
    kind: type[ChatBody] | type[CompletionBody], body: dict, allowed: frozenset[str]
) -> ChatBody | CompletionBody:
    """``body`` checked against ``kind``; ``allowed`` are the field names transformers' schema knows."""
    unknown = sorted(set(body) - allowed - {"delta"})
    if unknown:
        name = _clip(unknown[0])
        raise APIError(f"unknown field {name!r} (this endpoint takes {sorted(allowed | {'delta'})})", param=name)
    for name, neutral in _NEUTRAL.items():
        if body.get(name) is not None and body[name] not in neutral:
            raise APIError(
                f"{name}={_clip(repr(body[name]))} is not supported by this server", param=name, code="unsupported"
            )
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
