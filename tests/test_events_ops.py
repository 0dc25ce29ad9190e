"""Events as operators and services run them: a real `waq worker` emitting window-closing
events on its schedule, `waq webhooks` and `waq events` commands, and the documented stream
consumer run as the script it is.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from redis.asyncio import Redis
from typer.testing import CliRunner, Result

from producer import keys
from sandbox import SandboxServer
from tests.receiver import ReceiverServer
from tests.support import events_in_stream
from tests.test_events import customers_write, send, until
from tests.test_under_load import read_logs, spawn_workers, stop
from waq.cli import app
from worker.subscriptions import SubscriptionSpec, SubscriptionStore, delivery_job_id

EXAMPLE = Path(__file__).parent.parent / "examples" / "event_consumer.py"


async def test_a_real_worker_emits_window_closing_events_on_its_schedule(
    *,
    admin: httpx.AsyncClient,
    redis: Redis,
    redis_url: str,
    sandbox_server: SandboxServer,
    receiver_server: ReceiverServer,
    tmp_path: Path,
) -> None:
    """A `waq worker` whose sweep runs every second, with a lead longer than a window: each
    conversation's window_closing event comes once, from the worker's own cron, and its pump
    hands it to a subscription."""
    made = (
        await admin.post(
            "/v1/webhooks",
            json={"url": receiver_server.events_url, "types": ["conversation.window_closing"]},
        )
    ).json()
    receiver_server.receiver.secrets = [made["secret"]]
    customers = ["+16505557001", "+16505557002"]
    await customers_write(admin, customers)
    workers = spawn_workers(
        1, redis_url, sandbox_server.url, tmp_path,
        WAQ_LANE_SWEEP_S="1", WAQ_WINDOW_CLOSING_LEAD_S="86400",
    )  # fmt: skip
    try:

        async def both() -> bool:
            return len(receiver_server.receiver.unique_events()) == 2

        await until(both, timeout_s=20)
        await asyncio.sleep(2.5)  # two more sweeps: nothing is emitted twice
    finally:
        assert stop(workers) == [0], read_logs(tmp_path)
    closing = await events_in_stream(redis, "conversation.window_closing")
    assert sorted(e.data["customer"] for e in closing) == customers
    for event in closing:
        assert 86000 < event.data["closes_in_s"] <= 86400
        assert event.conversation_id is not None
    assert await redis.zcard(keys.WINDOWS_CLOSING) == 0
    assert {e["id"] for e in receiver_server.receiver.arrivals()} == {e.id for e in closing}


async def test_waq_webhooks_commands_manage_a_subscription_end_to_end(
    admin: httpx.AsyncClient,
    redis_url: str,
    receiver_server: ReceiverServer,
    start_worker: Callable[..., Awaitable[None]],
) -> None:
    """add (secret shown once), list (masked), test, show (the attempt), pause (events to dead
    letters), dead, replay, remove; a bad URL is an error naming the field."""
    env = {"WAQ_REDIS_URL": redis_url}
    runner = CliRunner()

    async def waq(*args: str) -> Result:  # in a thread: the commands run their own loop
        return await asyncio.to_thread(lambda: runner.invoke(app, list(args), env=env))

    bad = await waq("webhooks", "add", "http://example.com/x")
    assert bad.exit_code == 2
    assert "url:" in bad.output
    added = await waq("webhooks", "add", receiver_server.events_url)
    assert added.exit_code == 0, added.output
    subscription_id = added.output.split()[0]
    secret = added.output.split("secret: ")[1].split()[0]
    receiver = receiver_server.receiver
    receiver.secrets = [secret]
    listed = await waq("webhooks", "list")
    assert subscription_id in listed.output
    assert secret not in listed.output
    assert "active" in listed.output
    await start_worker()
    tested = await waq("webhooks", "test", subscription_id)
    assert tested.exit_code == 0

    async def got_test() -> bool:
        return len(receiver.deliveries) == 1

    await until(got_test)
    shown = await waq("webhooks", "show", subscription_id)
    assert "delivered" in shown.output
    assert "200" in shown.output
    paused = await waq("webhooks", "pause", subscription_id)
    assert paused.exit_code == 0
    await customers_write(admin, ["+16505558001"])

    async def parked() -> bool:
        out = (await waq("webhooks", "dead", subscription_id)).output
        return out.count("the subscription is paused") == 2

    await until(parked)
    replayed = await waq("webhooks", "replay", subscription_id)
    assert "replaying 2 event(s)" in replayed.output

    async def delivered() -> bool:
        return len(receiver.unique_events()) == 3

    await until(delivered)
    removed = await waq("webhooks", "remove", subscription_id)
    assert removed.exit_code == 0
    missing = await waq("webhooks", "show", subscription_id)
    assert missing.exit_code == 1
    assert "no webhook subscription" in missing.output


async def test_the_documented_stream_consumer_handles_and_acknowledges_every_event(
    admin: httpx.AsyncClient,
    redis: Redis,
    redis_url: str,
    start_worker: Callable[..., Awaitable[None]],
) -> None:
    """examples/event_consumer.py, run as a script, prints every event once and acknowledges
    it; run again with the same group it has nothing left; `waq events tail` shows them too."""
    await start_worker()
    await customers_write(admin, ["+16505559001"])
    message_id = await send(admin, "+16505559001")

    async def read() -> bool:  # its last event: nothing is emitted after the snapshot below
        return bool(await events_in_stream(redis, "message.read"))

    await until(read)
    emitted = await events_in_stream(redis)
    command = [sys.executable, str(EXAMPLE), "--redis-url", redis_url, "--group", "billing"]
    first = await asyncio.to_thread(
        subprocess.run,
        [*command, "--count", str(len(emitted))], capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    printed = [json.loads(line) for line in first.stdout.splitlines()]
    assert [e["id"] for e in printed] == [e.id for e in emitted]
    assert any(e["data"].get("message_id") == message_id for e in printed)
    pending = await redis.xpending(keys.EVENTS, "billing")
    assert pending["pending"] == 0
    again = await asyncio.to_thread(
        subprocess.run,
        [*command, "--idle-exit", "0.5"], capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    assert again.stdout == b""
    tail = await asyncio.to_thread(
        CliRunner().invoke,
        app, ["events", "tail", "--last", "50", "--count", "1", "--types", "message.sent"],
        env={"WAQ_REDIS_URL": redis_url},
    )  # fmt: skip
    assert json.loads(tail.output)["data"]["message_id"] == message_id


async def test_a_real_workers_sweep_starts_an_outbox_whose_job_went_missing(
    redis: Redis,
    redis_url: str,
    sandbox_server: SandboxServer,
    receiver_server: ReceiverServer,
    tmp_path: Path,
) -> None:
    """A pump that died between copying an event and starting the outbox's job left a token
    and no job; a real `waq worker`'s sweep (every second here) starts one and it delivers."""
    store = SubscriptionStore(redis)
    made = await store.add(SubscriptionSpec(url=receiver_server.events_url))
    receiver_server.receiver.secrets = [made.secret.get_secret_value()]
    event_id = await store.send_test(made.id)  # queues it and starts job 1 ...
    await redis.delete(keys.ARQ_JOB_PREFIX + delivery_job_id(made.id, "1"))
    await redis.zrem(keys.DEFAULT_QUEUE, delivery_job_id(made.id, "1"))  # ... which was lost
    workers = spawn_workers(1, redis_url, sandbox_server.url, tmp_path, WAQ_LANE_SWEEP_S="1")
    try:

        async def delivered() -> bool:
            return event_id in receiver_server.receiver.unique_events()

        await until(delivered, timeout_s=20)
    finally:
        assert stop(workers) == [0], read_logs(tmp_path)
    assert "webhooks.swept" in read_logs(tmp_path)
    assert (await store.stats(made.id)).delivered == 1
