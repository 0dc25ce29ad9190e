"""Events out: every transition's event in the stream, and signed webhooks that lose none.

The parts are real: Valkey, the sandbox (Meta's statuses come back by webhook through the
gateway), the gateway over HTTP with an admin key, a worker with its event pump, and a
receiver over HTTP that verifies each delivery with the ``standardwebhooks`` library.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from standardwebhooks import Webhook

from producer import Producer, keys
from producer.conversation_ids import ConversationIds
from producer.errors import ConfigurationError
from producer.events import Event
from producer.status_store import StatusStore
from sandbox import DEFAULT_PHONE_NUMBER_ID, SandboxClient
from sandbox.server import BackgroundServer
from tests.conftest import API_KEY, FAST_WEBHOOKS
from tests.receiver import Receiver, ReceiverServer
from tests.support import TEMPLATE, TEXT, events_in_stream
from tests.test_gateway import eventually
from worker.dead_letters import DeadLetterStore
from worker.event_pump import EventPump
from worker.metrics import WorkerMetrics
from worker.pauses import PauseStore
from worker.subscriptions import SubscriptionSpec, SubscriptionStore

PNID = DEFAULT_PHONE_NUMBER_ID
FAST = FAST_WEBHOOKS


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    """``eventually``, with the longer wait these end-to-end scenes need."""
    await eventually(check, timeout_s)


async def subscribe(admin: httpx.AsyncClient, url: str, **spec: Any) -> dict[str, Any]:
    response = await admin.post("/v1/webhooks", json={"url": url, **spec})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def outbox_settled(admin: httpx.AsyncClient, subscription_id: str) -> None:
    """Wait until the subscription holds nothing pending.

    A receiver records an event before it answers, and waq settles it after the answer (or
    after its timeout, then retries): "the receiver has them all" comes a moment before.
    """

    async def settled() -> bool:
        answer = await admin.get(f"/v1/webhooks/{subscription_id}")
        return bool(answer.json()["stats"]["pending"] == 0)

    await until(settled, timeout_s=30)


async def customers_write(admin: httpx.AsyncClient, numbers: list[str]) -> None:
    for number in numbers:
        response = await admin.post("/v1/sandbox/inbound", json={"from": number, "text": "Hi"})
        assert response.status_code == 200, response.text


async def send(admin: httpx.AsyncClient, to: str, **extra: Any) -> str:
    response = await admin.post("/v1/messages", json={"to": to, "message": TEXT, **extra})
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id


# -- the stream ----------------------------------------------------------------------------


async def test_a_messages_transitions_are_its_events_in_order(
    admin: httpx.AsyncClient, redis: Redis, start_worker: Callable[..., Awaitable[None]]
) -> None:
    """Queued, sent, delivered, read: each once, in order, with the conversation, the caller's
    metadata and callback data; a customer's message, its conversation and window too."""
    await start_worker()
    customer = "+16505550101"
    await customers_write(admin, [customer])
    message_id = await send(
        admin, customer, metadata={"order": "42"}, biz_opaque_callback_data="mine"
    )

    async def read() -> bool:
        return bool((await admin.get(f"/v1/messages/{message_id}")).json()["state"] == "read")

    await until(read)
    status = (await admin.get(f"/v1/messages/{message_id}")).json()
    events = [e for e in await events_in_stream(redis) if e.data.get("message_id") == message_id]
    assert [e.type for e in events] == [
        "message.queued", "message.sent", "message.delivered", "message.read"
    ]  # fmt: skip
    for event in events:
        assert event.conversation_id == status["conversation_id"] is not None
        assert event.data["metadata"] == {"order": "42"}
        assert event.data["biz_opaque_callback_data"] == "mine"
        assert event.data["to"] == customer
        assert event.data["phone_number_id"] == PNID
        assert event.id.startswith("evt_")
        assert event.version == 1
    assert events[1].data["wamid"] == status["wamid"]
    [received] = await events_in_stream(redis, "message.received")
    assert received.conversation_id == status["conversation_id"]
    assert received.data["window_opened"] is True
    assert received.data["message"]["text"]["body"] == "Hi"
    [created] = await events_in_stream(redis, "conversation.created")
    assert created.conversation_id == status["conversation_id"]


