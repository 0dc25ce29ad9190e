"""Meta's webhooks, as the sandbox posts them: shaped like Meta's, signed, at least once."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import httpx

from sandbox.config import NumberConfig
from sandbox.meta import LedgerEntry
from sandbox.meta_error import MetaError
from sandbox.signature import sign

__all__ = [
    "WABA_ID",
    "WebhookPoster",
    "inbound_payload",
    "status_item",
    "status_payload",
    "statuses_payload",
]

WABA_ID = "102290129340398"


def _envelope(phone_number_id: str, number: NumberConfig, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA_ID,
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": number.display_phone_number,
                                "phone_number_id": phone_number_id,
                            },
                            **value,
                        },
                    }
                ],
            }
        ],
    }


def inbound_payload(
    phone_number_id: str, number: NumberConfig, message: dict[str, Any], profile_name: str
) -> dict[str, Any]:
    """A customer's message, as Meta posts it."""
    contacts = [{"profile": {"name": profile_name}, "wa_id": message["from"]}]
    return _envelope(phone_number_id, number, {"contacts": contacts, "messages": [message]})


def status_payload(
    entry: LedgerEntry, number: NumberConfig, status: str, failure: MetaError | None = None
) -> dict[str, Any]:
    """One status of an accepted message, in its own webhook."""
    return statuses_payload(entry.phone_number_id, number, [status_item(entry, status, failure)])


def statuses_payload(
    phone_number_id: str, number: NumberConfig, items: list[dict[str, Any]]
) -> dict[str, Any]:
    """Several statuses of one business number in one webhook, as Meta batches them."""
    return _envelope(phone_number_id, number, {"statuses": items})


def status_item(
    entry: LedgerEntry, status: str, failure: MetaError | None = None
) -> dict[str, Any]:
    """One status, echoing the message's ``biz_opaque_callback_data``."""
    item: dict[str, Any] = {
        "id": entry.wamid,
        "status": status,
        "timestamp": str(int(time.time())),
        "recipient_id": entry.wa_id,
    }
    if entry.callback_data is not None:
        item["biz_opaque_callback_data"] = entry.callback_data
    if status in ("sent", "delivered"):
        item["pricing"] = {
            "billable": entry.type == "template",
            "pricing_model": "PMP",
            "type": "regular" if entry.type == "template" else "free_customer_service",
            "category": "utility" if entry.type == "template" else "service",
        }
    if failure is not None:
        item["errors"] = [failure.webhook_error()]
    return item


class WebhookPoster:
    """Posts signed webhooks to the configured URL; retries like Meta; keeps a log."""

    def __init__(
        self, *, app_secret: str, rng: random.Random, attempts: int = 8, max_delay_s: float = 8.0
    ) -> None:
        self.app_secret = app_secret
        self.url: str | None = None
        self.duplicate_ratio = 0.0
        self.log: list[dict[str, Any]] = []
        self._rng = rng
        # Meta retries an undelivered webhook for up to 7 days; the sandbox keeps trying for
        # about 24 s (0.25 s doubling, capped at 8 s), long enough to ride out a restart of
        # the receiver or its Redis, short enough for a test.
        self._attempts = attempts
        self._max_delay_s = max_delay_s
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0))

    async def post(self, payload: dict[str, Any]) -> None:
        """Deliver one webhook (twice, now and then, as Meta's at-least-once delivery does)."""
        if self.url is None:
            self.log.append({"payload": payload, "delivered": False, "reason": "no webhook url"})
            return
        copies = 2 if self._rng.random() < self.duplicate_ratio else 1
        for _ in range(copies):
            await self._deliver(self.url, payload)

    async def _deliver(self, url: str, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign(raw, self.app_secret),
        }
        outcome: dict[str, Any] = {"payload": payload, "delivered": False}
        for attempt in range(self._attempts):
            try:
                response = await self._client.post(url, content=raw, headers=headers)
            except httpx.HTTPError as exc:
                outcome["reason"] = type(exc).__name__
            else:
                outcome["status_code"] = response.status_code
                if response.status_code == 200:
                    outcome["delivered"] = True
                    break
            if attempt + 1 < self._attempts:
                await asyncio.sleep(min(self._max_delay_s, 0.25 * 2**attempt))
        self.log.append(outcome)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()
