"""``/v1/chat/completions`` and ``/v1/completions``: transformers' serving handlers with Δ generation.

The classes below subclass transformers' ``ChatCompletionHandler`` and ``CompletionHandler`` and keep
their OpenAI response builders (the ``ChatCompletion`` / ``Completion`` objects and the SSE chunks of
``openai.types``), their request schemas (:mod:`.requests` checks field names against them) and their
message conversion. ``handle_request`` is replaced: the stock one loads models through transformers'
``ModelManager`` (which refuses ``attn_implementation="delta"`` and fails on GGUF configs without
``architectures``) and generates with ``model.generate`` (one-shot prefill, a process-wide seed, stop
strings left in the reply, errors as ``{"detail": ...}``). Here a request is checked
(:mod:`.requests`), tokenized, and run by the :class:`~delta_attn.serve.engine.Engine` through
:func:`delta_attn.generation.generate`: chunked Δ prefill, dense decode, a seed per request.

A stream ends with ``data: [DONE]``; a client that disconnects cancels its job (the worker stops at
the next token).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

from fastapi.responses import JSONResponse, StreamingResponse
from openai.types import Completion, CompletionChoice, CompletionUsage

from ..compat import chat_completion, request_fields, serving_handler_bases, stream_chunk
from .engine import Engine, Job, Outcome
from .errors import LOG, SERVER_ERROR, APIError, error_body
from .requests import ChatBody, CompletionBody, parse

DONE = "data: [DONE]\n\n"
ChatCompletionHandler, _CompletionHandler, Modality = serving_handler_bases()


def _usage(outcome: Outcome) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        total_tokens=outcome.prompt_tokens + outcome.completion_tokens,
    )


def _check_model(engine: Engine, requested: str | None) -> str:
    name = engine.served.name
    if requested is not None and requested != name:
        raise APIError(
            f"the model {requested!r} does not exist: this server serves {name!r}",
            status=404,
            type="not_found_error",
            param="model",
            code="model_not_found",
        )
    return name


async def _result(engine: Engine, job: Job) -> Outcome:
    # shield: if this request's task is cancelled (server shutdown), the worker still resolves the future
    return await asyncio.shield(engine.submit(job))


def _stream(
    engine: Engine, job: Job, head: list[str], piece: Callable[[str], str], tail: Callable[[Outcome], list[str]]
) -> StreamingResponse:
    """Queue ``job`` now and stream its text as SSE events: ``head``, one ``piece(text)`` per new text, ``tail``."""
    loop = asyncio.get_running_loop()
    texts: asyncio.Queue[str | None] = asyncio.Queue()
    job.on_text = lambda text: loop.call_soon_threadsafe(texts.put_nowait, text)
    future = engine.submit(job)
    # the worker hands over texts and the result through the loop in order, so None comes after the last text
    future.add_done_callback(lambda _: texts.put_nowait(None))

    async def events() -> AsyncIterator[str]:
        try:
            for event in head:
                yield event
            while (text := await texts.get()) is not None:
                yield piece(text)
            if future.exception() is not None:  # a bug: logged with its traceback, reported in the stream
                LOG.error("%s failed", job.request_id, exc_info=future.exception())
                message = f"the server failed on this request ({type(future.exception()).__name__})"
                yield f"data: {json.dumps(error_body(message, SERVER_ERROR))}\n\n"
                return
            for event in tail(future.result()):
                yield event
            yield DONE
        except (asyncio.CancelledError, GeneratorExit):  # the client went away: free the worker
            job.cancel()
            raise

    return StreamingResponse(events(), media_type="text/event-stream")


class ChatHandler(ChatCompletionHandler):
    """``POST /v1/chat/completions``: the model's chat template around ``messages``."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(model_manager=None, generation_state=None)  # both replaced by the engine
        self.engine = engine

    async def handle_request(self, body: dict, request_id: str) -> StreamingResponse | JSONResponse:
        request = parse(ChatBody, body, request_fields(self))
        model_id = _check_model(self.engine, request.model)
        settings = request.settings(self.engine.config)
        self.engine.check_config(settings.config, "delta")
        job = self.engine.job(request_id, "chat", self._prompt_ids(body["messages"], request), settings)
        if request.stream:
            return _stream(
                self.engine,
                job,
                head=[stream_chunk(self, request_id, role="assistant", model=model_id)],
                piece=lambda text: stream_chunk(self, request_id, content=text, model=model_id),
                tail=lambda out: [
                    stream_chunk(self, request_id, finish_reason=out.finish_reason, model=model_id, usage=_usage(out))
                ],
            )
        outcome = await _result(self.engine, job)
        completion = chat_completion(self, request_id, outcome.text, model_id, outcome.finish_reason, _usage(outcome))
        return JSONResponse(completion)

    def _prompt_ids(self, messages: list[dict], request: ChatBody) -> list[int]:
        tokenizer = self.engine.served.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise APIError("this model has no chat template: use /v1/completions with a plain prompt", param="messages")
        conversation = self.get_processor_inputs_from_messages(messages, Modality.LLM)
        try:
            text = tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=False, **(request.chat_template_kwargs or {})
            )
        except Exception as exc:  # a template error is about these messages (e.g. roles in an order it refuses)
            raise APIError(f"the model's chat template refused these messages: {exc}", param="messages") from None
        return tokenizer(text, add_special_tokens=False)["input_ids"]


class CompletionHandler(_CompletionHandler):
    """``POST /v1/completions``: the ``prompt`` as it is (no chat template), then ``suffix`` if given."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(model_manager=None, generation_state=None)  # both replaced by the engine
        self.engine = engine

    async def handle_request(self, body: dict, request_id: str) -> StreamingResponse | JSONResponse:
        request = parse(CompletionBody, body, request_fields(self))
        model_id = _check_model(self.engine, request.model)
        settings = request.settings(self.engine.config)
        self.engine.check_config(settings.config, "delta")
        prompt_ids = self.engine.served.tokenizer(request.prompt)["input_ids"]
        job = self.engine.job(request_id, "completion", prompt_ids, settings)
        suffix = request.suffix or ""
        if request.stream:

            def tail(out: Outcome) -> list[str]:
                last = stream_chunk(self, request_id, model_id, finish_reason=out.finish_reason, usage=_usage(out))
                return ([stream_chunk(self, request_id, model_id, text=suffix)] if suffix else []) + [last]

            return _stream(
                self.engine,
                job,
                head=[],
                piece=lambda text: stream_chunk(self, request_id, model_id, text=text),
                tail=tail,
            )
        outcome = await _result(self.engine, job)
        completion = Completion(
            id=request_id,
            created=int(time.time()),
            model=model_id,
            object="text_completion",
            choices=[CompletionChoice(text=outcome.text + suffix, index=0, finish_reason=outcome.finish_reason)],
            usage=_usage(outcome),
        )
        return JSONResponse(completion.model_dump(exclude_none=True))
