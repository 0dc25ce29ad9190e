"""The gateway over real HTTP with real Valkey and the sandbox: sends, webhooks, conversations."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from jsonschema import validate
from redis.asyncio import Redis

from gateway.conversations import ConversationStore
from producer import keys
from sandbox import DEFAULT_PHONE_NUMBER_ID, BackgroundServer, SandboxClient, SandboxServer
from tests.conftest import API_KEY, APP_SECRET, VERIFY_TOKEN
from tests.support import events_in_stream, run_burst_worker
from worker.delivery import DeliveryConfig
from worker.pauses import PauseStore
from worker.windows import WindowStore

PNID = DEFAULT_PHONE_NUMBER_ID
CUSTOMER = "+16505551234"
TEXT = {"type": "text", "text": {"body": "Your order shipped"}}
_JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def api(
    gateway_server: BackgroundServer, redis: Redis, sandbox: SandboxClient
) -> AsyncIterator[httpx.AsyncClient]:
    """A client with the API key, on an empty Redis and a reset sandbox posting to the gateway."""
    await sandbox.set_webhook_url(f"{gateway_server.url}/webhooks/whatsapp")
    async with httpx.AsyncClient(
        base_url=gateway_server.url, headers={"X-API-Key": API_KEY}
    ) as client:
        yield client


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    """Wait for an asynchronous webhook to land (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def signed(payload: dict[str, Any], secret: str = APP_SECRET) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return raw, {"X-Hub-Signature-256": signature, "Content-Type": "application/json"}


def envelope(**value: Any) -> dict[str, Any]:
    """Meta's webhook envelope around one change's value."""
    value = {"messaging_product": "whatsapp", "metadata": {"phone_number_id": PNID}, **value}
    change = {"field": "messages", "value": value}
    return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}


def inbound_payload(message_id: str, *, age_s: float = 0) -> dict[str, Any]:
    """A customer's text message, ``age_s`` seconds old."""
    message = {
        "from": "16505551234",
        "id": message_id,
        "timestamp": str(int(time.time() - age_s)),
        "type": "text",
        "text": {"body": "hi"},
    }
    return envelope(messages=[message])


def status_payload(wamid: str, status: str) -> dict[str, Any]:
    """One status of a message waq sent."""
    now = str(int(time.time()))
    return envelope(
        statuses=[{"id": wamid, "status": status, "timestamp": now, "recipient_id": "1"}]
    )


async def customer_writes(api: httpx.AsyncClient, number: str = CUSTOMER) -> str:
    """Through the gateway's sandbox trigger: sandbox -> signed webhook -> gateway."""
    response = await api.post("/v1/sandbox/inbound", json={"from": number, "text": "Hi"})
    assert response.status_code == 200, response.text
    conversation_id: str = response.json()["conversation_id"]

    async def landed() -> bool:
        return (await api.get(f"/v1/conversations/{conversation_id}")).status_code == 200

    await eventually(landed)
    return conversation_id


async def test_missing_or_wrong_api_key_is_401(
    gateway_server: BackgroundServer, redis: Redis
) -> None:
    """No key or a wrong key: 401 in waq's error shape, naming the header."""
    async with httpx.AsyncClient(base_url=gateway_server.url) as client:
        for headers in ({}, {"X-API-Key": "nope"}):
            response = await client.post(
                "/v1/messages", json={"to": CUSTOMER, "message": TEXT}, headers=headers
            )
            assert response.status_code == 401
            assert response.json() == {
                "error": "unauthorized",
                "detail": "missing or unknown X-API-Key",
                "field": "X-API-Key",
            }


async def test_send_answers_202_and_status_is_queued(api: httpx.AsyncClient) -> None:
    """POST /v1/messages queues the message and points at its status."""
    response = await api.post("/v1/messages", json={"to": CUSTOMER, "message": TEXT})
    assert response.status_code == 202
    body = response.json()
    status = await api.get(body["status_url"])
    assert status.status_code == 200
    assert status.json()["state"] == "queued"
    assert status.json()["to"] == CUSTOMER