async def test_dead_letters_requeues_and_pauses_are_events(
    admin: httpx.AsyncClient, redis: Redis, start_worker: Callable[..., Awaitable[None]]
) -> None:
    """A text with the window shut is dead-lettered (with code, hint and suggestion); its
    requeue as a template is an event; pausing and resuming a number are events."""
    await start_worker()
    message_id = await send(admin, "+16505550102")

    async def dead() -> bool:
        return bool(await events_in_stream(redis, "message.dead_lettered"))

    await until(dead)
    [letter] = await events_in_stream(redis, "message.dead_lettered")
    assert letter.data["message_id"] == message_id
    assert letter.data["suggestion"] == "send_template"
    assert letter.data["hint"]
    assert letter.data["error"]["code"] == 131047
    store = DeadLetterStore(redis, StatusStore(redis, retention_s=3600))
    letter_entry = await store.get(message_id)
    assert letter_entry is not None
    template = {**letter_entry.request, "message": TEMPLATE}
    assert await store.requeue(letter_entry, request=template, note="as a template")
    [again] = await events_in_stream(redis, "message.requeued")
    assert again.data["message_id"] == message_id
    assert again.data["to"] == "+16505550102"
    pauses = PauseStore(redis)
    assert await pauses.pause(PNID, reason="a test", code=None, by="operator")
    assert await pauses.resume(PNID, by="operator")
    assert not await pauses.resume(PNID, by="operator")  # nothing happened: no event
    numbers = await events_in_stream(redis, "number.paused", "number.resumed")
    assert [(e.type, e.data["phone_number_id"], e.data["by"]) for e in numbers] == [
        ("number.paused", PNID, "operator"), ("number.resumed", PNID, "operator")
    ]  # fmt: skip
    assert numbers[0].data["reason"] == "a test"


async def test_a_failure_meta_reports_later_is_failed_then_dead_lettered(
    admin: httpx.AsyncClient,
    redis: Redis,
    sandbox: SandboxClient,
    start_worker: Callable[..., Awaitable[None]],
) -> None:
    """Meta accepts, then fails the message by webhook: sent, failed with Meta's error, then
    dead-lettered with the hint; in that order, each once."""
    await start_worker()
    customer = "+16505550103"
    await customers_write(admin, [customer])
    await sandbox.set_recipient(customer[1:], async_failure_code=131047)
    message_id = await send(admin, customer)

    async def dead() -> bool:
        return bool(await events_in_stream(redis, "message.dead_lettered"))

    await until(dead)
    events = [e for e in await events_in_stream(redis) if e.data.get("message_id") == message_id]
    assert [e.type for e in events] == [
        "message.queued", "message.sent", "message.failed", "message.dead_lettered"
    ]  # fmt: skip
    assert events[2].data["error"]["code"] == 131047
    assert events[2].data["error"]["source"] == "status webhook"
    assert events[3].data["suggestion"] == "send_template"


# -- webhooks ------------------------------------------------------------------------------


