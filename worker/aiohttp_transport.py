"""An httpx transport that sends with aiohttp: httpx's API, aiohttp's speed.

httpx's own connection pool costs most of a worker's CPU per message (see
docs/performance.md). aiohttp's is several times cheaper. The package httpx-aiohttp does the
same job, but maps aiohttp's ``ServerDisconnectedError`` to ``httpx.ConnectTimeout``, which
``GraphClient`` reads as "the request never left": a connection dropped after Meta accepted
a message would then be resent. Here each aiohttp error maps to the httpx error that says
the truth about whether the request may have been sent:

- could not connect, or waited too long for a connection: ``ConnectError``/``ConnectTimeout``
  (never sent: safe to resend);
- anything after the connection was ours (disconnect, read timeout, broken payload):
  ``RemoteProtocolError``/``ReadTimeout``/``ReadError`` (maybe sent: reconcile first).
"""

from __future__ import annotations

from typing import Final

import aiohttp
import httpx

__all__ = ["AiohttpTransport"]

# aiohttp computes these itself; forwarding httpx's copies would send them twice.
_SKIPPED: Final = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests through one aiohttp session (opened on first use, in the loop)."""

    def __init__(self, *, max_connections: int = 100) -> None:
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_connections, ttl_dns_cache=300),
            auto_decompress=False,  # httpx decodes the body from its headers
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send one request; errors become the httpx error that tells whether it left."""
        session = self._session or self._open()
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.get("pool"),
            sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"),
        )
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower() not in _SKIPPED
        ]
        try:
            async with session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=await request.aread() or None,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                content = await response.read()
                status, raw_headers = response.status, list(response.raw_headers)
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc), request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except (TimeoutError, aiohttp.SocketTimeoutError) as exc:
            raise httpx.ReadTimeout(str(exc) or "read timeout", request=request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc
        return httpx.Response(status, headers=raw_headers, content=content, request=request)

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None
