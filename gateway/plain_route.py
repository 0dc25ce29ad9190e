"""Routes FastAPI documents but does not resolve: the send doors' request handling.

py-spy on ``POST /v1/messages`` at 200 µs of the gateway's CPU a request: FastAPI's handler
around the endpoint (resolving parameters, even absent ones; parsing the content type with
``email.message``; validating the body through its field) was about 40 µs of it, and the
endpoint, body and validation included, 20. A door whose endpoint takes the ``Request``
reads what it needs itself; FastAPI still documents it and still runs it inside the app's
middleware and exception handlers.

``read_json_body`` refuses a body exactly as FastAPI does (the same ``RequestValidationError``
for a body that is missing, not JSON, or breaks a rule), so the errors the gateway answers
with do not depend on which kind of route took the request.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["PlainRoute", "declare_schemas", "read_json_body", "request_body"]

M = TypeVar("M", bound=BaseModel)


class PlainRoute(APIRoute):
    """An ``APIRoute`` whose endpoint takes the ``Request`` and returns a ``Response``.

    Declare what FastAPI would have inferred in the decorator: ``response_model`` for the
    answer, ``openapi_extra`` for the body (``request_body``) and any header or path
    parameter the endpoint reads.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The endpoint itself, called with the request."""
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return endpoint


def _json_content(content_type: str | None) -> bool:
    """Whether FastAPI would parse a body of this type as JSON.

    None given: no, as FastAPI's ``strict_content_type`` default says.
    """
    if content_type is None:
        return False
    media = content_type.partition(";")[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


async def read_json_body(request: Request, model: type[M]) -> M:
    """The body as ``model``, or FastAPI's own ``RequestValidationError`` for it."""
    raw = await request.body()
    if not raw:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    data: Any = raw
    if _json_content(request.headers.get("content-type")):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RequestValidationError(
                [{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                  "input": {}, "ctx": {"error": exc.msg}}],
                body=exc.doc,
            ) from None  # fmt: skip
    try:
        return model.model_validate(data, from_attributes=True)  # as FastAPI validates bodies
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in errors], body=data
        ) from None


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as a route's JSON body (see ``declare_schemas``)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def declare_schemas(document: dict[str, Any], models: Iterable[type[BaseModel]]) -> None:
    """Add ``models`` (and the models they use) to an OpenAPI document's components."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, used in schema.pop("$defs", {}).items():
            components.setdefault(name, used)
        components[model.__name__] = schema
