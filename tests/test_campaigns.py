"""Control over queued messages: cancel one not yet handed to Meta, schedule one for later.

Read back as they really are in Redis (records, lanes, order lists, the lane job's pending
count) and at the sandbox, with real workers sending.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from producer import Producer, keys
from producer.opt_outs import OptOuts
from producer.recipient import wa_id_of
from producer.status import MessageState
from producer.template_catalog import CatalogTemplate, TemplateCatalog
from sandbox import DEFAULT_PHONE_NUMBER_ID, SandboxClient
from tests.support import CUSTOMER, STRANGER, TEMPLATE, Pipeline, events_in_stream
from tests.test_gateway import eventually
from waq.cli import app

PNID = DEFAULT_PHONE_NUMBER_ID
HANDED_TO_META = {"accepted", "sent", "delivered", "read"}  # Meta's statuses move it on


def template(to: str = CUSTOMER, **extra: Any) -> dict[str, Any]:
    return {"phone_number_id": PNID, "to": to, "message": TEMPLATE, **extra}


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


async def state_of(redis: Redis, message_id: str) -> str:
    raw = await redis.hget(keys.message(message_id), "state")
    return raw.decode() if raw else ""


async def test_cancelling_queued_messages_lets_the_conversations_next_one_go(
    pipeline: Pipeline, redis: Redis, sandbox: SandboxClient
) -> None:
    """Three messages to one customer: cancel the head and the middle one; only the third is
    sent, the lane and order list hold nothing after, the pending count is back to 0, and
    each cancel is an event."""
    producer = Producer(redis)
    first, middle, last = await producer.enqueue_many([template()] * 3)
    assert (await producer.cancel(middle.message_id)).cancelled
    assert (await producer.cancel(first.message_id)).cancelled
    lane = [m.decode() for m in await redis.zrange(keys.lane(PNID), 0, -1)]
    assert lane == [last.message_id]  # the head moved up
    await pipeline.run_worker()
    ledger = await sandbox.ledger()
    assert [e["biz_opaque_callback_data"] for e in ledger] == [last.message_id]
    assert await state_of(redis, first.message_id) == "cancelled"
    assert await state_of(redis, middle.message_id) == "cancelled"
    assert await redis.exists(keys.order(PNID, wa_id_of(CUSTOMER))) == 0
    assert await redis.hget(keys.lane_job(PNID), "pending") == b"0"
    cancelled = await events_in_stream(redis, "message.cancelled")
    assert [e.data["message_id"] for e in cancelled] == [middle.message_id, first.message_id]
    assert {e.data["was"] for e in cancelled} == {"queued"}
    status = await producer.status(first.message_id)
    assert status is not None
    assert status.history[-1].state is MessageState.CANCELLED


async def test_a_message_handed_to_meta_cannot_be_cancelled(
    admin: httpx.AsyncClient,
    pipeline: Pipeline,
    redis: Redis,
    redis_url: str,
    sandbox: SandboxClient,
) -> None:
    """Over HTTP: 409 not_cancellable with the state for a sent message, 404 for an unknown
    id, 200 by idempotency key; `waq cancel` says the same and exits 1 when one is kept."""
    sent = await pipeline.send(message=TEMPLATE)
    await pipeline.run_worker()
    refused = await admin.delete(f"/v1/messages/{sent.message_id}")
    assert refused.status_code == 409
    assert refused.json()["error"] == "not_cancellable"
    assert refused.json()["state"] in HANDED_TO_META
    assert (await admin.delete("/v1/messages/m_nope")).status_code == 404
    keyed = await admin.post(
        "/v1/messages",
        json={"to": STRANGER, "message": TEMPLATE, "idempotency_key": "order-7"},
    )
    by_key = await admin.delete("/v1/messages", params={"idempotency_key": "order-7"})
    assert by_key.status_code == 200, by_key.text
    assert by_key.json() == {"id": keyed.json()["id"], "state": "cancelled"}
    again = await pipeline.send(message=TEMPLATE)
    result = await asyncio.to_thread(
        lambda: CliRunner().invoke(
            app, ["cancel", again.message_id, sent.message_id],
            env={"WAQ_REDIS_URL": redis_url},
        )
    )  # fmt: skip
    assert result.exit_code == 1
    assert f"{again.message_id}: cancelled" in result.output
    kept = result.output.splitlines()[1]
    assert kept.startswith(f"{sent.message_id}: not cancelled, it is ")
    assert kept.rsplit(" ", 1)[1] in HANDED_TO_META


async def test_a_scheduled_message_leaves_on_time_and_holds_nobody_up(
    redis: Redis, sandbox: SandboxClient, running_worker: None
) -> None:
    """Scheduled 3 s ahead: it waits (scheduled), a message enqueued after it to the same
    customer goes at once, and it reaches Meta within a second of its time."""
    producer = Producer(redis)
    send_at = time.time() + 3
    scheduled = await producer.enqueue(template(send_at=iso(send_at)))
    assert scheduled.state is MessageState.SCHEDULED
    now = await producer.enqueue(template())

    async def both_sent() -> bool:
        return len(await sandbox.ledger()) == 2

    await eventually(both_sent, timeout_s=10)
    ledger = {e["biz_opaque_callback_data"]: e for e in await sandbox.ledger()}
    assert ledger[now.message_id]["accepted_at"] < send_at
    late = ledger[scheduled.message_id]["accepted_at"] - send_at
    assert 0 <= late < 1.0, late
    status = await producer.status(scheduled.message_id)
    assert status is not None
    assert [e.state for e in status.history][:2] == [MessageState.SCHEDULED, MessageState.QUEUED]
    assert status.send_at == pytest.approx(send_at, abs=1e-5)  # ISO keeps microseconds


async def test_a_scheduled_message_can_be_cancelled_until_it_leaves(
    redis: Redis, sandbox: SandboxClient, running_worker: None
) -> None:
    """Cancelled while scheduled: never sent, out of the lane, pending back to 0."""
    producer = Producer(redis)
    scheduled = await producer.enqueue(template(send_at=iso(time.time() + 1.5)))
    assert await redis.zscore(keys.lane(PNID), scheduled.message_id) is not None
    assert (await producer.cancel(scheduled.message_id)).cancelled
    assert await redis.zscore(keys.lane(PNID), scheduled.message_id) is None
    await asyncio.sleep(2.5)
    assert await sandbox.ledger() == []
    assert await state_of(redis, scheduled.message_id) == "cancelled"
    assert await redis.hget(keys.lane_job(PNID), "pending") == b"0"


async def test_send_at_rules(admin: httpx.AsyncClient, redis: Redis) -> None:
    """More than 30 days ahead is a 422 naming send_at; a time without an offset too; a time
    in the past is queued to go now."""
    far = (datetime.now(UTC) + timedelta(days=31)).isoformat()
    refused = await admin.post("/v1/messages", json={"to": CUSTOMER, "message": TEMPLATE,
                                                   "send_at": far})  # fmt: skip
    assert refused.status_code == 422
    assert refused.json()["field"] == "send_at"
    naive = await admin.post(
        "/v1/messages", json={"to": CUSTOMER, "message": TEMPLATE, "send_at": "2026-12-01T09:00"}
    )
    assert naive.status_code == 422
    assert naive.json()["field"] == "send_at"
    past = await admin.post(
        "/v1/messages",
        json={"to": CUSTOMER, "message": TEMPLATE, "send_at": iso(time.time() - 60)},
    )
    assert past.status_code == 202
    assert past.json()["status"] == "queued"
    assert await state_of(redis, past.json()["id"]) == "queued"


async def test_interactive_messages_go_ahead_of_a_bulk_backlog_which_keeps_its_share(
    redis: Redis, sandbox: SandboxClient, running_worker: None
) -> None:
    """At 20 mps, 100 bulk messages (5 s of work) then 10 interactive ones: the interactive
    ones reach Meta before the bulk backlog is done, within about a second, and bulk still
    gets at least its share (0.2) of the sends meanwhile."""
    await redis.hset(keys.RATE_LIMITS, PNID, "20")
    producer = Producer(redis)
    bulk = await producer.enqueue_many(
        [template(f"+1650556{i:04d}", priority="bulk") for i in range(100)]
    )
    await asyncio.sleep(1.0)
    started = time.time()
    interactive = await producer.enqueue_many([template(f"+1650557{i:04d}") for i in range(10)])

    async def interactive_sent() -> bool:
        sent = {e["biz_opaque_callback_data"] for e in await sandbox.ledger()}
        return all(m.message_id in sent for m in interactive)

    await eventually(interactive_sent, timeout_s=10)
    ledger = await sandbox.ledger()
    at = {e["biz_opaque_callback_data"]: e["accepted_at"] for e in ledger}
    last_interactive = max(at[m.message_id] for m in interactive)
    assert last_interactive - started < 1.5
    assert len([m for m in bulk if m.message_id in at]) < 100  # the backlog was not done
    between = [e for e in ledger if started <= e["accepted_at"] <= last_interactive]
    bulk_ids = {m.message_id for m in bulk}
    bulk_between = [e for e in between if e["biz_opaque_callback_data"] in bulk_ids]
    assert len(bulk_between) >= 0.2 * len(between) - 1, (len(bulk_between), len(between))


# -- broadcasts ----------------------------------------------------------------------------


def csv_of(numbers: list[str]) -> str:
    return "to,name\n" + "".join(f"{n},Customer {i}\n" for i, n in enumerate(numbers))


async def test_a_broadcast_reaches_each_recipient_once_with_a_funnel_that_matches_meta(
    admin: httpx.AsyncClient, redis: Redis, sandbox: SandboxClient, running_worker: None
) -> None:
    """A 30-recipient CSV broadcast of a template with one body parameter: each recipient gets
    its own parameter once, the same upload again queues nothing, the funnel matches the
    sandbox's ledger, and the broadcast's start and finish are events."""
    numbers = [f"+1650558{i:04d}" for i in range(30)]
    body = {"template": "waq_followup", "language": "en_US", "csv": csv_of(numbers)}
    made = await admin.post("/v1/broadcasts", json=body)
    assert made.status_code == 202, made.text
    broadcast_id = made.json()["id"]
    assert made.json()["total"] == 30
    again = await admin.post("/v1/broadcasts", json=body)
    assert again.json()["id"] == broadcast_id

    async def finished() -> bool:
        return bool((await admin.get(f"/v1/broadcasts/{broadcast_id}")).json()["finished"])

    await eventually(finished, timeout_s=20)
    ledger = await sandbox.ledger()
    assert sorted(e["wa_id"] for e in ledger) == sorted(n[1:] for n in numbers)
    texts = {e["wa_id"]: e["body"]["template"]["components"][0]["parameters"][0]["text"]
             for e in ledger}  # fmt: skip
    assert texts[numbers[7][1:]] == "Customer 7"

    async def all_read() -> bool:
        funnel = (await admin.get(f"/v1/broadcasts/{broadcast_id}")).json()["funnel"]
        return bool(funnel["read"] == 30)

    await eventually(all_read, timeout_s=20)
    funnel = (await admin.get(f"/v1/broadcasts/{broadcast_id}")).json()["funnel"]
    assert funnel == {"queued": 30, "sent": len(ledger), "delivered": 30, "read": 30,
                      "failed": 0, "dead": 0, "cancelled": 0, "opted_out": 0}  # fmt: skip
    started = await events_in_stream(redis, "broadcast.started")
    done = await events_in_stream(redis, "broadcast.finished")
    assert [e.data["broadcast_id"] for e in started] == [broadcast_id]
    assert [(e.data["broadcast_id"], e.data["sent"]) for e in done] == [(broadcast_id, 30)]


async def test_a_csv_with_bad_rows_is_refused_whole(admin: httpx.AsyncClient, redis: Redis) -> None:
    """Two bad rows among good ones: a 422 naming both rows and why; nothing queued."""
    text = "to,name\n+16505550001,Ann\nnot-a-number,Bob\n+16505550003,\n+16505550004,Dee\n"
    refused = await admin.post("/v1/broadcasts", json={"template": "waq_followup", "csv": text})
    assert refused.status_code == 422
    fields = [e["field"] for e in refused.json()["errors"]]
    assert fields == ["csv.row 3", "csv.row 4"]
    assert await redis.zcard(keys.bulk_lane(PNID)) == 0
    assert await redis.xlen(keys.EVENTS) == 0


async def test_cancelling_a_broadcast_half_way_cancels_exactly_the_unsent_rest(
    admin: httpx.AsyncClient, redis: Redis, sandbox: SandboxClient, running_worker: None
) -> None:
    """At 10 mps, 60 recipients; paused, nothing more is sent; resumed, it goes on; cancelled
    half way, the unsent remainder is cancelled: sent + cancelled = 60, and the ledger holds
    exactly the sent ones."""
    await redis.hset(keys.RATE_LIMITS, PNID, "10")
    numbers = [f"+1650559{i:04d}" for i in range(60)]
    recipients = [{"to": n, "parameters": ["x"]} for n in numbers]
    made = await admin.post("/v1/broadcasts", json={"template": "waq_followup",
                                                    "recipients": recipients})  # fmt: skip
    broadcast_id = made.json()["id"]
    await asyncio.sleep(1.0)
    await admin.post(f"/v1/broadcasts/{broadcast_id}/pause")
    await asyncio.sleep(1.0)  # what was already claimed drains
    held = len(await sandbox.ledger())
    await asyncio.sleep(1.5)
    assert len(await sandbox.ledger()) == held  # paused: nothing more
    await admin.post(f"/v1/broadcasts/{broadcast_id}/resume")
    await asyncio.sleep(1.5)
    assert len(await sandbox.ledger()) > held
    cancelled = (await admin.post(f"/v1/broadcasts/{broadcast_id}/cancel")).json()

    async def settled() -> bool:
        b = (await admin.get(f"/v1/broadcasts/{broadcast_id}")).json()
        return bool(b["finished"])

    await eventually(settled, timeout_s=20)
    final = (await admin.get(f"/v1/broadcasts/{broadcast_id}")).json()
    ledger = await sandbox.ledger()
    assert cancelled["state"] == "cancelled"
    assert final["funnel"]["sent"] == len(ledger)
    assert final["funnel"]["sent"] + final["funnel"]["cancelled"] == 60
    assert 0 < final["funnel"]["cancelled"] < 60


async def test_waq_broadcast_create_queues_a_csv_and_watches_it_to_the_end(
    redis_url: str, sandbox: SandboxClient, running_worker: None, tmp_path: Path
) -> None:
    """`waq broadcast create --csv` queues it and prints the funnel until it is done."""
    numbers = [f"+1650550{i:04d}" for i in range(8)]
    path = tmp_path / "recipients.csv"
    path.write_text(csv_of(numbers))
    result = await asyncio.to_thread(
        lambda: CliRunner().invoke(
            app, ["broadcast", "create", "--template", "waq_followup", "--csv", str(path),
                  "--phone-number-id", PNID],
            env={"WAQ_REDIS_URL": redis_url},
        )
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "8 recipients queued" in result.output
    assert "8/8 done" in result.output.splitlines()[-1]
    assert len(await sandbox.ledger()) == 8


# -- opt-outs ------------------------------------------------------------------------------

PROMO = {"type": "template", "template": {"name": "promo", "language": {"code": "en_US"}}}


async def catalog_with_a_marketing_template(redis: Redis) -> None:
    """The catalog as a sync writes it: the sandbox's templates, and one MARKETING one."""
    await TemplateCatalog(redis).replace([
        CatalogTemplate("hello_world", "en_US", "APPROVED", "UTILITY", 0),
        CatalogTemplate("waq_followup", "en_US", "APPROVED", "MARKETING", 1),
        CatalogTemplate("promo", "en_US", "APPROVED", "MARKETING", 0),
    ])  # fmt: skip


