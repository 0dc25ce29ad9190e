"""The health check: is this configuration able to send, end to end? Kapso's checks, and more.

The gateway holds no Graph token: the Graph part runs as a worker job, which also proves
that a worker is alive and reads the queue.
"""

from __future__ import annotations

import asyncio
import time
from enum import StrEnum
from typing import Any

from arq.connections import ArqRedis
from pydantic import BaseModel

from producer import keys
from producer.client import Producer
from producer.status import FINAL_STATES, MessageStatus
from worker.runner import HEALTH_FUNCTION, HEALTH_KEY_SUFFIX

__all__ = ["Check", "HealthReport", "HealthState", "TestMessage", "run_health_check"]


_ACCESS_FIELDS = (
    "verified_name",
    "display_phone_number",
    "status",
    "quality_rating",
    "throughput",
    "whatsapp_business_manager_messaging_limit",
)


class HealthState(StrEnum):
    """The overall verdict."""

    HEALTHY = "healthy"
    """Every check passed."""
    DEGRADED = "degraded"
    """Sending works, but something non-critical (webhooks, a LIMITED number) needs a look."""
    UNHEALTHY = "unhealthy"
    """Messages will not go: Redis, workers, the number or the token is broken."""


class Check(BaseModel):
    """One check's outcome."""

    passed: bool
    critical: bool
    details: dict[str, Any] = {}
    error: str | None = None


class TestMessage(BaseModel):
    """What became of the optional test message."""

    message_id: str
    state: str
    wamid: str | None = None
    error: dict[str, Any] | None = None
    reason: str


class HealthReport(BaseModel):
    """Every check, the verdict, and the test message's fate."""

    status: HealthState
    phone_number_id: str
    checks: dict[str, Check]
    test_message: TestMessage | None = None
    timestamp: float


async def run_health_check(
    redis: ArqRedis,
    producer: Producer,
    *,
    phone_number_id: str,
    queue_name: str,
    to: str | None = None,
    text: str | None = None,
    timeout_s: float = 15.0,
) -> HealthReport:
    """Run every check; send the test message if ``to`` is given."""
    checks: dict[str, Check] = {}
    try:
        await redis.ping()
        checks["redis"] = Check(passed=True, critical=True)
    except Exception as exc:  # any failure to reach Redis is the finding itself
        checks["redis"] = Check(passed=False, critical=True, error=type(exc).__name__)
        return _report(phone_number_id, checks, None)
    workers_alive = bool(await redis.exists(queue_name + HEALTH_KEY_SUFFIX))
    checks["workers"] = Check(
        passed=workers_alive,
        critical=True,
        error=None if workers_alive else "no worker is polling the queue",
    )
    if workers_alive:
        checks.update(await _graph_checks(redis, phone_number_id, queue_name, timeout_s))
    seen = await redis.hgetall(keys.WEBHOOK_SEEN)  # type: ignore[misc]
    seen_at = {k.decode(): float(v) for k, v in seen.items()}
    checks["webhook"] = Check(
        passed=bool(seen_at),
        critical=False,
        details=seen_at,
        error=None if seen_at else "no verification handshake or signed webhook seen yet",
    )
    test = None
    if to is not None and checks["workers"].passed:
        test = await _test_message(
            producer, phone_number_id, to, text or "waq health check", timeout_s
        )
    return _report(phone_number_id, checks, test)


async def _graph_checks(
    redis: ArqRedis, phone_number_id: str, queue_name: str, timeout_s: float
) -> dict[str, Check]:
    job = await redis.enqueue_job(
        HEALTH_FUNCTION, _queue_name=queue_name, phone_number_id=phone_number_id
    )
    try:
        result: dict[str, Any] = await job.result(timeout=timeout_s, poll_delay=0.1) if job else {}
    except TimeoutError:
        result = {
            "ok": False,
            "error": {"code": "timeout", "title": f"no worker answered in {timeout_s:g} s"},
        }
    if not result.get("ok"):
        error = result.get("error") or {}
        message = f"{error.get('code')}: {error.get('title')}"
        return {
            "phone_number_access": Check(passed=False, critical=True, details=error, error=message),
            "messaging_health": Check(
                passed=False, critical=True, error="phone number not readable"
            ),
        }
    info = result["phone_number"]
    access = {k: info.get(k) for k in _ACCESS_FIELDS}
    connected = info.get("status") in (None, "CONNECTED")
    health = info.get("health_status") or {}
    can_send = health.get("can_send_message", "AVAILABLE")
    return {
        "phone_number_access": Check(
            passed=connected, critical=True, details=access,
            error=None if connected else f"number status is {info.get('status')}",
        ),
        "messaging_health": Check(
            passed=can_send == "AVAILABLE", critical=can_send == "BLOCKED",
            details={"can_send_message": can_send, "entities": health.get("entities", [])},
            error=None if can_send == "AVAILABLE" else f"Meta reports {can_send}",
        ),
    }  # fmt: skip


async def _test_message(
    producer: Producer, phone_number_id: str, to: str, text: str, timeout_s: float
) -> TestMessage:
    enqueued = await producer.enqueue(
        {
            "phone_number_id": phone_number_id,
            "to": to,
            "message": {"type": "text", "text": {"body": text}},
            "metadata": {"source": "health-check"},
        }
    )
    deadline = time.monotonic() + timeout_s
    status: MessageStatus | None = None
    while time.monotonic() < deadline:
        status = await producer.status(enqueued.message_id)
        if status is not None and status.state in FINAL_STATES:
            break
        await asyncio.sleep(0.1)
    state = status.state.value if status else "unknown"
    return TestMessage(
        message_id=enqueued.message_id,
        state=state,
        wamid=status.wamid if status else None,
        error=status.error if status else None,
        reason=_reason(status, timeout_s),
    )


def _reason(status: MessageStatus | None, timeout_s: float) -> str:
    if status is None or status.state not in FINAL_STATES:
        return (
            f"not final after {timeout_s:g} s (state {status.state.value if status else 'unknown'})"
        )
    code = (status.error or {}).get("code")
    if code == 131047:
        return (
            "the 24-hour window is closed: the customer must write to you first, "
            "or send an approved template"
        )
    if status.state.value == "dead":
        return status.detail or "dead-lettered"
    return "sent: Meta accepted the test message"


def _report(
    phone_number_id: str, checks: dict[str, Check], test: TestMessage | None
) -> HealthReport:
    if any(not c.passed and c.critical for c in checks.values()):
        verdict = HealthState.UNHEALTHY
    elif any(not c.passed for c in checks.values()):
        verdict = HealthState.DEGRADED
    else:
        verdict = HealthState.HEALTHY
    return HealthReport(
        status=verdict,
        phone_number_id=phone_number_id,
        checks=checks,
        test_message=test,
        timestamp=time.time(),
    )
