"""``waq demo``: the whole pipeline on embedded defaults, with a scripted scene and its check."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr
from redis.asyncio import Redis

from producer import Producer
from producer.recipient import wa_id_of
from producer.status import FINAL_STATES, MessageStatus
from sandbox import DEFAULT_PHONE_NUMBER_ID, SandboxClient, SandboxConfig, SandboxServer
from worker.delivery import DeliveryConfig
from worker.logs import shorten_phone
from worker.runner import WorkerConfig, create_worker
from worker.windows import WindowStore

__all__ = ["Step", "run_demo", "scene"]

PNID = DEFAULT_PHONE_NUMBER_ID
CUSTOMER = "+16505551234"
STRANGER = "+16505559876"
UNREGISTERED = "+16505550000"
_TOKEN = "demo-token"  # noqa: S105 - the demo sandbox's own, never a real one


@dataclass(frozen=True, slots=True)
class Step:
    """One message of the scene and the outcome the scene expects."""

    label: str
    to: str
    message: dict[str, Any]
    expect_state: str
    expect_code: int | None = None


def scene() -> list[Step]:
    """One message of each type to a customer who wrote in, and the failures worth seeing."""
    media = "https://example.com/media"
    return [
        Step("text", CUSTOMER, {"type": "text", "text": {"body": "Your order #1042 shipped."}}, "accepted"),
        Step("image + caption", CUSTOMER,
             {"type": "image", "image": {"link": f"{media}/parcel.jpg", "caption": "Packed with care"}},
             "accepted"),
        Step("video", CUSTOMER, {"type": "video", "video": {"link": f"{media}/unboxing.mp4"}}, "accepted"),
        Step("audio", CUSTOMER, {"type": "audio", "audio": {"link": f"{media}/thanks.mp3"}}, "accepted"),
        Step("document + filename", CUSTOMER,
             {"type": "document", "document": {"link": f"{media}/inv.pdf", "filename": "invoice-1042.pdf"}},
             "accepted"),
        Step("location + name", CUSTOMER,
             {"type": "location", "location": {"latitude": 37.44, "longitude": -122.16, "name": "Pickup point"}},
             "accepted"),
        Step("text, never wrote in", STRANGER,
             {"type": "text", "text": {"body": "Hello?"}}, "dead", 131047),
        Step("template, never wrote in", STRANGER,
             {"type": "template", "template": {"name": "hello_world", "language": {"code": "en_US"}}},
             "accepted"),
        Step("text, unregistered number", UNREGISTERED,
             {"type": "text", "text": {"body": "Hi"}}, "dead", 131026),
    ]  # fmt: skip


async def run_demo(redis_url: str, *, say: Any = print) -> int:
    """Run the scene; return 0 when every outcome is the expected one."""
    config = SandboxConfig(access_token=_TOKEN, seed=2, status_delay_s=0.01)
    with SandboxServer(config) as server:
        async with SandboxClient(server.url) as sandbox:
            return await _scene(redis_url, server.url, sandbox, say)


async def _scene(redis_url: str, sandbox_url: str, sandbox: SandboxClient, say: Any) -> int:
    redis = Redis.from_url(redis_url)
    queue = f"waq:demo:{uuid.uuid4().hex[:8]}"  # never mixes with a real deployment's queue
    producer = Producer(redis, queue_name=queue, retention_s=3600)
    windows = WindowStore(redis)
    try:
        say(f"sandbox (fake Meta) at {sandbox_url}, Redis at {redis_url}")
        for number in (CUSTOMER, UNREGISTERED):
            inbound = (await sandbox.inbound(number, "Hi, where is my order?"))["message"]
            await windows.record_inbound(PNID, inbound["from"], float(inbound["timestamp"]))
            say(f"customer {shorten_phone(number)} writes in: 24-hour window open")
        await sandbox.set_recipient(wa_id_of(UNREGISTERED), registered=False)
        await sandbox.set_faults(server_error_ratio=0.25)
        say("sandbox answers 25% of sends with a transient 5xx (seeded)")
        steps = scene()
        enqueued = await producer.enqueue_many(
            [{"phone_number_id": PNID, "to": s.to, "message": s.message} for s in steps]
        )
        say(f"enqueued {len(enqueued)} messages; worker delivering...")
        started = time.monotonic()
        worker = create_worker(
            WorkerConfig(
                redis_url=redis_url,
                access_token=SecretStr(_TOKEN),
                graph_base_url=sandbox_url,
                graph_timeout_s=5,
                queue_name=queue,
                burst=True,
                poll_delay_s=0,
                health_probe_s=None,
                delivery=DeliveryConfig(max_attempts=8, backoff_base_s=0.05, backoff_cap_s=0.5),
            )
        )
        try:
            await worker.main()
        finally:
            await worker.close()
        statuses = [await producer.status(e.message_id) for e in enqueued]
        ledger = {e["biz_opaque_callback_data"] for e in await sandbox.ledger()}
        say(f"done in {time.monotonic() - started:.1f}s\n")
        return _report(steps, statuses, ledger, say)
    finally:
        await redis.aclose()


def _report(
    steps: list[Step], statuses: list[MessageStatus | None], ledger: set[str], say: Any
) -> int:
    failures = 0
    say(f"{'message':<28} {'to':<11} {'outcome':<9} {'tries':>5}  detail")
    for step, status in zip(steps, statuses, strict=True):
        if status is None:
            failures += 1
            say(f"{step.label:<28} {'?':<11} MISSING")
            continue
        code = status.error.get("code") if status.error else None
        ok = status.state.value == step.expect_state and (
            step.expect_code is None or code == step.expect_code
        )
        ok = (
            ok
            and status.state in FINAL_STATES
            and ((status.id in ledger) == (status.state.value == "accepted"))
        )
        failures += not ok
        detail = status.wamid[:22] + "…" if status.wamid else f"{code}: {status.detail}"
        mark = "" if ok else f"   <-- expected {step.expect_state} {step.expect_code or ''}"
        say(
            f"{step.label:<28} {shorten_phone(status.to):<11} {status.state.value:<9} {status.attempts:>5}  {detail}{mark}"
        )
    retried = sum(1 for s in statuses if s is not None and s.id in ledger and s.attempts > 1)
    say(f"\n{len(ledger)} accepted by the sandbox, {retried} of them after transient errors; "
        f"{'every outcome as expected' if not failures else f'{failures} unexpected outcome(s)'}")  # fmt: skip
    return 1 if failures else 0