async def test_a_flaky_receiver_gets_every_event_in_order_per_conversation(
    admin: httpx.AsyncClient,
    redis: Redis,
    receiver_server: ReceiverServer,
    start_worker: Callable[..., Awaitable[None]],
) -> None:
    """500s, 429s, hangs past the timeout and slow 200s: every event arrives at least once,
    after the consumer's dedupe exactly once, in the stream's order within each conversation,
    and every delivery verifies with the standardwebhooks library."""
    subscription = await subscribe(admin, receiver_server.events_url, concurrency=8)
    receiver = receiver_server.receiver
    receiver.secrets = [subscription["secret"]]
    receiver.behaviour = "flaky"
    receiver.hang_s = FAST.timeout_s * 1.5
    await start_worker()
    await start_worker()  # two workers: two pumps, one delivery job per subscription
    customers = [f"+1650555{2000 + i}" for i in range(12)]
    await customers_write(admin, customers)
    sent = [await send(admin, customers[i % len(customers)]) for i in range(60)]

    async def all_read() -> bool:
        states = [(await admin.get(f"/v1/messages/{m}")).json()["state"] for m in sent]
        return all(state == "read" for state in states)

    await until(all_read, timeout_s=60)
    started = time.monotonic()
    emitted: dict[str, Event] = {}

    async def all_arrived() -> bool:  # every event in the stream, read afresh each time
        emitted.clear()
        emitted.update((e.id, e) for e in await events_in_stream(redis))
        return emitted.keys() <= receiver.unique_events().keys()

    try:
        await until(all_arrived, timeout_s=90)
    except AssertionError:
        missing = emitted.keys() - receiver.unique_events().keys()
        raise AssertionError(f"never arrived: {sorted(missing)[:10]} of {len(missing)}; "
                             f"answers {receiver.answers}") from None  # fmt: skip
    drained_s = time.monotonic() - started
    unique = receiver.unique_events()
    assert unique.keys() == emitted.keys(), sorted(unique.keys() ^ emitted.keys())
    for event_id, body in unique.items():
        assert Event.model_validate(body) == emitted[event_id]
    # Per conversation, first arrivals follow the stream's order.
    expected: dict[str, list[str]] = defaultdict(list)
    for emitted_event in emitted.values():
        expected[emitted_event.conversation_id or ""].append(emitted_event.id)
    arrived: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set()
    for event in receiver.arrivals():
        if event["id"] not in seen:
            seen.add(event["id"])
            arrived[event["data"].get("conversation_id") or ""].append(event["id"])
    assert arrived == expected
    assert receiver.refused == []
    duplicates = len(receiver.arrivals()) - len(unique)
    answers = dict(receiver.answers)
    assert int(answers.get("500", 0)) > 0
    assert int(answers.get("429", 0)) > 0

    # An event the receiver took after waq's timeout is still pending for waq (its retry is
    # due, and the receiver dedupes it): the outbox empties once that retry settles.
    await outbox_settled(admin, subscription["id"])
    details = (await admin.get(f"/v1/webhooks/{subscription['id']}?attempts=100")).json()
    assert details["stats"]["pending"] == 0
    assert details["stats"]["dead"] == 0
    latencies = [
        d.at - _event_time(e) for d in receiver.deliveries for e in d.events if e["id"] in seen
    ]
    stats = details["stats"]
    print(  # the closing note's figures
        f"\nflaky receiver: {len(emitted)} events emitted, {len(unique)} delivered, "
        f"lost {len(emitted.keys() - unique.keys())}; waq made {stats['attempts']} requests, "
        f"{stats['failures']} failed and were retried; the receiver answered {answers} and "
        f"saw {duplicates} duplicates (removed by its dedupe); drained {drained_s:.1f} s "
        f"after the last read; delivery latency p50 "
        f"{statistics.median(latencies):.2f} s p99 "
        f"{statistics.quantiles(latencies, n=100)[98]:.2f} s"
    )


def _event_time(event: dict[str, Any]) -> float:
    millis = int(event["id"].removeprefix("evt_").split("-")[0])
    return millis / 1000


