"""An async client for the sandbox's control routes, for tests, ``waq demo`` and load tests."""

from __future__ import annotations

from typing import Any, Self

import httpx

__all__ = ["SandboxClient"]


class SandboxClient:
    """Drives a running sandbox over HTTP: customers writing in, faults, the ledger."""

    def __init__(self, base_url: str) -> None:
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=httpx.Timeout(10.0))

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = await self._client.post(path, json=body or {})
        response.raise_for_status()
        return response.json()

    async def _get(self, path: str, **params: str) -> Any:
        response = await self._client.get(path, params=params)
        response.raise_for_status()
        return response.json()

    async def inbound(
        self,
        sender: str,
        text: str = "Hi",
        *,
        phone_number_id: str | None = None,
        timestamp: float | None = None,
    ) -> dict[str, Any]:
        """A customer writes in: the window opens and a signed webhook is posted."""
        body: dict[str, Any] = {"from": sender, "text": text}
        if phone_number_id is not None:
            body["phone_number_id"] = phone_number_id
        if timestamp is not None:
            body["timestamp"] = timestamp
        result: dict[str, Any] = await self._post("/_sandbox/inbound", body)
        return result

    async def set_faults(self, **faults: float) -> dict[str, Any]:
        """Set latency, error, hang, drop and duplicate-webhook ratios."""
        result: dict[str, Any] = await self._post("/_sandbox/faults", faults)
        return result

    async def set_recipient(
        self, wa_id: str, *, registered: bool | None = None, async_failure_code: int | None = None
    ) -> None:
        """Mark a number unregistered (131026), or make its sends fail later by webhook."""
        body: dict[str, Any] = {}
        if registered is not None:
            body["registered"] = registered
        if async_failure_code is not None:
            body["async_failure_code"] = async_failure_code
        await self._post(f"/_sandbox/recipients/{wa_id}", body)

    async def set_number(self, phone_number_id: str, **fields: Any) -> dict[str, Any]:
        """Change a business number: mps, health, status, send_error_code."""
        result: dict[str, Any] = await self._post(f"/_sandbox/numbers/{phone_number_id}", fields)
        return result

    async def expire_token(self, expired: bool = True) -> None:
        """Make every request fail with 190 (or stop doing so)."""
        await self._post("/_sandbox/token", {"expired": expired})

    async def set_webhook_url(self, url: str | None) -> None:
        """Where signed webhooks go (None: nowhere)."""
        await self._post("/_sandbox/webhook", {"url": url})

    async def ledger(self, **filters: str) -> list[dict[str, Any]]:
        """Every message the sandbox accepted, oldest first."""
        result: list[dict[str, Any]] = (await self._get("/_sandbox/ledger", **filters))["messages"]
        return result

    async def stats(self) -> dict[str, Any]:
        """Outcome counts and per-number peak rates."""
        result: dict[str, Any] = await self._get("/_sandbox/stats")
        return result

    async def webhooks(self) -> list[dict[str, Any]]:
        """Every webhook posted, with its delivery outcome."""
        result: list[dict[str, Any]] = (await self._get("/_sandbox/webhooks"))["webhooks"]
        return result

    async def reset(self) -> None:
        """Forget everything but the configuration."""
        await self._post("/_sandbox/reset")

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
