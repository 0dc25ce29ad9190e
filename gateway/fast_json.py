"""Bodies in and out with orjson: the batch route's JSON was a tenth of the gateway's CPU.

FastAPI's documented way to change how a body is read is a custom ``Request`` served by a
custom ``APIRoute`` (https://fastapi.tiangolo.com/how-to/custom-request-and-route/); the
rest of the request's handling, validation and errors included, is FastAPI's own. orjson
raises ``JSONDecodeError`` (a ``ValueError``) on bad JSON as the standard library does, so
FastAPI still answers it with its ``json_invalid`` error, which the gateway renders as
``400 invalid_json``.

The send doors answer with ``json_response`` rather than a return type: FastAPI's response
serialization (validating the answer again, then encoding it) was 33 µs of a 237 µs
single-message request (bench.http_doors, the gateway's CPU per request).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["FastJsonRoute", "json_response"]


class _FastJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class FastJsonRoute(APIRoute):
    """An ``APIRoute`` whose request bodies are parsed by orjson."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's handler, given a request that parses its body with orjson."""
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(_FastJsonRequest(request.scope, request.receive))

        return route_handler


def json_response(content: Any, status_code: int = 200) -> Response:
    """``content`` as a JSON response, encoded by orjson (compact UTF-8, as Starlette's)."""
    return Response(orjson.dumps(content), status_code, media_type="application/json")