async def test_a_receiver_down_past_the_retry_budget_keeps_its_events_for_a_replay(
    admin: httpx.AsyncClient,
    redis: Redis,
    receiver_server: ReceiverServer,
    start_worker: Callable[..., Awaitable[None]],
) -> None:
    """503 for longer than the schedule: the subscription is paused with the reason, every
    event waits in its dead letters (new ones too), and a replay delivers them all, in order."""
    short = dataclasses.replace(FAST, retry_schedule_s=(0.05, 0.1))
    subscription = await subscribe(admin, receiver_server.events_url)
    receiver = receiver_server.receiver
    receiver.secrets = [subscription["secret"]]
    receiver.behaviour = "down"
    await start_worker(webhooks=short)
    await customers_write(admin, ["+16505553001"])

    async def paused() -> bool:
        details = (await admin.get(f"/v1/webhooks/{subscription['id']}")).json()
        return bool(details["state"]["state"] == "paused")

    await until(paused)
    details = (await admin.get(f"/v1/webhooks/{subscription['id']}?attempts=10")).json()
    assert "not delivered after 3 attempts" in details["state"]["reason"]
    assert [a["status"] for a in details["recent_attempts"]] == [503, 503, 503]
    await customers_write(admin, ["+16505553002"])  # while paused: straight to dead letters

    async def all_dead() -> bool:
        dead = (await admin.get(f"/v1/webhooks/{subscription['id']}/dead-letters")).json()
        return len(dead) == 4  # two conversations: created + received each

    await until(all_dead)
    dead = (await admin.get(f"/v1/webhooks/{subscription['id']}/dead-letters")).json()
    assert [d["type"] for d in dead] == ["conversation.created", "message.received"] * 2
    assert dead[0]["status"] == 503
    assert "paused" in dead[0]["reason"]
    assert dead[2]["reason"] == "the subscription is paused"
    receiver.behaviour = "ok"
    replayed = await admin.post(f"/v1/webhooks/{subscription['id']}/replay")
    assert replayed.json() == {"replayed": 4}

    async def delivered() -> bool:
        return len(receiver.unique_events()) == 4

    await until(delivered)
    arrived: dict[str, list[str]] = defaultdict(list)
    for event in receiver.arrivals():
        arrived[event["data"]["conversation_id"]].append(event["id"])
    expected: dict[str, list[str]] = defaultdict(list)
    for letter in dead:
        expected[letter["conversation"]].append(letter["event_id"])
    assert arrived == expected
    await outbox_settled(admin, subscription["id"])  # the receiver counts before it answers
    details = (await admin.get(f"/v1/webhooks/{subscription['id']}")).json()
    assert details["state"]["state"] == "active"
    assert details["stats"]["dead"] == 0
    assert details["stats"]["pending"] == 0


async def test_410_disables_and_other_4xx_are_not_retried(
    admin: httpx.AsyncClient,
    receiver_server: ReceiverServer,
    start_worker: Callable[..., Awaitable[None]],
) -> None:
    """A 400 is not retried: the event goes to the dead letters and the next one goes on;
    410 Gone disables the subscription."""
    subscription = await subscribe(admin, receiver_server.events_url)
    receiver = receiver_server.receiver
    receiver.secrets = [subscription["secret"]]
    receiver.behaviour = "status:400"
    await start_worker()
    await customers_write(admin, ["+16505554001"])
    path = f"/v1/webhooks/{subscription['id']}"

    async def refused_both() -> bool:
        return len((await admin.get(f"{path}/dead-letters")).json()) == 2

    await until(refused_both)
    assert receiver.requests == 2  # one try each
    details = (await admin.get(path)).json()
    assert details["state"]["state"] == "active"
    receiver.behaviour = "status:410"
    await customers_write(admin, ["+16505554002"])

    async def disabled() -> bool:
        return bool((await admin.get(path)).json()["state"]["state"] == "disabled")

    await until(disabled)
    assert "410" in (await admin.get(path)).json()["state"]["reason"]


async def test_the_receiver_refuses_a_tampered_body_and_a_stale_timestamp(
    admin: httpx.AsyncClient,
    receiver_server: ReceiverServer,
    start_worker: Callable[..., Awaitable[None]],
) -> None:
    """What waq signs verifies with the library; the same request tampered with, or replayed
    with an old timestamp, does not; after a rotation both secrets verify."""
    subscription = await subscribe(admin, receiver_server.events_url)
    receiver = receiver_server.receiver
    receiver.secrets = [subscription["secret"]]
    await start_worker()
    test = await admin.post(f"/v1/webhooks/{subscription['id']}/test")
    assert test.status_code == 202

    async def got_it() -> bool:
        return len(receiver.deliveries) == 1

    await until(got_it)
    [delivery] = receiver.deliveries
    assert delivery.events[0]["id"] == test.json()["event_id"]
    assert delivery.events[0]["type"] == "webhook.test"
    url = receiver_server.events_url
    headers = {k: v for k, v in delivery.headers.items() if k.startswith("webhook-")}
    async with httpx.AsyncClient() as client:
        tampered = delivery.body.replace(b"a test", b"a trick")
        assert (await client.post(url, content=tampered, headers=headers)).status_code == 401
        stale = {**headers, "webhook-timestamp": str(int(time.time()) - 600)}
        assert (await client.post(url, content=delivery.body, headers=stale)).status_code == 401
    assert "too old" in receiver.refused[-1]
    rotated = (await admin.post(f"/v1/webhooks/{subscription['id']}/rotate-secret")).json()
    assert rotated["secret"] != subscription["secret"]
    await admin.post(f"/v1/webhooks/{subscription['id']}/test")

    async def got_two() -> bool:
        return len(receiver.deliveries) == 2

    await until(got_two)
    second = receiver.deliveries[1]
    assert len(second.headers["webhook-signature"].split(" ")) == 2
    for secret in (subscription["secret"], rotated["secret"]):
        Webhook(secret).verify(second.body, second.headers)


