"""Operator commands against a real Redis: dead letters, pause and resume, health's refusals."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from typer.testing import CliRunner

from producer import Producer, keys
from producer.status import MessageState, StatusEvent
from producer.status_store import StatusStore
from sandbox import SandboxClient
from waq.cli import app
from worker.dead_letters import DeadLetter, DeadLetterStore
from worker.error_table import Suggestion
from worker.limits import RateLimiter
from worker.pauses import PauseStore

PNID = "106540352242922"


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    """The CLI's environment, on an emptied server."""
    SyncRedis.from_url(redis_url).flushall()
    return {"WAQ_REDIS_URL": redis_url, "WAQ_LOG_FORMAT": "console"}


async def enqueue_one(redis_url: str) -> None:
    async with Producer.connect(redis_url) as producer:
        await producer.enqueue(
            {
                "phone_number_id": PNID,
                "to": "+16505551234",
                "message": {"type": "text", "text": {"body": "hi"}},
            }
        )


def add_dead_letter(redis_url: str, message_id: str, code: int, suggestion: Suggestion) -> None:
    async def run() -> None:
        redis = Redis.from_url(redis_url)
        store = DeadLetterStore(redis, StatusStore(redis, retention_s=60))
        now = time.time()
        await store.add(
            DeadLetter(
                id=message_id,
                phone_number_id=PNID,
                to="+16505551234",
                type="text",
                request={"to": "+16505551234", "message": {"type": "text", "text": {"body": "hi"}}},
                error={
                    "code": code,
                    "title": "Re-engagement message",
                    "details": "24 hours passed",
                },
                hint="send an approved template instead",
                suggestion=suggestion,
                attempts=[StatusEvent(at=now, state=MessageState.QUEUED)],
                created_at=now,
                dead_at=now,
            )
        )
        await redis.aclose()

    asyncio.run(run())


def test_dlq_list_filters_and_json(env: dict[str, str], redis_url: str) -> None:
    """list shows entries as a table or JSON lines, filtered by code."""
    add_dead_letter(redis_url, "m_1", 131047, Suggestion.SEND_TEMPLATE)
    add_dead_letter(redis_url, "m_2", 131026, Suggestion.FIX_RECIPIENT)
    runner = CliRunner()
    table = runner.invoke(app, ["dlq", "list"], env=env)
    assert table.exit_code == 0
    assert "m_1" in table.output
    assert "m_2" in table.output
    assert "+16505551234" not in table.output  # numbers are shortened
    only = runner.invoke(app, ["dlq", "list", "--code", "131047", "--json"], env=env)
    lines = [json.loads(line) for line in only.output.splitlines()]
    assert [entry["id"] for entry in lines] == ["m_1"]
    assert lines[0]["suggestion"] == "send_template"


def test_dlq_show(env: dict[str, str], redis_url: str) -> None:
    """show prints the error, hint, attempts and request; an unknown id is exit 1."""
    add_dead_letter(redis_url, "m_1", 131047, Suggestion.SEND_TEMPLATE)
    shown = CliRunner().invoke(app, ["dlq", "show", "m_1"], env=env)
    assert shown.exit_code == 0
    assert "131047" in shown.output
    assert "send_template" in shown.output
    assert '"body": "hi"' in shown.output
    missing = CliRunner().invoke(app, ["dlq", "show", "m_nope"], env=env)
    assert missing.exit_code == 1
    assert "no dead letter m_nope" in missing.output


def test_pause_refuses_a_number_waq_never_saw_unless_forced(env: dict[str, str]) -> None:
    """A typo must not pause nothing and add a phantom row to `waq status`."""
    runner = CliRunner()
    refused = runner.invoke(app, ["pause", "123"], env=env)
    assert refused.exit_code == 2
    assert "never seen number 123" in refused.output
    assert "123" not in runner.invoke(app, ["status"], env=env).output
    forced = runner.invoke(app, ["pause", "123", "--force"], env=env)
    assert forced.exit_code == 0
    assert "123: paused" in forced.output


