"""The Graph-compatible door, `POST /{version}/{phone_number_id}/messages`: Meta's request
and response shapes over the real gateway, a worker behind it and the sandbox as Meta; and
pywa, a real Cloud API SDK, sending through it unchanged."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from producer import Producer
from sandbox import BackgroundServer, SandboxClient
from tests.conftest import API_KEY
from tests.support import TEMPLATE
from tests.test_gateway import CUSTOMER, PNID, customer_writes_direct
from worker.limits import RateLimiter

DOOR = f"/v24.0/{PNID}/messages"
META_TEXT = {
    "messaging_product": "whatsapp",
    "recipient_type": "individual",
    "to": CUSTOMER,
    "type": "text",
    "text": {"body": "Your order shipped"},
}


@pytest.fixture
async def door(
    gateway_server: BackgroundServer, redis: Redis, sandbox: SandboxClient
) -> AsyncIterator[httpx.AsyncClient]:
    """A client holding the API key where Meta's token goes."""
    async with httpx.AsyncClient(
        base_url=gateway_server.url, headers={"Authorization": f"Bearer {API_KEY}"}
    ) as client:
        yield client


async def until_final(client: httpx.AsyncClient, message_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        status = (
            await client.get(f"/v1/messages/{message_id}", headers={"X-API-Key": API_KEY})
        ).json()
        if status["state"] in ("accepted", "sent", "delivered", "read", "dead"):
            return dict(status)
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.05)


