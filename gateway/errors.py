"""HTTP errors: every refusal is ``{"error": code, "detail": ..., "field": ...}`` with a 4xx.

WaqError (producer.errors)
└── ApiError                 code + status_code (+ field)
    ├── Unauthorized         401 missing or wrong key
    ├── Forbidden            403 an API key where an admin key is needed
    ├── NotFound             404 message / conversation / route
    └── Conflict             409 e.g. window_closed
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.guard import BodyTooLarge
from gateway.plain_route import declare_schemas
from producer.errors import FieldError, InvalidRequest, WaqError

log = structlog.get_logger("waq.gateway")

__all__ = [
    "ApiError",
    "Conflict",
    "ErrorBody",
    "Forbidden",
    "NotFound",
    "Unauthorized",
    "install_error_handlers",
    "install_openapi",
]


class FieldErrorOut(BaseModel):
    """One broken rule, as every 4xx names it."""

    field: str
    rule: str
    message: str


class ErrorBody(BaseModel):
    """waq's error shape: a machine-readable code, a sentence, the first field at fault."""

    error: str
    detail: str
    field: str | None = None
    errors: list[FieldErrorOut] | None = None


def install_openapi(app: FastAPI, *, bodies: Iterable[type[BaseModel]] = ()) -> None:
    """Declare waq's error body for every 4xx (and 503) in the OpenAPI document.

    ``bodies``: the request bodies of ``PlainRoute`` doors, which FastAPI does not see.

    FastAPI declares its own ``HTTPValidationError`` there, a shape the gateway never
    answers with (its handlers render every error as ``ErrorBody``); clients generated from
    the document would then fail to parse the real answers.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        declare_schemas(schema, bodies)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        components["ErrorBody"] = ErrorBody.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        components.update(components["ErrorBody"].pop("$defs", {}))
        body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        # The RequestGuard checks the key of every /v1 request (no route dependency does):
        # declared here so that clients generated from the document send it.
        schema["components"]["securitySchemes"] = {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        }
        for route, path in schema.get("paths", {}).items():
            for operation in path.values():
                if route.startswith("/v1/"):
                    operation.setdefault("security", [{"ApiKey": []}])
                responses = operation.setdefault("responses", {})
                if "422" in responses or "requestBody" in operation:
                    responses["422"] = {
                        "description": "A field broke a rule: the error names it",
                        "content": body,
                    }
                # Every other refusal (400 invalid JSON, 401, 403, 404, 409, 413, 429) has
                # the same body; the 503 of a Redis outage too.
                responses.setdefault("4XX", {"description": "Refused: see error", "content": body})
                responses.setdefault(
                    "503", {"description": "Redis unreachable; retry", "content": body}
                )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


class ApiError(WaqError):
    """An error the API answers with its own status code."""

    status_code = 400

    def __init__(
        self, detail: str, *, code: str, status_code: int | None = None, field: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(detail, code=code)
        if status_code is not None:
            self.status_code = status_code
        self.field = field
        self.extra = extra or {}
        """More machine-readable fields of the answer (a 409's ``state``)."""


class Unauthorized(ApiError):
    """Missing or wrong API key."""

    status_code = 401


class Forbidden(ApiError):
    """A valid key without the right: an API key on an admin route."""

    status_code = 403


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
        if err.get("type") == "json_invalid":
            # FastAPI puts the character offset where a field would go ("field": "6").
            at = next((p for p in err.get("loc", ()) if isinstance(p, int)), None)
            where = f" (at character {at})" if at is not None else ""
            errors.append(
                FieldError(
                    field="(body)", rule="json_invalid", message=f"the body is not JSON{where}"
                )
            )
            continue
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
    """Render every error, including FastAPI's and Starlette's own, in waq's shape.

    ``install_openapi`` declares that shape in the OpenAPI document.
    """

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse(
            error_body(exc.code, exc.detail, exc.field, **exc.extra), status_code=exc.status_code
        )

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidRequest)
        return invalid_request_response(exc)

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        refused = _from_validation(exc)
        if refused.errors and all(e.rule == "json_invalid" for e in refused.errors):
            # Not a rule a field broke: the body is not JSON at all (as the other doors say).
            return JSONResponse(
                error_body("invalid_json", refused.errors[0].message, "(body)",
                           errors=[e.as_dict() for e in refused.errors]),
                status_code=400,
            )  # fmt: skip
        return invalid_request_response(refused)

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