async def test_a_batch_window_gathers_events_into_one_request(
    admin: httpx.AsyncClient,
    receiver_server: ReceiverServer,
    start_worker: Callable[..., Awaitable[None]],
) -> None:
    """max_batch 10 with a 1 s window: six events in one request, each conversation's in order."""
    subscription = await subscribe(
        admin, receiver_server.events_url, max_batch=10, buffer_s=1.0, types=["message.received"]
    )
    receiver = receiver_server.receiver
    receiver.secrets = [subscription["secret"]]
    await start_worker()
    await customers_write(admin, [f"+1650555500{i}" for i in range(3)] * 2)

    async def got_six() -> bool:
        return len(receiver.arrivals()) == 6

    await until(got_six)
    assert len(receiver.deliveries) == 1
    [batch] = receiver.deliveries
    assert json.loads(batch.body)["type"] == "batch"
    assert batch.headers["webhook-id"].startswith("batch_")
    assert {e["type"] for e in batch.events} == {"message.received"}


async def test_metas_raw_webhooks_are_forwarded_byte_for_byte(
    admin: httpx.AsyncClient,
    receiver_server: ReceiverServer,
    start_worker: Callable[..., Awaitable[None]],
) -> None:
    """A subscription to meta.webhook gets Meta's body as Meta sent it, freshly signed."""
    from tests.test_gateway import inbound_payload, signed

    subscription = await subscribe(admin, receiver_server.events_url, types=["meta.webhook"])
    receiver = receiver_server.receiver
    receiver.secrets = [subscription["secret"]]
    await start_worker()
    raw, headers = signed(inbound_payload(f"wamid.raw{time.time()}"))
    assert (await admin.post("/webhooks/whatsapp", content=raw, headers=headers)).status_code == 200

    async def forwarded() -> bool:
        return len(receiver.deliveries) == 1

    await until(forwarded)
    assert receiver.deliveries[0].body == raw
    assert receiver.deliveries[0].headers["webhook-id"].startswith("evt_")


async def test_subscriptions_need_an_admin_key_and_hide_their_secret(
    admin: httpx.AsyncClient, admin_gateway: BackgroundServer
) -> None:
    """An API key gets 403 with a code; the secret is whole only in the answer that made it;
    a bad URL or type is a 422 naming the field."""
    async with httpx.AsyncClient(base_url=admin_gateway.url) as client:
        response = await client.get("/v1/webhooks", headers={"X-API-Key": API_KEY})
    assert response.status_code == 403
    assert response.json()["error"] == "admin_key_required"
    made = await subscribe(admin, "https://example.com/hooks", numbers=[PNID])
    assert made["secret"].startswith("whsec_")
    assert len(made["secret"]) > 40
    [listed] = (await admin.get("/v1/webhooks")).json()
    assert listed["secret"] == "whsec_…" + made["secret"][-4:]
    for bad, field in (
        ({"url": "http://example.com/x"}, "url"),
        ({"url": "https://example.com/x", "types": ["message.nope"]}, "types"),
        ({"url": "https://example.com/x", "types": ["meta.webhook"], "max_batch": 5}, "max_batch"),
    ):
        refused = await admin.post("/v1/webhooks", json=bad)
        assert refused.status_code == 422, refused.text
        assert refused.json()["field"] == field
    assert (await admin.delete(f"/v1/webhooks/{made['id']}")).status_code == 204
    assert (await admin.get(f"/v1/webhooks/{made['id']}")).status_code == 404