async def test_idempotency_key_header_returns_the_first_message(api: httpx.AsyncClient) -> None:
    """The same Idempotency-Key answers the same id and queues nothing new."""
    first = await api.post(
        "/v1/messages", json={"to": CUSTOMER, "message": TEXT}, headers={"Idempotency-Key": "k1"}
    )
    again = await api.post(
        "/v1/messages", json={"to": CUSTOMER, "message": TEXT}, headers={"Idempotency-Key": "k1"}
    )
    assert first.json()["id"] == again.json()["id"]
    assert (first.json()["created"], again.json()["created"]) == (True, False)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to": CUSTOMER, "message": {"type": "text", "text": {"body": ""}}}, "message.text.body"),
        ({"to": "not a number", "message": TEXT}, "to"),
        ({"to": CUSTOMER, "message": {"type": "fax"}}, "message"),
        ({"message": TEXT}, "to"),
        ({"to": CUSTOMER, "message": TEXT, "phone_number_id": "abc"}, "phone_number_id"),
    ],
)
async def test_invalid_send_is_422_naming_the_field(
    api: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    """Each contract violation is a 422 with the field's path and a rule, never a 5xx."""
    response = await api.post("/v1/messages", json=body)
    assert response.status_code == 422
    answer = response.json()
    assert answer["error"] == "invalid_request"
    assert field in [e["field"] for e in answer["errors"]]


async def test_non_json_body_is_a_clear_400(api: httpx.AsyncClient) -> None:
    """A body that is not JSON is refused as such, with the shape every error has."""
    response = await api.post(
        "/v1/messages", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_json"
    assert (body["field"], body["errors"][0]["rule"]) == ("(body)", "json_invalid")
    assert "not JSON (at character 1)" in body["detail"]  # not "field": "1", an offset


async def test_the_openapi_document_declares_the_error_body_the_gateway_answers_with(
    api: httpx.AsyncClient,
) -> None:
    """Every 422 in the document is waq's {error, detail, field, errors}, as a real refusal
    is; FastAPI's HTTPValidationError, never sent, is gone."""
    spec = (await api.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert set(schemas["ErrorBody"]["properties"]) == {"error", "detail", "field", "errors"}
    declared = [
        operation["responses"]["422"]["content"]["application/json"]["schema"]
        for path in spec["paths"].values()
        for operation in path.values()
        if "422" in operation["responses"]
    ]
    assert declared
    assert all(d == {"$ref": "#/components/schemas/ErrorBody"} for d in declared)
    refused = await api.post("/v1/messages", json={"to": CUSTOMER})
    assert set(refused.json()) <= set(schemas["ErrorBody"]["properties"])


async def test_batch_answers_per_item(api: httpx.AsyncClient, redis: Redis) -> None:
    """One bad item is refused with its field; the others are queued."""
    items = [
        {"to": CUSTOMER, "message": TEXT},
        {"to": CUSTOMER, "message": {"type": "text", "text": {}}},
        {"to": "+16505550001", "message": TEXT},
    ]
    response = await api.post("/v1/messages/batch", json={"messages": items})
    body = response.json()
    assert response.status_code == 202
    assert (body["accepted"], body["rejected"]) == (2, 1)
    assert [r["index"] for r in body["results"]] == [0, 1, 2]
    assert body["results"][1]["error"]["field"] == "message.text.body"
    assert await redis.hget(keys.lane_job(DEFAULT_PHONE_NUMBER_ID), "pending") == b"2"


async def test_webhook_handshake(api: httpx.AsyncClient) -> None:
    """The right verify token echoes the challenge; a wrong one is 403."""
    params = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    ok = await api.get("/webhooks/whatsapp", params=params)
    assert (ok.status_code, ok.text) == (200, "1158201444")
    bad = await api.get("/webhooks/whatsapp", params={**params, "hub.verify_token": "wrong"})
    assert bad.status_code == 403
    assert bad.json()["error"] == "verification_failed"


async def test_webhook_signature_is_checked_over_the_raw_body(
    api: httpx.AsyncClient, redis: Redis
) -> None:
    """Missing, wrong, or signed-then-altered: 401 and nothing changes; valid: applied."""
    inbound = inbound_payload("wamid.in1")
    raw, headers = signed(inbound)
    for bad_headers, body in [
        ({"Content-Type": "application/json"}, raw),
        ({**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}, raw),
        (headers, raw.replace(b"hi", b"ho")),
        (signed(inbound, secret="other")[1], raw),
    ]:
        response = await api.post("/webhooks/whatsapp", content=body, headers=bad_headers)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_signature"
    assert await redis.exists(keys.window(PNID, "16505551234")) == 0
    response = await api.post("/webhooks/whatsapp", content=raw, headers=headers)
    assert response.status_code == 200
    assert response.json()["inbound"] == 1
    assert await redis.exists(keys.window(PNID, "16505551234")) == 1


async def test_inbound_opens_window_creates_conversation_and_is_published(
    api: httpx.AsyncClient, redis: Redis, sandbox: SandboxClient
) -> None:
    """A customer's message, delivered twice as Meta may, opens the window and is streamed once."""
    await sandbox.set_faults(duplicate_webhook_ratio=1)
    conversation_id = await customer_writes(api)
    conversation = (await api.get(f"/v1/conversations/{conversation_id}")).json()
    assert conversation["window"]["open"] is True
    assert conversation["window"]["closes_at"] == pytest.approx(
        conversation["window"]["last_inbound_at"] + 86400
    )
    found = await api.get("/v1/conversations", params={"customer": "+1 650 555 1234"})
    assert found.json()["id"] == conversation_id
    await eventually(lambda: _count_webhooks(sandbox, 2))
    received = await events_in_stream(redis, "message.received")
    assert len(received) == 1
    assert received[0].conversation_id == conversation_id
    assert received[0].data["window_opened"] is True
    created = await events_in_stream(redis, "conversation.created")
    assert [e.conversation_id for e in created] == [conversation_id]


async def _count_webhooks(sandbox: SandboxClient, n: int) -> bool:
    return len([w for w in await sandbox.webhooks() if w["delivered"]]) >= n


async def test_unknown_conversation_is_404(api: httpx.AsyncClient) -> None:
    """Sending into a conversation that does not exist tells the caller why."""
    response = await api.post("/v1/conversations/c_nope/messages", json={"message": TEXT})
    assert response.status_code == 404
    assert response.json()["error"] == "conversation_not_found"
    assert "must message you first" in response.json()["detail"]


async def test_closed_window_is_409_but_templates_go(api: httpx.AsyncClient, redis: Redis) -> None:
    """A conversation whose window closed refuses free-form with 409 and accepts a template."""
    raw, headers = signed(inbound_payload("wamid.old", age_s=25 * 3600))
    assert (await api.post("/webhooks/whatsapp", content=raw, headers=headers)).status_code == 200
    conversation_id = (await api.get("/v1/conversations", params={"customer": CUSTOMER})).json()[
        "id"
    ]
    refused = await api.post(
        f"/v1/conversations/{conversation_id}/messages", json={"message": TEXT}
    )
    assert refused.status_code == 409
    assert refused.json()["error"] == "window_closed"
    assert "template" in refused.json()["detail"]
    template = {
        "type": "template",
        "template": {"name": "hello_world", "language": {"code": "en_US"}},
    }
    accepted = await api.post(
        f"/v1/conversations/{conversation_id}/messages", json={"message": template}
    )
    assert accepted.status_code == 202


@pytest.mark.parametrize(
    ("kapso", "meta"),
    [
        ({"content": "Hello!"}, TEXT | {"text": {"body": "Hello!"}}),
        (
            {"message_type": "image", "media_url": "https://h/p.jpg", "content": "A caption"},
            {"type": "image", "image": {"link": "https://h/p.jpg", "caption": "A caption"}},
        ),
        (
            {
                "message_type": "document",
                "media_url": "https://h/i.pdf",
                "filename": "i.pdf",
                "caption": "Inv",
            },
            {
                "type": "document",
                "document": {"link": "https://h/i.pdf", "caption": "Inv", "filename": "i.pdf"},
            },
        ),
        (
            {
                "message_type": "location",
                "latitude": 37.44,
                "longitude": -122.16,
                "location_name": "Philz",
                "location_address": "101 Forest Ave",
            },
            {
                "type": "location",
                "location": {
                    "latitude": 37.44,
                    "longitude": -122.16,
                    "name": "Philz",
                    "address": "101 Forest Ave",
                },
            },
        ),
        (
            {
                "message_type": "template",
                "template_name": "order_confirmation",
                "template_language": "en_US",
                "template_params": ["Jessica", "SKBUP2"],
            },
            {
                "type": "template",
                "template": {
                    "name": "order_confirmation",
                    "language": {"code": "en_US"},
                    "components": [
                        {
                            "type": "body",
                            "parameters": [
                                {"type": "text", "text": "Jessica"},
                                {"type": "text", "text": "SKBUP2"},
                            ],
                        }
                    ],
                },
            },
        ),
    ],
)
async def test_kapso_body_equals_meta_body(
    api: httpx.AsyncClient, redis: Redis, kapso: dict[str, Any], meta: dict[str, Any]
) -> None:
    """Kapso's legacy body queues exactly the request Meta's shape would."""
    conversation_id = await customer_writes(api)
    url = f"/v1/conversations/{conversation_id}/messages"
    from_kapso = await api.post(url, json={"message": kapso})
    from_meta = await api.post(url, json={"message": meta})
    assert from_kapso.status_code == from_meta.status_code == 202
    requests = [
        json.loads(await redis.hget(keys.message(r.json()["id"]), "request"))
        for r in (from_kapso, from_meta)
    ]
    assert requests[0] == requests[1]


async def test_kapso_unknown_field_is_named(api: httpx.AsyncClient) -> None:
    """A field Kapso's body does not have is refused by name."""
    conversation_id = await customer_writes(api)
    response = await api.post(
        f"/v1/conversations/{conversation_id}/messages",
        json={"message": {"content": "hi", "colour": "red"}},
    )
    assert response.status_code == 422
    assert response.json()["field"] == "message.colour"


async def test_curl_session_flow_reaches_delivered(
    api: httpx.AsyncClient, redis_url: str, sandbox_server: SandboxServer
) -> None:
    """A customer writes in, a message goes into that conversation, its status reads read."""
    conversation_id = await customer_writes(api)
    sent = await api.post(f"/v1/conversations/{conversation_id}/messages", json={"message": TEXT})
    message_id = sent.json()["id"]
    await run_burst_worker(redis_url, sandbox_server.url)

    async def read() -> bool:
        return bool((await api.get(f"/v1/messages/{message_id}")).json()["state"] == "read")

    await eventually(read)
    status = (await api.get(f"/v1/messages/{message_id}")).json()
    history = [e["state"] for e in status["history"]]
    assert history[:3] == ["queued", "sending", "accepted"]
    assert set(history[3:]) == {"sent", "delivered", "read"}
    # ISO 8601 UTC times, in the order recorded; Meta's whole-second stamps kept apart.
    times = [datetime.fromisoformat(e["at"]) for e in status["history"]]
    assert times == sorted(times)
    assert all(e["at"].endswith("Z") for e in status["history"])
    assert datetime.fromisoformat(status["created_at"]).timestamp() == pytest.approx(
        status["created_at_s"], abs=1e-3
    )
    delivered = next(e for e in status["history"] if e["state"] == "delivered")
    assert datetime.fromisoformat(delivered["reported_at"]).microsecond == 0
    document = (await api.get("/openapi.json")).json()
    schema = document["paths"]["/v1/messages/{message_id}"]["get"]["responses"]["200"]
    validate(status, {**schema["content"]["application/json"]["schema"], **document})


async def test_real_error_bodies_match_the_openapi_document(api: httpx.AsyncClient) -> None:
    """Each refusal (invalid JSON, a bad field, no key, unknown id, a reused key) answers
    the body the document declares for it, named by a machine-readable code."""
    document = (await api.get("/openapi.json")).json()
    send = document["paths"]["/v1/messages"]["post"]["responses"]
    read = document["paths"]["/v1/messages/{message_id}"]["get"]["responses"]
    body = {"phone_number_id": DEFAULT_PHONE_NUMBER_ID, "to": "+16505551234", "message": TEXT}
    refusals = [
        (await api.post("/v1/messages", content=b'{"to": ', headers=_JSON), send, "invalid_json"),
        (await api.post("/v1/messages", json={**body, "to": "12"}), send, "invalid_request"),
        (await api.get("/v1/messages/m_nope", headers={"X-API-Key": "wrong"}), read, None),
        (await api.get("/v1/messages/m_nope"), read, "message_not_found"),
    ]
    await api.post("/v1/messages", json=body, headers={"Idempotency-Key": "k-1"})
    reused = await api.post(
        "/v1/messages", json={**body, "message": {"type": "text", "text": {"body": "other"}}},
        headers={"Idempotency-Key": "k-1"},
    )  # fmt: skip
    refusals.append((reused, send, "idempotency_key_reused"))
    for answer, responses, code in refusals:
        assert 400 <= answer.status_code < 500, answer.text
        declared = responses.get(str(answer.status_code)) or responses["4XX"]
        validate(answer.json(), {**declared["content"]["application/json"]["schema"], **document})
        if code is not None:
            assert answer.json()["error"] == code, answer.text
    assert refusals[0][0].status_code == 400
    assert refusals[0][0].json()["field"] == "(body)"


async def test_statuses_out_of_order_and_duplicated_never_go_back(
    api: httpx.AsyncClient, redis_url: str, sandbox_server: SandboxServer, sandbox: SandboxClient
) -> None:
    """read, then a late delivered and a repeated read: the state stays read."""
    await sandbox.set_webhook_url(None)  # this test posts the statuses itself
    await sandbox.inbound(CUSTOMER)  # Meta's window
    await customer_writes_direct(api)  # waq's window, as the webhook would open it
    message_id = (await api.post("/v1/messages", json={"to": CUSTOMER, "message": TEXT})).json()[
        "id"
    ]
    await run_burst_worker(redis_url, sandbox_server.url)
    wamid = (await api.get(f"/v1/messages/{message_id}")).json()["wamid"]
    answers = []
    for status in ("read", "delivered", "read"):
        raw, headers = signed(status_payload(wamid, status))
        answers.append((await api.post("/webhooks/whatsapp", content=raw, headers=headers)).json())
    assert [a["statuses"] for a in answers] == [1, 1, 0]
    assert answers[2]["duplicates"] == 1
    assert (await api.get(f"/v1/messages/{message_id}")).json()["state"] == "read"


async def customer_writes_direct(api: httpx.AsyncClient) -> None:
    raw, headers = signed(inbound_payload(f"wamid.{time.time()}"))
    assert (await api.post("/webhooks/whatsapp", content=raw, headers=headers)).status_code == 200


async def test_async_131047_becomes_a_dead_letter(
    api: httpx.AsyncClient, redis_url: str, sandbox_server: SandboxServer, sandbox: SandboxClient
) -> None:
    """Meta accepts (200), then fails it by webhook with 131047: a dead letter, template hint."""
    await customer_writes(api)
    await sandbox.set_recipient("16505551234", async_failure_code=131047)
    message_id = (await api.post("/v1/messages", json={"to": CUSTOMER, "message": TEXT})).json()[
        "id"
    ]
    await run_burst_worker(redis_url, sandbox_server.url)

    async def dead() -> bool:
        return bool((await api.get(f"/v1/messages/{message_id}")).json()["state"] == "dead")

    await eventually(dead)
    status = (await api.get(f"/v1/messages/{message_id}")).json()
    assert status["error"]["code"] == 131047
    assert status["error"]["source"] == "status webhook"
    assert "approved template" in status["detail"]


async def test_health_check_healthy_then_blocked(
    api: httpx.AsyncClient, sandbox: SandboxClient, running_worker: None
) -> None:
    """With a worker running: healthy and a test message sent; a BLOCKED number is unhealthy."""
    await customer_writes(api)
    report = (
        await api.post("/v1/health-check", json={"to": CUSTOMER, "text": "ping"}, timeout=20)
    ).json()
    assert report["status"] == "healthy", report
    assert report["checks"]["phone_number_access"]["details"]["verified_name"] == "waq Sandbox"
    assert report["test_message"]["state"] in ("accepted", "sent", "delivered", "read")
    stranger = (await api.post("/v1/health-check", json={"to": "+16505559876"}, timeout=20)).json()
    assert stranger["test_message"]["state"] == "dead"
    assert "window is closed" in stranger["test_message"]["reason"]
    await sandbox.set_number(PNID, health="BLOCKED")
    blocked = (await api.post("/v1/health-check", json={}, timeout=20)).json()
    assert blocked["status"] == "unhealthy"
    assert blocked["checks"]["messaging_health"]["details"]["can_send_message"] == "BLOCKED"


async def test_health_check_without_workers_is_unhealthy(api: httpx.AsyncClient) -> None:
    """No worker polling: unhealthy, saying so, without waiting for a Graph answer."""
    report = (await api.post("/v1/health-check", json={})).json()
    assert report["status"] == "unhealthy"
    assert report["checks"]["workers"]["error"] == "no worker is polling the queue"


async def test_probes_openapi_and_unknown_routes(api: httpx.AsyncClient) -> None:
    """/healthz, /readyz and the OpenAPI document answer; an unknown route is a JSON 404."""
    assert (await api.get("/healthz")).json() == {"ok": True}
    assert (await api.get("/readyz")).json() == {"ok": True}
    spec = (await api.get("/openapi.json")).json()
    assert {"/v1/messages", "/v1/messages/batch", "/webhooks/whatsapp", "/v1/health-check"} <= set(
        spec["paths"]
    )
    missing = await api.get("/v2/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"


async def send_with_the_answer_dropped(
    api: httpx.AsyncClient, redis_url: str, sandbox_url: str, sandbox: SandboxClient,
    body: dict[str, Any],
) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """Meta accepts ``body``'s message but its answer is lost; a worker runs until the status
    webhook reconciles it. The message id, its status, and the sandbox's ledger."""
    await customer_writes(api)
    await sandbox.set_faults(drop_ratio=1)
    message_id = (await api.post("/v1/messages", json=body)).json()["id"]
    await run_burst_worker(
        redis_url, sandbox_url, delivery=DeliveryConfig(reconcile_wait_s=30, reconcile_check_s=0.05)
    )
    status = (await api.get(f"/v1/messages/{message_id}")).json()
    return message_id, status, await sandbox.ledger()


async def test_dropped_answer_is_reconciled_by_webhook_not_resent(
    api: httpx.AsyncClient, redis_url: str, sandbox_server: SandboxServer, sandbox: SandboxClient
) -> None:
    """Meta accepts but the answer is lost: waq waits for the status webhook and never resends."""
    message_id, status, ledger = await send_with_the_answer_dropped(
        api, redis_url, sandbox_server.url, sandbox, {"to": CUSTOMER, "message": TEXT}
    )
    assert [e["biz_opaque_callback_data"] for e in ledger] == [message_id]
    assert status["state"] in ("sent", "delivered", "read")
    assert status["wamid"] == ledger[0]["wamid"]
    assert "sending" in [e["state"] for e in status["history"]]


async def test_the_callers_callback_data_is_kept_and_still_reconciles(
    api: httpx.AsyncClient, redis_url: str, sandbox_server: SandboxServer, sandbox: SandboxClient
) -> None:
    """A caller's own biz_opaque_callback_data goes to Meta after waq's id, comes back with the
    status, and the status webhook that carries both still finds the message when Meta's
    answer was lost (no wamid known)."""
    body = {"to": CUSTOMER, "message": TEXT, "biz_opaque_callback_data": "crm:order-1042"}
    message_id, status, ledger = await send_with_the_answer_dropped(
        api, redis_url, sandbox_server.url, sandbox, body
    )
    assert [e["biz_opaque_callback_data"] for e in ledger] == [f"{message_id}:crm:order-1042"]
    assert status["state"] in ("sent", "delivered", "read")
    assert status["biz_opaque_callback_data"] == "crm:order-1042"
    assert status["metadata"] == {}


async def test_unreconciled_send_is_dead_lettered_as_ambiguous_by_policy(
    api: httpx.AsyncClient, redis_url: str, sandbox_server: SandboxServer, sandbox: SandboxClient
) -> None:
    """No answer and no webhook: with the dead_letter policy the message is not resent."""
    await customer_writes(api)
    await sandbox.set_webhook_url(None)
    await sandbox.set_faults(drop_ratio=1)
    message_id = (await api.post("/v1/messages", json={"to": CUSTOMER, "message": TEXT})).json()[
        "id"
    ]
    await run_burst_worker(
        redis_url,
        sandbox_server.url,
        delivery=DeliveryConfig(
            reconcile_wait_s=0.3, reconcile_check_s=0.05, ambiguous_policy="dead_letter"
        ),
    )
    status = (await api.get(f"/v1/messages/{message_id}")).json()
    assert status["state"] == "dead"
    assert status["error"]["code"] == "ambiguous"
    assert len(await sandbox.ledger()) == 1


async def test_an_inbound_message_whose_apply_failed_is_applied_when_redelivered(
    api: httpx.AsyncClient, redis: Redis
) -> None:
    """Redis fails the apply half way (the events stream's key has the wrong type): the
    gateway answers 5xx; Meta's redelivery, once Redis is right, opens the window and
    publishes the message, once. A marker set before the apply lost it as a duplicate."""
    await redis.set(keys.EVENTS, "not a stream")
    raw, headers = signed(inbound_payload("wamid.apply-fails-once"))
    failed = await api.post("/webhooks/whatsapp", content=raw, headers=headers)
    assert failed.status_code >= 500
    await redis.delete(keys.EVENTS)
    redelivered = await api.post("/webhooks/whatsapp", content=raw, headers=headers)
    assert redelivered.status_code == 200
    assert redelivered.json()["inbound"] == 1
    assert await WindowStore(redis).is_open(PNID, "16505551234")
    received = await events_in_stream(redis, "message.received")
    assert [e.data["message"]["id"] for e in received] == ["wamid.apply-fails-once"]
    again = await api.post("/webhooks/whatsapp", content=raw, headers=headers)
    assert again.json()["duplicates"] == 1
    assert len(await events_in_stream(redis, "message.received")) == 1


async def test_an_async_failure_whose_apply_failed_is_dead_lettered_when_redelivered(
    api: httpx.AsyncClient, redis_url: str, sandbox_server: SandboxServer, sandbox: SandboxClient,
    redis: Redis,
) -> None:  # fmt: skip
    """Meta fails an accepted message by webhook (131047) while Redis fails the apply half way
    (the dead-letter index has the wrong type): 5xx, and the redelivery makes the dead letter
    instead of being skipped as already seen."""
    await sandbox.set_webhook_url(None)  # this test posts the statuses itself
    await sandbox.inbound(CUSTOMER)
    await customer_writes_direct(api)
    message_id = (await api.post("/v1/messages", json={"to": CUSTOMER, "message": TEXT})).json()[
        "id"
    ]
    await run_burst_worker(redis_url, sandbox_server.url)
    wamid = (await api.get(f"/v1/messages/{message_id}")).json()["wamid"]
    failed = status_payload(wamid, "failed")
    failed["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"] = [
        {"code": 131047, "title": "Re-engagement message"}
    ]
    raw, headers = signed(failed)
    await redis.set(keys.DEAD_LETTERS, "not a sorted set")
    assert (await api.post("/webhooks/whatsapp", content=raw, headers=headers)).status_code >= 500
    await redis.delete(keys.DEAD_LETTERS)
    redelivered = await api.post("/webhooks/whatsapp", content=raw, headers=headers)
    assert redelivered.json()["dead_letters"] == 1
    assert (await api.get(f"/v1/messages/{message_id}")).json()["state"] == "dead"
    assert await redis.zrange(keys.DEAD_LETTERS, 0, -1) == [message_id.encode()]


def failed_payload(wamid: str, code: int, *, age_s: float = 0) -> dict[str, Any]:
    """Meta's `failed` status with one error, ``age_s`` seconds old."""
    payload = status_payload(wamid, "failed")
    item = payload["entry"][0]["changes"][0]["value"]["statuses"][0]
    item["timestamp"] = str(int(time.time() - age_s))
    item["errors"] = [{"code": code, "title": "Business Account locked"}]
    return payload


async def sent_by_the_worker(
    api: httpx.AsyncClient, redis_url: str, sandbox_url: str, idempotency_key: str
) -> tuple[str, str]:
    """A text through the gateway and a burst worker: its id and wamid."""
    body = {"to": CUSTOMER, "message": TEXT, "idempotency_key": idempotency_key}
    message_id = (await api.post("/v1/messages", json=body)).json()["id"]
    await run_burst_worker(redis_url, sandbox_url)
    return message_id, (await api.get(f"/v1/messages/{message_id}")).json()["wamid"]


async def test_a_stale_failure_never_kills_a_read_message_nor_pauses_its_number(
    api: httpx.AsyncClient, redis_url: str, sandbox_server: SandboxServer, sandbox: SandboxClient,
    redis: Redis,
) -> None:  # fmt: skip
    """A correctly signed `failed` (131031, a pause code) a week old, for a message already
    read: the message stays read, no dead letter is made, the number is not paused."""
    await sandbox.set_webhook_url(None)  # this test posts the statuses itself
    await sandbox.inbound(CUSTOMER)
    await customer_writes_direct(api)
    message_id, wamid = await sent_by_the_worker(api, redis_url, sandbox_server.url, "read-one")
    for state in ("sent", "delivered", "read"):
        raw, headers = signed(status_payload(wamid, state))
        assert (await api.post("/webhooks/whatsapp", content=raw, headers=headers)).json()[
            "statuses"
        ] == 1
    raw, headers = signed(failed_payload(wamid, 131031, age_s=7 * 24 * 3600))
    answer = (await api.post("/webhooks/whatsapp", content=raw, headers=headers)).json()
    assert (answer["stale"], answer["dead_letters"]) == (1, 0)
    assert (await api.get(f"/v1/messages/{message_id}")).json()["state"] == "read"
    assert await redis.zcard(keys.DEAD_LETTERS) == 0
    assert await PauseStore(redis).get(PNID) is None


async def test_a_failure_pauses_the_number_only_if_newer_than_its_last_success(
    api: httpx.AsyncClient, redis_url: str, sandbox_server: SandboxServer, sandbox: SandboxClient,
    redis: Redis,
) -> None:  # fmt: skip
    """Message A is read now; B, accepted, fails with 131031 reported an hour ago: B is dead
    (Meta never delivered it) but the number, which delivered A since, is not paused. A fresh
    131031 for C pauses it."""
    await sandbox.set_webhook_url(None)
    await sandbox.inbound(CUSTOMER)
    await customer_writes_direct(api)
    _, wamid_a = await sent_by_the_worker(api, redis_url, sandbox_server.url, "a")
    raw, headers = signed(status_payload(wamid_a, "read"))
    await api.post("/webhooks/whatsapp", content=raw, headers=headers)
    b, wamid_b = await sent_by_the_worker(api, redis_url, sandbox_server.url, "b")
    raw, headers = signed(failed_payload(wamid_b, 131031, age_s=3600))
    answer = (await api.post("/webhooks/whatsapp", content=raw, headers=headers)).json()
    assert answer["dead_letters"] == 1
    assert (await api.get(f"/v1/messages/{b}")).json()["state"] == "dead"
    assert await PauseStore(redis).get(PNID) is None
    c, wamid_c = await sent_by_the_worker(api, redis_url, sandbox_server.url, "c")
    raw, headers = signed(failed_payload(wamid_c, 131031))
    assert (await api.post("/webhooks/whatsapp", content=raw, headers=headers)).json()[
        "dead_letters"
    ] == 1
    pause = await PauseStore(redis).get(PNID)
    assert pause is not None
    assert pause.code == 131031
    assert (await api.get(f"/v1/messages/{c}")).json()["state"] == "dead"


async def test_conversation_ids_are_keyed_per_deployment(redis: Redis) -> None:
    """An id is an HMAC under the deployment's key: not the plain hash of the two numbers
    (which anyone can reverse by trying every phone number), the same for every gateway of
    a deployment and after a restart, different in another deployment or with another key."""
    windows = WindowStore(redis)
    first = await ConversationStore(redis, windows).id_for(PNID, "16505551234")
    again = await ConversationStore(redis, windows).id_for(PNID, "16505551234")  # a restart
    plain = "c_" + hashlib.sha256(f"{PNID}:16505551234".encode()).hexdigest()[:24]
    assert first == again != plain
    configured = ConversationStore(redis, windows, key="ops-chosen-key")
    assert await configured.id_for(PNID, "16505551234") not in (first, plain)
    await redis.flushall()  # another deployment
    assert await ConversationStore(redis, windows).id_for(PNID, "16505551234") != first


async def test_concurrent_single_sends_share_script_calls(
    api: httpx.AsyncClient, redis: Redis
) -> None:
    """50 single sends at once through the real door: fewer script calls than messages
    (producer/coalesce.py), and each answer names its own message."""

    async def calls() -> int:
        stats = await redis.info("commandstats")
        scripts = ("cmdstat_evalsha", "cmdstat_eval")
        return sum(int(v["calls"]) for k, v in stats.items() if k in scripts)

    await api.post("/v1/messages", json={"to": CUSTOMER, "message": TEXT})  # script loaded
    before = await calls()
    answers = await asyncio.gather(*(
        api.post("/v1/messages", json={"to": f"+1650555{n:04d}", "message": TEXT})
        for n in range(50)
    ))  # fmt: skip
    used = await calls() - before
    assert [a.status_code for a in answers] == [202] * 50
    ids = [a.json()["id"] for a in answers]
    assert len(set(ids)) == 50
    for n, message_id in enumerate(ids):
        status = (await api.get(f"/v1/messages/{message_id}")).json()
        assert status["to"] == f"+1650555{n:04d}", status
    assert used < 50, used
