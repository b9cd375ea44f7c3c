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

The checks, the chat template and the tokenisation run on the app's thread pool (:meth:`_prepare`), not
on the event loop. A stream ends with ``data: [DONE]``, or with an error event when the request fails or
the server shuts down. A client that disconnects cancels its job, streaming or not: the worker stops at
the next token (or prefill chunk).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai.types import Completion, CompletionChoice, CompletionUsage

from ..compat import chat_completion, request_fields, serving_handler_bases, stream_chunk
from .engine import FINISH_CANCELLED, Engine, Job, Outcome, shutting_down_error
from .errors import APIError, error_body, internal_error, log_failure
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


CLIENT_GONE = 499  # the status logged (never sent) for a request whose client left before its answer


async def _client_gone(request: Request) -> None:
    """Returns once the client has disconnected (the body was read already: the next ASGI message is that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await asyncio.sleep(0.05)  # not expected after the body; never spin


async def _result(engine: Engine, job: Job, request: Request) -> Outcome | None:
    """``job``'s outcome; None if the client disconnected first (the job is then cancelled: the worker
    stops at its next token). A 503 :class:`APIError` when the server shuts down meanwhile."""
    future = engine.submit(job)
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({future, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # this request's task was cancelled: free the worker too
        job.cancel()
        raise
    finally:
        gone.cancel()
    if not future.done():
        job.cancel()
        return None
    outcome = future.result()  # raises what the worker raised, or the shutdown's 503
    if outcome.finish_reason == FINISH_CANCELLED:
        if engine.closing:
            raise shutting_down_error()
        return None
    return outcome


def _stream(
    engine: Engine,
    job: Job,
    head: list[str],
    piece: Callable[[str], str],
    tail: Callable[[Outcome], list[str]],
    method_path: tuple[str, str],
) -> StreamingResponse:
    """Queue ``job`` now and stream its text as SSE events: ``head``, one ``piece(text)`` per new text, ``tail``."""
    loop = asyncio.get_running_loop()
    texts: asyncio.Queue[str | None] = asyncio.Queue()
    job.on_text = lambda text: loop.call_soon_threadsafe(texts.put_nowait, text)
    future = engine.submit(job)
    # the worker hands over texts and the result through the loop in order, so None comes after the last text;
    # a shutdown fails the future at once, whatever the worker is doing
    future.add_done_callback(lambda _: texts.put_nowait(None))

    def error_event(error: APIError) -> str:
        log_failure(job.request_id, *method_path, error)
        return f"data: {json.dumps(error_body(error.message, error.type, error.param, error.code))}\n\n"

    async def events() -> AsyncIterator[str]:
        try:
            for event in head:
                yield event
            while (text := await texts.get()) is not None:
                yield piece(text)
            failure = future.exception()
            if failure is not None:  # the shutdown's 503, or a bug (one log line, a 500 error event)
                yield error_event(failure if isinstance(failure, APIError) else internal_error(failure))
                return
            outcome = future.result()
            if outcome.finish_reason == FINISH_CANCELLED:  # stopped by a shutdown the future did not see yet
                yield error_event(shutting_down_error())
                return
            for event in tail(outcome):
                yield event
            yield DONE
        except (asyncio.CancelledError, GeneratorExit):  # the client went away: free the worker
            job.cancel()
            raise

    return StreamingResponse(events(), media_type="text/event-stream")


class _Handler:
    """What both endpoints share: checks and tokenisation on the pool, then a stream or one answer."""

    engine: Engine
    pool: Executor
    endpoint: str

    async def handle_request(self, body: dict, request_id: str, request: Request) -> Response:
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self.pool, self._prepare, body, request_id)
        job, stream = prepared[0], prepared[1]
        if stream:
            return self._streaming(request_id, request, *prepared)
        outcome = await _result(self.engine, job, request)
        if outcome is None:  # nobody is left to answer; the worker's log line says "finish cancelled"
            return Response(status_code=CLIENT_GONE)
        return self._complete(request_id, outcome, *prepared)

    def _prepare(self, body: dict, request_id: str) -> tuple:
        raise NotImplementedError

    def _streaming(self, request_id: str, request: Request, *prepared) -> StreamingResponse:
        raise NotImplementedError

    def _complete(self, request_id: str, outcome: Outcome, *prepared) -> Response:
        raise NotImplementedError


class ChatHandler(_Handler, ChatCompletionHandler):
    """``POST /v1/chat/completions``: the model's chat template around ``messages``."""

    def __init__(self, engine: Engine, pool: Executor) -> None:
        super().__init__(model_manager=None, generation_state=None)  # both replaced by the engine
        self.engine, self.pool = engine, pool

    def _prepare(self, body: dict, request_id: str) -> tuple[Job, bool, str]:
        request = parse(ChatBody, body, request_fields(self))
        model_id = _check_model(self.engine, request.model)
        settings = request.settings(self.engine.config)
        self.engine.check_config(settings.config, "delta")
        job = self.engine.job(request_id, "chat", self._prompt_ids(body["messages"], request), settings)
        return job, bool(request.stream), model_id

    def _streaming(self, request_id: str, request: Request, job: Job, _: bool, model_id: str) -> StreamingResponse:
        return _stream(
            self.engine,
            job,
            head=[stream_chunk(self, request_id, role="assistant", model=model_id)],
            piece=lambda text: stream_chunk(self, request_id, content=text, model=model_id),
            tail=lambda out: [
                stream_chunk(self, request_id, finish_reason=out.finish_reason, model=model_id, usage=_usage(out))
            ],
            method_path=(request.method, request.url.path),
        )

    def _complete(self, request_id: str, outcome: Outcome, job: Job, _: bool, model_id: str) -> Response:
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
            raise APIError(
                f"the model's chat template refused these messages: {' '.join(str(exc).split())[:300]}",
                param="messages",
            ) from None
        return tokenizer(text, add_special_tokens=False)["input_ids"]