async def test_a_cloud_api_body_is_answered_in_metas_shape_with_waqs_id(
    door: httpx.AsyncClient, sandbox: SandboxClient, running_worker: None
) -> None:
    """Meta's body, unchanged: 200, Meta's response (contacts with input and wa_id, the
    message id), that id reads back through /v1, and the sandbox receives the message once."""
    await customer_writes_direct(door)
    await sandbox.inbound(CUSTOMER)
    response = await door.post(DOOR, json={**META_TEXT, "to": "+1 (650) 555-1234"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["messaging_product"] == "whatsapp"
    assert answer["contacts"] == [{"input": "+1 (650) 555-1234", "wa_id": "16505551234"}]
    message_id = answer["messages"][0]["id"]
    assert message_id.startswith("m_")
    status = await until_final(door, message_id)
    assert status["state"] in ("accepted", "sent", "delivered", "read")
    ledger = await sandbox.ledger()
    assert [e["biz_opaque_callback_data"] for e in ledger] == [message_id]
    assert ledger[0]["body"]["text"] == {"body": "Your order shipped"}


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [({}, 400, 2500), ({"Authorization": "Bearer wrong"}, 401, 190),
     ({"X-API-Key": "wrong"}, 401, 190), ({"X-API-Key": API_KEY}, 200, None)],
    ids=["no-token", "bad-bearer", "bad-key", "x-api-key"],
)  # fmt: skip
async def test_the_door_takes_the_key_as_a_bearer_token_or_x_api_key(
    gateway_server: BackgroundServer,
    redis: Redis,
    headers: dict[str, str],
    status: int,
    code: int | None,
) -> None:
    """Refusals in Meta's OAuth envelope, as Meta answers a missing or bad token."""
    async with httpx.AsyncClient(base_url=gateway_server.url, headers=headers) as client:
        response = await client.post(DOOR, json=META_TEXT)
    assert response.status_code == status, response.text
    if code is not None:
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("OAuthException", code)


@pytest.mark.parametrize(
    ("body", "code", "details"),
    [
        ({**META_TEXT, "text": {}}, 131008, "text.body"),
        ({**META_TEXT, "text": {"body": "x" * 4097}}, 100, "text.body"),
        ({**META_TEXT, "type": "image", "image": {}}, 100, "image"),
        ({**META_TEXT, "messaging_product": "sms"}, 100, "messaging_product"),
        ({**META_TEXT, "to": "hello"}, 100, "to"),
    ],
    ids=["missing-body", "too-long", "image-without-media", "not-whatsapp", "bad-number"],
)
async def test_mistakes_get_metas_error_envelope_and_code(
    door: httpx.AsyncClient, redis: Redis, body: dict[str, Any], code: int, details: str
) -> None:
    response = await door.post(DOOR, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code, error
    assert details in error["error_data"]["details"], error
    assert {"message", "type", "fbtrace_id"} <= error.keys()
    assert not [k async for k in redis.scan_iter(match="waq:msg:*")]


async def test_idempotency_key_header_and_omitted_type(door: httpx.AsyncClient) -> None:
    """`type` omitted means text, as Meta documents; an Idempotency-Key returns the first
    message again, and refuses (100) a different body under the same key."""
    body = {"messaging_product": "whatsapp", "to": CUSTOMER, "text": {"body": "no type"}}
    first = await door.post(DOOR, json=body, headers={"Idempotency-Key": "k-1"})
    again = await door.post(DOOR, json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 200, first.text
    assert first.json()["messages"] == again.json()["messages"]
    other = await door.post(
        DOOR, json={**body, "text": {"body": "changed"}}, headers={"Idempotency-Key": "k-1"}
    )
    assert other.status_code == 400
    assert "was used for a different request" in other.json()["error"]["error_data"]["details"]


async def test_v1_messages_takes_metas_flat_body_too(
    gateway_server: BackgroundServer, redis: Redis
) -> None:
    """A Cloud API body pasted into /v1/messages, with phone_number_id beside it."""
    async with httpx.AsyncClient(
        base_url=gateway_server.url, headers={"X-API-Key": API_KEY}
    ) as client:
        response = await client.post("/v1/messages", json={**META_TEXT, "phone_number_id": PNID})
        assert response.status_code == 202, response.text
        status = (await client.get(response.json()["status_url"])).json()
    assert status["to"] == CUSTOMER
    assert status["type"] == "text"


class ToGateway(httpx.BaseTransport):
    """Sends what an SDK addresses to graph.facebook.com to the gateway instead.

    pywa has no base-URL option (it sets graph.facebook.com on its session), so pointing it
    at waq takes a transport that swaps the host: the request itself is left as pywa made it.
    """

    def __init__(self, gateway_url: str) -> None:
        self._gateway = httpx.URL(gateway_url)
        self._transport = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(
            scheme=self._gateway.scheme, host=self._gateway.host, port=self._gateway.port
        )
        request.headers["host"] = f"{self._gateway.host}:{self._gateway.port}"
        return self._transport.handle_request(request)

    def close(self) -> None:
        self._transport.close()


async def test_pywa_sends_every_kind_it_builds_through_the_door(
    gateway_server: BackgroundServer, sandbox: SandboxClient, redis: Redis, running_worker: None
) -> None:
    """pywa, unchanged, with the API key as its token: text, reply buttons, image, video,
    audio, document, sticker, location, contact, reaction, template, location request,
    catalog, product, product list and flow each reach the sandbox's ledger once."""
    from pywa.client import WhatsApp
    from pywa.types.callback import Button, FlowButton
    from pywa.types.flows import FlowActionType
    from pywa.types.others import Contact, ProductsSection
    from pywa.types.templates import TemplateLanguage

    async with httpx.AsyncClient(base_url=gateway_server.url) as api:
        await customer_writes_direct(api)
    await sandbox.inbound(CUSTOMER)
    media = "https://example.com/media"

    def send_all() -> list[str]:
        with httpx.Client(transport=ToGateway(gateway_server.url)) as session:
            return send_with(
                WhatsApp(phone_id=PNID, token=API_KEY, session=session, api_version="24.0")
            )

    def send_with(wa: WhatsApp) -> list[str]:
        to = CUSTOMER
        sent = [
            wa.send_message(to=to, text="Your order shipped"),
            wa.send_message(
                to=to, text="Rate us", buttons=[Button(title="Good", callback_data="good")]
            ),
            wa.send_image(to=to, image=f"{media}/parcel.jpg", caption="Packed"),
            wa.send_video(to=to, video=f"{media}/unboxing.mp4"),
            wa.send_audio(to=to, audio=f"{media}/thanks.mp3"),
            wa.send_document(to=to, document=f"{media}/invoice.pdf", filename="invoice.pdf"),
            wa.send_sticker(to=to, sticker=f"{media}/smile.webp"),
            wa.send_location(to=to, latitude=37.44, longitude=-122.16, name="Pickup point"),
            wa.send_contact(
                to=to,
                contact=Contact(
                    name=Contact.Name(formatted_name="waq support", first_name="waq"),
                    phones=[Contact.Phone(phone="+16505550100", type="WORK")],
                ),
            ),
            wa.send_reaction(to=to, emoji="\U0001f44d", message_id="wamid.HBgLMTY1MDU1NTEyMzQ"),
            wa.send_template(to=to, name="hello_world", language=TemplateLanguage.ENGLISH_US),
            wa.request_location(to=to, text="Where should we deliver?"),
            wa.send_message(
                to=to, text="Book a table",
                buttons=FlowButton(title="Book", flow_id="1234567890",
                                   flow_action_type=FlowActionType.NAVIGATE,
                                   flow_action_screen="WELCOME"),
            ),
            wa.send_catalog(to=to, body="Our spring collection", thumbnail_product_sku="SKU-1"),
            wa.send_product(to=to, catalog_id="194836987003835", sku="SKU-1", body="In stock"),
            wa.send_products(
                to=to, catalog_id="194836987003835", title="For you", body="Two picks",
                product_sections=[ProductsSection(title="Shoes", skus=["SKU-1", "SKU-2"])],
            ),
        ]  # fmt: skip
        return [message.id for message in sent]

    ids = await asyncio.to_thread(send_all)
    assert len(set(ids)) == 16
    async with httpx.AsyncClient(base_url=gateway_server.url) as api:
        states = [(await until_final(api, message_id))["state"] for message_id in ids]
    ledger = await sandbox.ledger()
    assert sorted(e["biz_opaque_callback_data"] for e in ledger) == sorted(ids), states
    kinds = sorted(
        e["body"]["interactive"]["type"] if e["type"] == "interactive" else e["type"]
        for e in ledger
    )
    assert kinds == sorted(
        ["text", "button", "image", "video", "audio", "document", "sticker", "location",
         "contacts", "reaction", "template", "location_request_message", "catalog_message",
         "product", "product_list", "flow"]
    )  # fmt: skip


async def test_mark_as_read_goes_at_once_ahead_of_a_backlog(
    door: httpx.AsyncClient, sandbox: SandboxClient, redis: Redis, running_worker: None
) -> None:
    """Meta's read receipt through the door, with the typing indicator: {"success": true}
    once the sandbox has it, while a 100-message backlog at 10 mps (10 s deep) still waits:
    the receipt went ahead of it, not behind it."""
    inbound = (await sandbox.inbound(CUSTOMER))["message"]
    await RateLimiter(redis).set_mps(PNID, 10)
    await Producer(redis).enqueue_many(
        [{"phone_number_id": PNID, "to": f"+1650557{i:04d}", "message": TEMPLATE}
         for i in range(100)]
    )  # fmt: skip
    await asyncio.sleep(0.5)  # the worker is busy with the backlog
    receipt = {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": inbound["id"],
        "typing_indicator": {"type": "text"},
    }
    response = await door.post(DOOR, json=receipt)
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}
    stats = await sandbox.stats()
    assert stats["read_receipts"] == [
        {"phone_number_id": PNID, "message_id": inbound["id"], "typing": True}
    ]
    assert stats["outcomes"].get("accepted", 0) < 50, "the receipt did not wait for the backlog"


async def test_a_receipt_meta_refuses_comes_back_in_metas_envelope(
    door: httpx.AsyncClient, running_worker: None
) -> None:
    """An unknown message id: Meta's 100, passed through from the worker; a missing one is
    refused by the door itself (131008) without asking a worker."""
    unknown = await door.post(
        DOOR, json={"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.x"}
    )
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == 100
    missing = await door.post(DOOR, json={"messaging_product": "whatsapp", "status": "read"})
    assert missing.json()["error"]["code"] == 131008


def test_the_door_matches_no_other_routes_path() -> None:
    """The door is tried first (route matching behind ~80 routes was a quarter of its
    CPU), so it must not take a request meant for any other route of the app; its loose
    fallback, tried last, still answers a malformed door path in Meta's envelope."""
    from fastapi import APIRouter
    from starlette.routing import Route

    from gateway.api import router
    from gateway.app import create_app
    from gateway.console import console_router
    from gateway.graph_door import add_graph_door
    from gateway.state import GatewayConfig
    from gateway.subscriptions_api import subscriptions_router

    app = create_app(GatewayConfig(redis_url="redis://127.0.0.1:1/0", api_keys=("k",)))
    routes = APIRouter()
    add_graph_door(routes)
    [door] = [r for r in routes.routes if isinstance(r, Route)]
    loose = "/{version}/{phone_number_id}/messages"  # the fallback's, tried last
    every = (app.routes, router.routes, subscriptions_router.routes, console_router.routes)
    others = [
        r.path
        for table in every
        for r in table
        if isinstance(r, Route) and r.path not in (door.path, loose)
    ]
    assert len(others) > 50, others
    for path in others:
        for sample in ("messages", "v24.0", "123"):  # each parameter as the door's parts
            concrete = re.sub(r"\{[^}]+\}", sample, path)
            assert not door.path_regex.match(concrete), (path, concrete)
    assert door.path_regex.match(DOOR)
    assert app.openapi()["paths"]["/{version}/{phone_number_id}/messages"]["post"]


async def test_a_malformed_door_path_gets_metas_error(door: httpx.AsyncClient) -> None:
    response = await door.post("/v24.0/not-a-number/messages", json=META_TEXT)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 100
