"""The FastAPI application: the OpenAI routes of one served model.

Routes: ``GET /health``, ``GET /v1/models`` (and ``/v1/models/{id}``), ``POST /v1/chat/completions``,
``POST /v1/completions``. transformers' ``build_server`` is not used: its route table serves its own
model manager (listing the Hugging Face cache in ``/v1/models``, loading models per request, routes for
responses, audio and model loading), its parameters change within the transformers versions this
package supports, and its errors are FastAPI's ``{"detail": ...}``.

The request bodies are read here, not by FastAPI, so that:

* a body over ``max_body`` bytes is refused (413) **before** it is read into memory or parsed: by its
  ``Content-Length`` at once, or, sent in chunks, as soon as the bytes received pass the limit;
* the JSON parsing, the checks and the tokenisation run on a small thread pool, not on the event loop,
  which keeps answering ``/health`` and streaming other replies meanwhile;
* malformed JSON is an OpenAI error like every other.
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from .engine import Engine
from .errors import APIError, install_error_handlers, internal_error
from .handlers import ChatHandler, CompletionHandler
from .requests import parse_json

DEFAULT_MAX_BODY = 4 * 1024 * 1024  # bytes: a 128K-token prompt is ~0.5 MB of text


def _too_large(limit: int, size: int | None) -> APIError:
    got = f"{size} bytes" if size is not None else "more bytes than that"
    return APIError(
        f"the request body is too large: {got}, over this server's limit of {limit} bytes "
        "(delta-attn serve --max-body)",
        status=413,
        code="request_too_large",
        headers={"connection": "close"},  # the rest of the body is not read: this connection cannot be reused
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with a 413 :class:`APIError` as soon as it is known to pass ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise APIError(f"invalid Content-Length header {declared[:40]!r}") from None
        if size > limit:
            raise _too_large(limit, size)
    chunks, received = [], 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(limit, None if declared is None else received)
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(engine: Engine, *, max_body: int = DEFAULT_MAX_BODY) -> FastAPI:
    """An ASGI app serving ``engine``'s model (run it with uvicorn); bodies over ``max_body`` bytes get a 413."""
    from .. import __version__

    app = FastAPI(title="delta-attn serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    # parsing, validation and tokenisation: off the event loop, two at a time (a third request waits its turn)
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="delta-attn-parse")
    chat, completion = ChatHandler(engine, pool), CompletionHandler(engine, pool)
    served = engine.served

    def model_card() -> dict:
        return {"id": served.name, "object": "model", "created": served.created, "owned_by": "delta-attn"}

    @app.get("/health")
    def health() -> dict:
        return {"status": "stopping" if engine.closing else "ok", "model": served.name, "pending": engine.pending}

    @app.get("/v1/models")
    def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str) -> dict:
        if model_id != served.name:
            raise APIError(
                f"the model {model_id[:200]!r} does not exist: this server serves {served.name!r}",
                status=404,
                type="not_found_error",
                param="model",
                code="model_not_found",
            )
        return model_card()

    async def answer(handler, prefix: str, request: Request) -> Response:
        request_id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        request.state.request_id = request_id
        try:
            raw = await read_body(request, max_body)
            body = await asyncio.get_running_loop().run_in_executor(pool, parse_json, raw)
            del raw
            response = await handler.handle_request(body, request_id, request)
        except APIError:
            raise  # answered by the APIError handler (one log line)
        except ClientDisconnect:  # the client left while sending its body: nobody to answer
            return Response(status_code=499)
        except Exception as exc:  # noqa: BLE001 - a bug: a 500 OpenAI body and one log line, never a traceback
            raise internal_error(exc) from None
        response.headers["x-request-id"] = request_id
        return response

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await answer(chat, "chatcmpl", request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await answer(completion, "cmpl", request)

    return app
