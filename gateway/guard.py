"""The door's first check: authenticate before reading a body, and never read an unbounded one.

FastAPI parses a route's JSON body before it runs the route's dependencies, so an API-key
dependency alone lets anyone make the gateway read and parse tens of megabytes. This ASGI
middleware runs first: a ``/v1`` request without a valid key is refused from its headers,
and any body past ``max_body_bytes`` is refused with 413 (from ``Content-Length`` when
given, else while it streams in), before a byte of it is parsed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Final

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.meta_envelope import meta_error

__all__ = ["DEFAULT_MAX_BODY_BYTES", "BodyTooLarge", "RequestGuard"]

DEFAULT_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
"""8 MiB: a batch of 1,000 full-length texts fits; a larger batch is split by the caller."""


_READ: Final = frozenset({b"x-api-key", b"authorization", b"content-length"})
"""The headers the guard looks at (decoding all of them was most of its own time)."""


class BodyTooLarge(HTTPException):
    """The body went past the cap while streaming in (the app renders it as 413).

    An HTTPException, because FastAPI turns any other error raised while it reads a body
    into a 400 "error parsing the body".
    """

    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(413, f"the request body is over {max_body_bytes} bytes; split a batch")
        self.max_body_bytes = max_body_bytes


class RequestGuard:
    """Refuses unauthenticated ``/v1`` requests and oversized bodies before the app reads them."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        key_matches: Callable[[str | None], bool],
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        authenticated_prefixes: Sequence[str] = ("/v1/",),
        graph_paths: str | None = None,
    ) -> None:
        self.app = app
        self.key_matches = key_matches
        self.max_body_bytes = max_body_bytes
        self.authenticated_prefixes = tuple(authenticated_prefixes)
        self.graph_paths = re.compile(graph_paths) if graph_paths else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the headers, then pass the request on with its body counted."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            name: value.decode("latin-1")
            for name, value in ((k.lower(), v) for k, v in scope["headers"])
            if name in _READ
        }
        path: str = scope["path"]
        if path.startswith(self.authenticated_prefixes) and not self.key_matches(
            headers.get(b"x-api-key")
        ):
            await _answer(send, 401, "unauthorized", "missing or unknown X-API-Key", "X-API-Key")
            return
        if self.graph_paths is not None and self.graph_paths.match(path):
            # The Graph-compatible door: the key where Meta's token goes, refused as Meta would.
            bearer = headers.get(b"authorization", "")
            key = bearer.removeprefix("Bearer ") if bearer.startswith("Bearer ") else None
            key = key or headers.get(b"x-api-key")
            if key is None:
                await meta_error(400, 2500, _NO_TOKEN, "no access token")(scope, receive, send)
                return
            if not self.key_matches(key):
                await meta_error(401, 190, _BAD_TOKEN, "unknown key")(scope, receive, send)
                return
        length = headers.get(b"content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await self._too_large(send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:  # the app did not render it (it read the body outside a route)
            if not started:
                await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        await _answer(
            send,
            413,
            "body_too_large",
            str(BodyTooLarge(self.max_body_bytes).detail),
            None,
        )


# Meta's own sentences for these OAuth errors (not secrets).
_NO_TOKEN: Final = (
    "An active access token must be used to query information about the current user."  # noqa: S105
)
_BAD_TOKEN: Final = "Invalid OAuth access token - Cannot parse access token"  # noqa: S105


async def _answer(send: Send, status: int, code: str, detail: str, field: str | None) -> None:
    """waq's error shape, written straight to the ASGI channel.

    The connection is not closed on purpose: the server then discards the unread body as it
    arrives (no parsing, no buffering) instead of resetting the connection under a client
    that is still sending, which would lose this answer.
    """
    await _write(
        send, status, json.dumps({"error": code, "detail": detail, "field": field}).encode()
    )


async def _write(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
