"""What an attacker, a buggy client or a bad day sends, through the real gateway over HTTP:
refused with a 4xx that names the problem, and nothing stored."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from producer import keys
from sandbox import BackgroundServer, SandboxClient
from tests.conftest import API_KEY
from tests.support import events_in_stream
from tests.test_gateway import CUSTOMER, PNID, TEXT, customer_writes_direct, envelope, signed

MiB = 1024 * 1024


@pytest.fixture
async def api(
    gateway_server: BackgroundServer, redis: Redis, sandbox: SandboxClient
) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=gateway_server.url, headers={"X-API-Key": API_KEY}, timeout=30
    ) as client:
        yield client


async def stored_messages(redis: Redis) -> int:
    """How many message records Redis holds."""
    return len([k async for k in redis.scan_iter(match="waq:msg:*") if b":history" not in k])


async def test_a_body_past_the_cap_is_413_and_nothing_is_kept(
    api: httpx.AsyncClient, redis: Redis
) -> None:
    """A 9 MiB send (a huge metadata value) is refused 413 before it is parsed; so is one
    that streams in without a Content-Length."""
    huge = {"to": CUSTOMER, "message": TEXT, "metadata": {"blob": "x" * (9 * MiB)}}
    response = await api.post("/v1/messages", json=huge)
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * MiB

    streamed = await api.post(
        "/v1/messages", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    assert await stored_messages(redis) == 0


async def raw_request(url: str, head: bytes, body_start: bytes) -> tuple[bytes, float]:
    """Send headers and the start of a body, then read the answer without sending the rest:
    what a slow or hostile client does. Returns the status line and the seconds it took."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + body_start)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
    finally:
        writer.close()
    return status_line, time.monotonic() - started


async def test_no_key_is_refused_before_the_body_is_read(
    gateway_server: BackgroundServer,
) -> None:
    """A request announcing 7 MiB without a key is answered 401 from its headers alone: the
    gateway does not wait for the body (it never comes), let alone parse it."""
    head = (
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 7340032\r\n\r\n"
    )
    status_line, took = await raw_request(gateway_server.url, head, b'{"to": "+1')
    assert status_line.startswith(b"HTTP/1.1 401"), status_line
    assert took < 5


async def test_an_announced_oversized_body_is_413_before_it_arrives(
    gateway_server: BackgroundServer,
) -> None:
    """Content-Length past the cap, with a valid key: 413 at once, nothing read."""
    head = (
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-API-Key: " + API_KEY.encode() + b"\r\nContent-Length: 52428800\r\n\r\n"
    )
    status_line, took = await raw_request(gateway_server.url, head, b"{")
    assert status_line.startswith(b"HTTP/1.1 413"), status_line
    assert took < 5


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"k": "v" * 501}, "metadata.k"),
        ({"k" * 41: "v"}, "metadata." + "k" * 41 + ".[key]"),
        ({f"k{i}": "v" for i in range(51)}, "metadata"),
    ],
    ids=["value", "key", "count"],
)
async def test_metadata_is_capped_field_by_field(
    api: httpx.AsyncClient, redis: Redis, metadata: dict[str, str], field: str
) -> None:
    """Stripe's caps: 50 keys, keys of 40 characters, values of 500; each refusal names it."""
    response = await api.post(
        "/v1/messages", json={"to": CUSTOMER, "message": TEXT, "metadata": metadata}
    )
    assert response.status_code == 422
    assert response.json()["field"] == field, response.json()
    assert await stored_messages(redis) == 0