async def test_stop_opts_a_customer_out_of_marketing_and_start_back_in(
    admin: httpx.AsyncClient, redis: Redis
) -> None:
    """A customer writes "stop": they are on the list (an event says why); a marketing template
    to them is a 422 opted_out naming `to`, a utility one still goes; "START" takes them off."""
    await catalog_with_a_marketing_template(redis)
    customer = "+16505550111"
    await admin.post("/v1/sandbox/inbound", json={"from": customer, "text": " Stop! "})

    async def listed() -> bool:
        found = (await admin.get("/v1/opt-outs")).json()["customers"]
        return customer in found

    await eventually(listed)
    [added] = await events_in_stream(redis, "optout.added")
    assert added.data["customer"] == customer
    assert added.data["reason"] == "keyword"
    assert added.data["keyword"] == "STOP"
    refused = await admin.post("/v1/messages", json={"to": customer, "message": PROMO})
    assert refused.status_code == 422
    assert refused.json()["error"] == "opted_out"
    assert refused.json()["field"] == "to"
    utility = await admin.post("/v1/messages", json={"to": customer, "message": TEMPLATE})
    assert utility.status_code == 202
    await admin.post("/v1/sandbox/inbound", json={"from": customer, "text": "START"})

    async def off() -> bool:
        return customer not in (await admin.get("/v1/opt-outs")).json()["customers"]

    await eventually(off)
    assert (await events_in_stream(redis, "optout.removed"))[0].data["keyword"] == "START"
    again = await admin.post("/v1/messages", json={"to": customer, "message": PROMO})
    assert again.status_code == 202