async def test_a_new_subscription_gets_only_events_from_then_on(
    redis: Redis, admin: httpx.AsyncClient
) -> None:
    """Events emitted before a subscription existed are not delivered to it."""
    await customers_write(admin, ["+16505556001"])
    store = SubscriptionStore(redis)
    made = await store.add(SubscriptionSpec(url="https://example.com/x"))
    pump = EventPump(redis, store)
    assert await pump.step() == 2
    assert (await store.stats(made.id)).pending == 0
    await customers_write(admin, ["+16505556002"])
    assert await pump.step() == 2
    assert (await store.stats(made.id)).pending == 2
    assert Receiver().unique_events() == {}


async def test_a_subscription_never_has_more_requests_in_flight_than_its_cap(
    admin: httpx.AsyncClient,
    receiver_server: ReceiverServer,
    start_worker: Callable[..., Awaitable[None]],
) -> None:
    """Concurrency 3 and a slow receiver: twelve conversations' events go three at a time,
    never more, even with two workers; and the worker's metrics count them."""
    subscription = await subscribe(
        admin, receiver_server.events_url, concurrency=3, types=["message.received"]
    )
    receiver = receiver_server.receiver
    receiver.secrets = [subscription["secret"]]
    # Under the sender's 0.4 s timeout (a request it gave up on is not in flight for it, but
    # the receiver still counts it), and the twelve write at once so they pile up behind the
    # cap: written one by one on a loaded machine they once trickled in, 2 at most in flight.
    receiver.behaviour = "slow:0.3"
    metrics = WorkerMetrics()  # one registry for both: Prometheus would sum the two
    await start_worker(metrics=metrics)
    await start_worker(metrics=metrics)
    await asyncio.gather(*(customers_write(admin, [f"+165055561{i:02d}"]) for i in range(12)))

    async def all_in() -> bool:
        return len(receiver.unique_events()) == 12

    await until(all_in)
    assert receiver.most_in_flight == 3

    def counted() -> float | None:
        return metrics.registry.get_sample_value(
            "waq_webhook_events_delivered_total",
            {"subscription": subscription["id"], "type": "message.received"},
        )

    async def all_counted() -> bool:  # counted after the settle, after the receiver answered
        return counted() == 12

    await until(all_counted)
    delivered = counted()
    aged = metrics.registry.get_sample_value("waq_webhook_event_age_seconds_count")
    assert aged == 12
    pumped = metrics.registry.get_sample_value("waq_events_total", {"type": "message.received"})
    assert delivered is not None
    assert pumped is not None
    assert delivered == 12
    assert pumped == 12
    text = (await admin.get("/metrics")).text
    assert f'waq_webhook_pending{{subscription="{subscription["id"]}"}} 0.0' in text
    assert f'waq_webhook_delivered{{subscription="{subscription["id"]}"}} 12.0' in text
    assert "waq_events_emitted_total 24.0" in text  # 12 conversations created, 12 messages
    assert "waq_events_pump_lag_seconds 0.0" in text


async def test_producers_name_conversations_as_the_gateway_does(redis: Redis) -> None:
    """A message's events name the conversation the gateway would; with a configured key, a
    producer that lacks it refuses to enqueue rather than make up other ids."""
    gateway_ids = ConversationIds(redis, key="deployment-secret")
    expected = await gateway_ids.id_for(PNID, "16505550104")
    request = {"phone_number_id": PNID, "to": "+16505550104", "message": TEMPLATE}
    with pytest.raises(ConfigurationError) as refused:
        await Producer(redis).enqueue(request)
    assert refused.value.code == "conversation_key_missing"
    assert await redis.xlen(keys.EVENTS) == 0  # nothing was enqueued
    queued = await Producer(redis, conversation_key="deployment-secret").enqueue(request)
    [event] = await events_in_stream(redis, "message.queued")
    assert event.data["message_id"] == queued.message_id
    assert event.conversation_id == expected