class CompletionHandler(_Handler, _CompletionHandler):
    """``POST /v1/completions``: the ``prompt`` as it is (no chat template), then ``suffix`` if given."""

    def __init__(self, engine: Engine, pool: Executor) -> None:
        super().__init__(model_manager=None, generation_state=None)  # both replaced by the engine
        self.engine, self.pool = engine, pool

    def _prepare(self, body: dict, request_id: str) -> tuple[Job, bool, str, str]:
        request = parse(CompletionBody, body, request_fields(self))
        model_id = _check_model(self.engine, request.model)
        settings = request.settings(self.engine.config)
        self.engine.check_config(settings.config, "delta")
        prompt_ids = self.engine.served.tokenizer(request.prompt)["input_ids"]
        job = self.engine.job(request_id, "completion", prompt_ids, settings)
        return job, bool(request.stream), model_id, request.suffix or ""

    def _streaming(
        self, request_id: str, request: Request, job: Job, _: bool, model_id: str, suffix: str
    ) -> StreamingResponse:
        def tail(out: Outcome) -> list[str]:
            last = stream_chunk(self, request_id, model_id, finish_reason=out.finish_reason, usage=_usage(out))
            return ([stream_chunk(self, request_id, model_id, text=suffix)] if suffix else []) + [last]

        return _stream(
            self.engine,
            job,
            head=[],
            piece=lambda text: stream_chunk(self, request_id, model_id, text=text),
            tail=tail,
            method_path=(request.method, request.url.path),
        )

    def _complete(self, request_id: str, outcome: Outcome, job: Job, _: bool, model_id: str, suffix: str) -> Response:
        completion = Completion(
            id=request_id,
            created=int(time.time()),
            model=model_id,
            object="text_completion",
            choices=[CompletionChoice(text=outcome.text + suffix, index=0, finish_reason=outcome.finish_reason)],
            usage=_usage(outcome),
        )
        return JSONResponse(completion.model_dump(exclude_none=True))