def test_pause_and_resume(env: dict[str, str], redis_url: str) -> None:
    """pause records an operator pause with its reason; resume lifts it; repeats say so."""
    runner = CliRunner()
    asyncio.run(enqueue_one(redis_url))  # waq knows the number once a message was queued
    assert runner.invoke(app, ["status"], env=env).output.count(PNID) == 1
    assert "paused" in runner.invoke(app, ["pause", PNID, "--reason", "migration"], env=env).output
    assert "already paused" in runner.invoke(app, ["pause", PNID], env=env).output

    async def read() -> object:
        redis = Redis.from_url(redis_url)
        try:
            return await PauseStore(redis).get(PNID)
        finally:
            await redis.aclose()

    pause = asyncio.run(read())
    assert pause is not None
    assert getattr(pause, "reason", None) == "migration"
    assert getattr(pause, "by", None) == "operator"
    assert "resumed" in runner.invoke(app, ["resume", PNID], env=env).output
    assert "was not paused" in runner.invoke(app, ["resume", PNID], env=env).output


def test_unreachable_redis_is_one_line(env: dict[str, str]) -> None:
    """No Redis: exit 3 and a sentence, no stack trace."""
    result = CliRunner().invoke(
        app, ["dlq", "list"], env={**env, "WAQ_REDIS_URL": "redis://127.0.0.1:1/0"}
    )
    assert result.exit_code == 3
    assert "cannot reach Redis" in result.output
    assert "Traceback" not in result.output


def test_health_needs_a_number(env: dict[str, str]) -> None:
    """Without a phone number id the health command says what to give."""
    result = CliRunner().invoke(app, ["health"], env={**env, "WAQ_DEFAULT_PHONE_NUMBER_ID": ""})
    assert result.exit_code == 2
    assert "--phone-number-id" in result.output


def test_limits_set_show_and_refusals(env: dict[str, str], redis_url: str) -> None:
    """A number's mps is shared through Redis: set, shown, read by the limiter, reset."""
    runner = CliRunner()
    assert "80 messages per second" in runner.invoke(app, ["limits", "show", PNID], env=env).output
    assert runner.invoke(app, ["limits", "set", PNID, "--mps", "250"], env=env).exit_code == 0
    assert "250 messages per second" in runner.invoke(app, ["limits", "show", PNID], env=env).output

    async def configured() -> float:
        redis = Redis.from_url(redis_url)
        try:
            return await RateLimiter(redis).mps(PNID)
        finally:
            await redis.aclose()

    assert asyncio.run(configured()) == 250
    assert runner.invoke(app, ["limits", "set", PNID, "--default"], env=env).exit_code == 0
    assert asyncio.run(configured()) == 80
    for bad in (["--mps", "-1"], [], ["--mps", "5", "--default"]):
        refused = runner.invoke(app, ["limits", "set", PNID, *bad], env=env)
        assert refused.exit_code == 2, bad
        assert "error:" in refused.output


async def test_health_exit_codes_follow_the_verdict(
    redis: Redis, redis_url: str, sandbox: SandboxClient, running_worker: None
) -> None:
    """`waq health` as a process: 1 degraded (no webhook seen yet), 0 healthy, 2 unhealthy
    (Meta reports the number BLOCKED), each with the verdict on its first line."""
    env = {**os.environ, "WAQ_REDIS_URL": redis_url, "WAQ_DEFAULT_PHONE_NUMBER_ID": PNID}

    async def health() -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "waq", "health", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode()

    code, out = await health()
    assert (code, out.split()[0]) == (1, "DEGRADED"), out
    assert "no verification handshake or signed webhook" in out
    await redis.hset(keys.WEBHOOK_SEEN, "last_post_at", repr(time.time()))
    code, out = await health()
    assert (code, out.split()[0]) == (0, "HEALTHY"), out
    await sandbox.set_number(PNID, health="BLOCKED")
    code, out = await health()
    assert (code, out.split()[0]) == (2, "UNHEALTHY"), out