async def test_metas_131050_opts_the_customer_out(
    admin: httpx.AsyncClient, redis: Redis, sandbox: SandboxClient, running_worker: None
) -> None:
    """Meta accepts a template, then fails it by webhook with 131050 (the user stopped
    marketing messages): the message is dead-lettered and the customer joins the list."""
    customer = "+16505550112"
    await sandbox.set_recipient(customer[1:], async_failure_code=131050)
    sent = await admin.post("/v1/messages", json={"to": customer, "message": TEMPLATE})
    assert sent.status_code == 202

    async def listed() -> bool:
        return await OptOuts(redis).contains(PNID, customer)

    await eventually(listed, timeout_s=10)
    [added] = await events_in_stream(redis, "optout.added")
    assert added.data["reason"] == "meta_131050"
    assert added.data["customer"] == customer
    status = (await admin.get(f"/v1/messages/{sent.json()['id']}")).json()
    assert status["state"] == "dead"


async def test_a_broadcast_counts_opted_out_recipients_and_sends_them_nothing(
    admin: httpx.AsyncClient, redis: Redis, sandbox: SandboxClient, running_worker: None
) -> None:
    """Two of ten recipients opted out (by an operator, over HTTP): the funnel says 2 opted
    out, 8 sent, the broadcast finishes, and the two are not in Meta's ledger."""
    numbers = [f"+1650553{i:04d}" for i in range(10)]
    for number in numbers[:2]:
        assert (await admin.put(f"/v1/opt-outs/{number}")).json()["changed"] is True
    made = await admin.post(
        "/v1/broadcasts", json={"template": "waq_followup", "csv": csv_of(numbers)}
    )
    broadcast_id = made.json()["id"]
    assert made.json()["funnel"]["opted_out"] == 2

    async def finished() -> bool:
        return bool((await admin.get(f"/v1/broadcasts/{broadcast_id}")).json()["finished"])

    await eventually(finished, timeout_s=15)
    funnel = (await admin.get(f"/v1/broadcasts/{broadcast_id}")).json()["funnel"]
    assert funnel["sent"] == 8
    assert funnel["opted_out"] == 2
    sent_to = {e["wa_id"] for e in await sandbox.ledger()}
    assert not sent_to & {n[1:] for n in numbers[:2]}
    assert (await admin.delete(f"/v1/opt-outs/{numbers[0]}")).json()["changed"] is True


async def test_a_broadcast_with_a_share_keeps_to_it(
    admin: httpx.AsyncClient, redis: Redis, sandbox: SandboxClient, running_worker: None
) -> None:
    """A number at 40 mps, a broadcast limited to a quarter of it: it goes at about 10 msg/s
    (the limiter books 97 %), not 40."""
    await redis.hset(keys.RATE_LIMITS, PNID, "40")
    recipients = [{"to": f"+1650552{i:04d}", "parameters": ["x"]} for i in range(40)]
    body = {"template": "waq_followup", "recipients": recipients, "share": 0.25}
    made = await admin.post("/v1/broadcasts", json=body)
    broadcast_id = made.json()["id"]

    async def finished() -> bool:
        return bool((await admin.get(f"/v1/broadcasts/{broadcast_id}")).json()["finished"])

    await eventually(finished, timeout_s=15)
    times = sorted(e["accepted_at"] for e in await sandbox.ledger())
    rate = (len(times) - 1) / (times[-1] - times[0])
    print(f"broadcast at share 0.25 of 40 mps: {rate:.2f} msg/s")
    assert 0.9 * 9.7 <= rate <= 1.05 * 9.7, rate
