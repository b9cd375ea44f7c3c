"""The FastAPI application: the OpenAI routes of one served model.

Routes: ``GET /health``, ``GET /v1/models`` (and ``/v1/models/{id}``), ``POST /v1/chat/completions``,
``POST /v1/completions``. transformers' ``build_server`` is not used: its route table serves its own
model manager (listing the Hugging Face cache in ``/v1/models``, loading models per request, routes for
responses, audio and model loading), its parameters change within the transformers versions this
package supports, and its errors are FastAPI's ``{"detail": ...}``. The request bodies are read here
(not by FastAPI) so that malformed JSON is an OpenAI error like every other.
"""

from __future__ import annotations

import uuid

from fastapi import FastAPI, Request
from fastapi.responses import Response

from .engine import Engine
from .errors import APIError, install_error_handlers
from .handlers import ChatHandler, CompletionHandler
from .requests import parse_json


def build_app(engine: Engine) -> FastAPI:
    """An ASGI app serving ``engine``'s model (run it with uvicorn)."""
    from .. import __version__

    app = FastAPI(title="delta-attn serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    chat, completion = ChatHandler(engine), CompletionHandler(engine)
    served = engine.served

    def model_card() -> dict:
        return {"id": served.name, "object": "model", "created": served.created, "owned_by": "delta-attn"}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": served.name, "pending": engine.pending}

    @app.get("/v1/models")
    def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str) -> dict:
        if model_id != served.name:
            raise APIError(
                f"the model {model_id!r} does not exist: this server serves {served.name!r}",
                status=404,
                type="not_found_error",
                param="model",
                code="model_not_found",
            )
        return model_card()

    async def answer(handler, prefix: str, request: Request) -> Response:
        request_id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        request.state.request_id = request_id
        body = parse_json(await request.body())
        response = await handler.handle_request(body, request_id)
        response.headers["x-request-id"] = request_id
        return response

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await answer(chat, "chatcmpl", request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await answer(completion, "cmpl", request)

    return app
