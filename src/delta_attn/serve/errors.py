"""OpenAI-style errors: one body shape for every failed request, and the FastAPI handlers that produce it.

Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status
for the client's mistakes (``invalid_request_error``) and 500 for the server's own (``server_error``),
so the official ``openai`` client raises its matching exception (``BadRequestError``, ``NotFoundError``,
...) with our message. FastAPI's defaults (``{"detail": ...}``, 422 for a body that is not JSON) are
replaced here; a failed request never stops the server.
"""

from __future__ import annotations

import logging
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
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _response(request: Request, exc: APIError) -> JSONResponse:
    rid = getattr(request.state, "request_id", "-")
    LOG.info("%s %s %s -> %d %s: %s", rid, request.method, request.url.path, exc.status, exc.type, exc.message)
    return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status)


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
        return _response(request, APIError(f"invalid request: {exc.errors()}"))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        LOG.exception("request failed inside the server")
        message = f"the server failed on this request ({type(exc).__name__}: {exc})"
        return _response(request, APIError(message, status=500, type=SERVER_ERROR))
