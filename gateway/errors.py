"""HTTP errors: every refusal is ``{"error": code, "detail": ..., "field": ...}`` with a 4xx.

WaqError (producer.errors)
└── ApiError                 code + status_code (+ field)
    ├── Unauthorized         401 missing or wrong key
    ├── NotFound             404 message / conversation / route
    └── Conflict             409 e.g. window_closed
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.guard import BodyTooLarge
from producer.errors import FieldError, InvalidRequest, WaqError

log = structlog.get_logger("waq.gateway")

__all__ = ["ApiError", "Conflict", "NotFound", "Unauthorized", "install_error_handlers"]


class ApiError(WaqError):
    """An error the API answers with its own status code."""

    status_code = 400

    def __init__(
        self, detail: str, *, code: str, status_code: int | None = None, field: str | None = None
    ) -> None:
        super().__init__(detail, code=code)
        if status_code is not None:
            self.status_code = status_code
        self.field = field


class Unauthorized(ApiError):
    """Missing or wrong API key."""

    status_code = 401


class NotFound(ApiError):
    """No such message, conversation or route."""

    status_code = 404


class Conflict(ApiError):
    """The request is valid but cannot be done in the current state."""

    status_code = 409


def error_body(code: str, detail: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    """The one shape of every error answer."""
    return {"error": code, "detail": detail, "field": field, **extra}


def _from_validation(exc: RequestValidationError) -> InvalidRequest:
    errors = []
    for err in exc.errors():
        loc = [
            str(p)
            for p in err.get("loc", ())
            if not ("=" in str(p) or str(p).startswith("function-"))
        ]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        errors.append(
            FieldError(
                field=".".join(loc) or "(body)",
                rule=err.get("type", "invalid"),
                message=err.get("msg", ""),
            )
        )
    return InvalidRequest(errors)


def invalid_request_response(exc: InvalidRequest) -> JSONResponse:
    """422 naming every broken rule."""
    return JSONResponse(
        error_body(exc.code, exc.detail, exc.field, errors=[e.as_dict() for e in exc.errors]),
        status_code=422,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Render every error, including FastAPI's and Starlette's own, in waq's shape."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse(
            error_body(exc.code, exc.detail, exc.field), status_code=exc.status_code
        )

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidRequest)
        return invalid_request_response(exc)

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return invalid_request_response(_from_validation(exc))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)

    async def redis_down(request: Request, exc: Exception) -> JSONResponse:
        # Meta retries webhooks and services retry sends: a clear 503 loses nothing.
        return JSONResponse(
            error_body("redis_unavailable", "Redis is unreachable; retry shortly"),
            status_code=503,
            headers={"Retry-After": "2"},
        )

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # A bug or a failed Redis step: a clean 500 in waq's shape, never a stack trace.
        # Meta redelivers a webhook answered 5xx; the traceback goes to the log.
        return JSONResponse(
            error_body("internal_error", "the request could not be completed; retry it"),
            status_code=500,
        )

    async def redis_failed(request: Request, exc: Exception) -> JSONResponse:
        # A Redis command refused (not a lost connection): handled here rather than as a
        # bare Exception, which Starlette re-raises to the server after answering, and the
        # server then drops the keep-alive connection under the client's next request.
        log.error("request.redis_error", path=request.url.path, error=str(exc))
        return await internal(request, exc)

    async def too_large(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BodyTooLarge)
        return JSONResponse(error_body("body_too_large", str(exc.detail)), status_code=413)

    app.add_exception_handler(BodyTooLarge, too_large)
    app.add_exception_handler(Exception, internal)
    app.add_exception_handler(RedisError, redis_failed)
    app.add_exception_handler(RedisConnectionError, redis_down)
    app.add_exception_handler(RedisTimeoutError, redis_down)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(InvalidRequest, invalid)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