async def test_an_idempotency_key_reused_with_another_body_is_refused(
    api: httpx.AsyncClient, redis: Redis
) -> None:
    """Same key, same body: the first message again. Same key, another body: 422
    idempotency_key_reused naming the key, and nothing new stored; in a batch too."""
    first = await api.post(
        "/v1/messages", json={"to": CUSTOMER, "message": TEXT, "idempotency_key": "order-7"}
    )
    again = await api.post(
        "/v1/messages", json={"to": CUSTOMER, "message": TEXT, "idempotency_key": "order-7"}
    )
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["created"] is False
    other = {"type": "text", "text": {"body": "a different text"}}
    reused = await api.post(
        "/v1/messages", json={"to": CUSTOMER, "message": other, "idempotency_key": "order-7"}
    )
    assert reused.status_code == 422
    body = reused.json()
    assert (body["error"], body["field"]) == ("idempotency_key_reused", "idempotency_key")
    assert "order-7" in body["detail"]
    header = await api.post(
        "/v1/messages",
        json={"to": CUSTOMER, "message": other},
        headers={"Idempotency-Key": "order-7"},
    )
    assert header.json()["error"] == "idempotency_key_reused"
    batch = await api.post(
        "/v1/messages/batch",
        json={"messages": [
            {"to": CUSTOMER, "message": other, "idempotency_key": "order-7"},
            {"to": CUSTOMER, "message": other, "idempotency_key": "order-8"},
        ]},
    )  # fmt: skip
    answer = batch.json()
    assert (answer["accepted"], answer["rejected"]) == (1, 1)
    assert answer["results"][0]["error"]["error"] == "idempotency_key_reused"
    assert await stored_messages(redis) == 2
    status = (await api.get(f"/v1/messages/{first.json()['id']}")).json()
    assert status["state"] == "queued"


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/v1/messages", {"to": CUSTOMER, "message": TEXT, "idempotencykey": "k"},
         "idempotencykey"),
        ("/v1/messages/batch", {"messages": [], "dry": True}, "dry"),
        ("/v1/health-check", {"phone": "1"}, "phone"),
    ],
    ids=["send", "batch", "health"],
)  # fmt: skip
async def test_unknown_fields_are_refused_by_name(
    api: httpx.AsyncClient, redis: Redis, route: str, body: dict[str, Any], field: str
) -> None:
    """A typo is an error naming the field, not a field silently ignored."""
    response = await api.post(route, json=body)
    assert response.status_code == 422
    fields = [e["field"] for e in response.json()["errors"]]
    assert field in fields, response.json()
    assert await stored_messages(redis) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": TEXT, "metadata": [1]}, "metadata"),
        ({"message": TEXT, "extra": 1}, "extra"),
        ({"message": {"content": "hi", "message_type": "interactive", "buttons": 5}},
         "message.buttons"),
        ({"message": "hello"}, "message"),
    ],
    ids=["metadata-list", "unknown-field", "kapso-buttons", "message-string"],
)  # fmt: skip
async def test_conversation_route_refuses_malformed_bodies_with_a_4xx(
    api: httpx.AsyncClient, redis: Redis, body: dict[str, Any], field: str
) -> None:
    """These answered 500 before; now 422 naming the field, and nothing stored."""
    await customer_writes_direct(api)
    conversation = (await api.get("/v1/conversations", params={"customer": CUSTOMER})).json()
    before = await stored_messages(redis)
    response = await api.post(f"/v1/conversations/{conversation['id']}/messages", json=body)
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]], response.json()
    assert await stored_messages(redis) == before


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"phone_number_id": "\u0661\u0660\u0666\u0665"}, "phone_number_id"),
        ({"message": {"type": "text", "text": {"body": "\x00\x00"}}}, "message.text.body"),
        ({"message": {"type": "text", "text": {"body": " \n\t "}}}, "message.text.body"),
        ({"message": {"type": "reaction", "reaction": {"message_id": "wamid.1",
                                                       "emoji": "hello"}}},
         "message.reaction.emoji"),
    ],
    ids=["arabic-indic-digits", "nul-text", "blank-text", "word-as-emoji"],
)  # fmt: skip
async def test_validation_gaps_are_closed(
    api: httpx.AsyncClient, redis: Redis, overrides: dict[str, Any], field: str
) -> None:
    response = await api.post("/v1/messages", json={"to": CUSTOMER, "message": TEXT, **overrides})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field, response.json()
    assert await stored_messages(redis) == 0


async def test_a_reaction_with_a_real_emoji_still_goes(api: httpx.AsyncClient) -> None:
    for emoji in (
        "\U0001f44d",
        "\U0001f44d\U0001f3fd",
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",
        "",
    ):
        message = {"type": "reaction", "reaction": {"message_id": "wamid.1", "emoji": emoji}}
        response = await api.post("/v1/messages", json={"to": CUSTOMER, "message": message})
        assert response.status_code == 202, (emoji, response.text)


async def test_a_malformed_webhook_item_is_skipped_and_the_rest_applied(
    api: httpx.AsyncClient, redis: Redis
) -> None:
    """One bad item (a non-numeric timestamp, a lone surrogate, a `from` that is not a phone
    number) is counted and skipped; the good items after it are applied; 200, not 500."""
    now = str(int(time.time()))
    messages = [
        {"from": "16505550001", "id": "wamid.bad-ts", "timestamp": "yesterday", "type": "text",
         "text": {"body": "hi"}},
        {"from": "16505550002", "id": "wamid.surrogate", "timestamp": now, "type": "text",
         "text": {"body": "\ud800"}},
        {"from": "not-a-number", "id": "wamid.bad-from", "timestamp": now, "type": "text",
         "text": {"body": "hi"}},
        {"from": "16505550003", "id": "wamid.good", "timestamp": now, "type": "text",
         "text": {"body": "hi"}},
    ]  # fmt: skip
    raw = json.dumps(envelope(messages=messages)).encode()  # \ud800 stays escaped: valid JSON
    _, headers = signed({})
    import hashlib
    import hmac

    from tests.conftest import APP_SECRET

    headers["X-Hub-Signature-256"] = (
        "sha256=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    )
    response = await api.post("/webhooks/whatsapp", content=raw, headers=headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["inbound"] == 1
    assert answer["unknown"] == 3
    assert len(await events_in_stream(redis, "message.received")) == 1
    assert await redis.exists(keys.window(PNID, "16505550003"))
    assert not await redis.exists(keys.window(PNID, "16505550001"))


async def test_a_far_future_inbound_timestamp_opens_a_window_of_24_hours_not_10_years(
    api: httpx.AsyncClient, redis: Redis
) -> None:
    future = str(int(time.time() + 10 * 365 * 24 * 3600))
    message = {"from": "16505550004", "id": "wamid.future", "timestamp": future, "type": "text",
               "text": {"body": "hi"}}  # fmt: skip
    raw, headers = signed(envelope(messages=[message]))
    assert (await api.post("/webhooks/whatsapp", content=raw, headers=headers)).json()[
        "inbound"
    ] == 1
    ttl = await redis.ttl(keys.window(PNID, "16505550004"))
    assert 0 < ttl <= 24 * 3600 + 5
