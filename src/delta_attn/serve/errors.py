"""OpenAI-style errors: one body shape for every failed request, and the FastAPI handlers that produce it.

Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status
for the client's mistakes (``invalid_request_error``) and 500 for the server's own (``server_error``),
so the official ``openai`` client raises its matching exception (``BadRequestError``, ``NotFoundError``,
...) with our message. FastAPI's defaults (``{"detail": ...}``, 422 for a body that is not JSON) are
replaced here; a failed request never stops the server.

Every failure is **one log line** (request id, method, path, status, message): also a bug, which is
answered with a 500 whose message names the exception and logged with the place it was raised, not a
traceback (set the ``delta_attn.serve`` logger to DEBUG for those). :class:`LastResort` catches what
no handler did, before Starlette's own error middleware, which would log a second traceback.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

LOG = logging.getLogger("delta_attn.serve")

INVALID_REQUEST = "invalid_request_error"
NOT_FOUND = "not_found_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    """A request that cannot be served: answered with :func:`error_body` and ``status``."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code
        self.headers = headers  # extra response headers (e.g. "connection: close" when the body was not read)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def log_failure(request_id: str, method: str, path: str, exc: APIError) -> None:
    """The one log line of a failed request."""
    LOG.info("%s %s %s -> %d %s: %s", request_id, method, path, exc.status, exc.type, exc.message)


def _response(request: Request, exc: APIError) -> JSONResponse:
    rid = getattr(request.state, "request_id", "-")
    log_failure(rid, request.method, request.url.path, exc)
    headers = {**(exc.headers or {}), **({"x-request-id": rid} if rid != "-" else {})}
    return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status, headers=headers)


def internal_error(exc: BaseException) -> APIError:
    """A bug, as the client sees it: a 500 naming the exception and where it was raised (no traceback)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    LOG.debug("the server failed on a request", exc_info=exc)  # the traceback, for whoever asks for DEBUG
    return APIError(
        f"the server failed on this request ({type(exc).__name__}: {_short(str(exc))}{where})",
        status=500,
        type=SERVER_ERROR,
    )


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure of ``app`` with an OpenAI error body (and one log line)."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # routing errors: an unknown path (404) or a wrong method (405)
        kind = NOT_FOUND if exc.status_code == 404 else INVALID_REQUEST
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return _response(request, APIError(message, status=exc.status_code, type=kind))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _response(request, APIError(f"invalid request: {_short(str(exc.errors()))}"))

    app.add_middleware(LastResort)


class LastResort:
    """ASGI middleware: any exception no handler took becomes a 500 OpenAI error body and one log line.

    Starlette's outermost error middleware would answer it as plain text and re-raise it (uvicorn then
    logs a traceback of its own); this one sits inside it and never lets an exception through.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - the point of this middleware
            error = internal_error(exc)
            rid = scope.get("state", {}).get("request_id", "-")
            log_failure(rid, scope.get("method", "-"), scope.get("path", "-"), error)
            if started:  # the response is under way: all that is left is to end it
                return
            response = JSONResponse(error_body(error.message, error.type), status_code=500)
            try:
                await response(scope, receive, send)
            except Exception:  # noqa: BLE001 - the client is gone; nothing else to do
                pass
