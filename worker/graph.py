"""The Graph API client: one ``httpx.AsyncClient`` per process, Meta's answers typed.

Only workers hold the access token; it lives in a default header of the client and is never
formatted into a message, log line or error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Self

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr

from worker.errors import GraphConnectionError, GraphError, GraphTimeout, GraphTransportError

__all__ = [
    "DEFAULT_GRAPH_API_VERSION",
    "DEFAULT_GRAPH_BASE_URL",
    "PHONE_NUMBER_FIELDS",
    "GraphClient",
    "HealthStatus",
    "PhoneNumberInfo",
    "SendResult",
]

DEFAULT_GRAPH_BASE_URL: Final = "https://graph.facebook.com"
DEFAULT_GRAPH_API_VERSION: Final = "v24.0"
PHONE_NUMBER_FIELDS: Final = (
    "id",
    "display_phone_number",
    "verified_name",
    "status",
    "quality_rating",
    "throughput",
    "whatsapp_business_manager_messaging_limit",
    "health_status",
)

# Errors raised before any byte of the request left: resending cannot duplicate.
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True, slots=True)
class SendResult:
    """Meta accepted the message (which is not yet delivered: statuses say that)."""

    wamid: str
    wa_id: str | None
    message_status: str | None = None


class HealthStatus(BaseModel):
    """``health_status``: AVAILABLE, LIMITED or BLOCKED, with the entities that decide it."""

    model_config = ConfigDict(extra="allow", frozen=True)

    can_send_message: str
    entities: list[dict[str, Any]] = []


class PhoneNumberInfo(BaseModel):
    """The fields of a business phone number that tell whether it can send."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    display_phone_number: str | None = None
    verified_name: str | None = None
    status: str | None = None
    quality_rating: str | None = None
    throughput: dict[str, Any] | None = None
    whatsapp_business_manager_messaging_limit: str | None = None
    health_status: HealthStatus | None = None

    @property
    def can_send(self) -> bool:
        """False when Meta reports the number BLOCKED or not CONNECTED."""
        if self.health_status is not None and self.health_status.can_send_message == "BLOCKED":
            return False
        return self.status in (None, "CONNECTED")


class GraphClient:
    """Sends messages and reads phone numbers through any server that speaks Meta's Graph API.

    ``transport`` is injectable so a benchmark can put a faster one (an aiohttp transport)
    under httpx's API, and tests can point at the sandbox or a mock transport.
    """

    def __init__(
        self,
        *,
        access_token: SecretStr,
        base_url: str = DEFAULT_GRAPH_BASE_URL,
        api_version: str = DEFAULT_GRAPH_API_VERSION,
        timeout_s: float = 20.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.api_version = api_version
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {access_token.get_secret_value()}"},
            # A send that takes longer than timeout_s is reported as an ambiguous outcome;
            # connecting is quick when Meta is healthy, so a slow connect fails fast.
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            # One pool per process, sized above any sane arq max_jobs so jobs never queue
            # on the pool (a PoolTimeout is a send that never left, but still a delay).
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )
        # Each number's send URL, parsed once: httpx parses a string URL on every request
        # (8% of a send's CPU in a profile).
        self._send_urls: dict[str, httpx.URL] = {}

    async def send(self, phone_number_id: str, body: dict[str, Any]) -> SendResult:
        """POST one message; return the wamid or raise ``GraphError``/``GraphTransportError``."""
        url = self._send_urls.get(phone_number_id)
        if url is None:
            url = self._client.base_url.join(f"/{self.api_version}/{phone_number_id}/messages")
            self._send_urls[phone_number_id] = url
        response = await self._request("POST", url, json=body)
        payload = _json(response)
        try:
            message = payload["messages"][0]
            contact = (payload.get("contacts") or [{}])[0]
            return SendResult(
                wamid=str(message["id"]),
                wa_id=contact.get("wa_id"),
                message_status=message.get("message_status"),
            )
        except (KeyError, IndexError, TypeError, AttributeError):
            # A 200 without a wamid: Meta may well have accepted the message.
            raise GraphTransportError(
                "success answer without a message id", ambiguous=True
            ) from None

    async def message_templates(self, waba_id: str) -> list[dict[str, Any]]:
        """Every template of a WhatsApp Business Account, following Meta's paging."""
        url: str | None = f"/{self.api_version}/{waba_id}/message_templates"
        params: dict[str, Any] | None = {
            "fields": "name,language,status,category,components",
            "limit": 200,
        }
        templates: list[dict[str, Any]] = []
        while url:
            page = _json(await self._request("GET", url, params=params))
            templates.extend(page.get("data") or [])
            url, params = (page.get("paging") or {}).get("next"), None  # next has the cursor
        return templates

    async def mark_read(
        self, phone_number_id: str, message_id: str, *, typing_indicator: bool = False
    ) -> None:
        """Mark a customer's message read (and show "typing..."); raises like ``send``."""
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
        }
        if typing_indicator:
            body["typing_indicator"] = {"type": "text"}
        await self._request("POST", f"/{self.api_version}/{phone_number_id}/messages", json=body)

    async def phone_number(
        self, phone_number_id: str, fields: tuple[str, ...] = PHONE_NUMBER_FIELDS
    ) -> PhoneNumberInfo:
        """Read a business number's status, quality, throughput, limit and health."""
        response = await self._request(
            "GET", f"/{self.api_version}/{phone_number_id}", params={"fields": ",".join(fields)}
        )
        return PhoneNumberInfo.model_validate(_json(response))

    async def _request(self, method: str, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._client.request(method, url, **kwargs)
        except _NOT_SENT as exc:
            raise GraphConnectionError(
                f"{type(exc).__name__}: request never left", ambiguous=False
            ) from exc
        except httpx.TimeoutException as exc:
            raise GraphTimeout(f"{type(exc).__name__}: no answer in time", ambiguous=True) from exc
        except httpx.TransportError as exc:
            raise GraphConnectionError(
                f"{type(exc).__name__}: connection lost after the request left", ambiguous=True
            ) from exc
        if response.is_success:
            return response
        raise GraphError.from_response(response.status_code, _json(response, strict=False))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _json(response: httpx.Response, *, strict: bool = True) -> Any:
    try:
        return response.json()
    except ValueError:
        if strict:
            raise GraphTransportError("answer was not JSON", ambiguous=True) from None
        return None
