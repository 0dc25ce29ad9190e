"""`waq dlq` and `waq status` against a real Valkey, with dead letters made by the real pipeline."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner, Result

from producer import keys
from producer.status import MessageState, StatusEvent
from producer.status_store import StatusStore
from sandbox import SandboxClient
from tests.support import CUSTOMER, PNID, STRANGER, TEXT, Pipeline
from waq.cli import app
from worker.dead_letters import DeadLetter, DeadLetterStore, MoveResult
from worker.error_table import Suggestion
from worker.limits import RateLimiter
from worker.pauses import PauseStore

OTHER_PNID = "106540352242999"


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    return {"WAQ_REDIS_URL": redis_url, "WAQ_LOG_FORMAT": "console"}


async def waq(env: dict[str, str], *args: str, answer: str | None = None) -> Result:
    """Run a ``waq`` command in a thread (it runs its own event loop), answering its prompt."""
    runner = CliRunner()
    return await asyncio.to_thread(lambda: runner.invoke(app, list(args), env=env, input=answer))


def letter(
    message_id: str,
    *,
    code: int = 131047,
    suggestion: Suggestion = Suggestion.SEND_TEMPLATE,
    phone_number_id: str = PNID,
    to: str = STRANGER,
    age_s: float = 0,
    message: dict[str, Any] | None = None,
) -> DeadLetter:
    now = time.time()
    return DeadLetter(
        id=message_id,
        phone_number_id=phone_number_id,
        to=to,
        type=(message or TEXT)["type"],
        request={"phone_number_id": phone_number_id, "to": to, "message": message or TEXT},
        error={"code": code, "title": "failed"},
        hint="send an approved template instead",
        suggestion=suggestion,
        attempts=[StatusEvent(at=now - age_s, state=MessageState.QUEUED)],
        created_at=now - age_s,
        dead_at=now - age_s,
    )


def store_for(redis: Redis) -> DeadLetterStore:
    return DeadLetterStore(redis, StatusStore(redis, retention_s=3600))


async def dead_via_pipeline(pipeline: Pipeline, to: str = STRANGER, **message: Any) -> str:
    """A free-form message to a customer whose window is closed: the worker dead-letters it."""
    enqueued = await pipeline.send(to=to, message=message or TEXT)
    await pipeline.run_worker()
    assert (await pipeline.status(enqueued.message_id)).state is MessageState.DEAD
    return enqueued.message_id


async def test_requeue_after_the_customer_writes_delivers_with_history(
    pipeline: Pipeline, sandbox: SandboxClient, env: dict[str, str]
) -> None:
    """A 131047 requeued once the window is open goes through the pipeline and is accepted."""
    message_id = await dead_via_pipeline(pipeline)
    stats = json.loads((await waq(env, "dlq", "stats", "--json")).output)
    assert stats["total"] == 1
    assert stats["by_code"] == {"131047": 1}
    assert stats["by_suggestion"] == {"send_template": 1}

    dry = await waq(env, "dlq", "requeue", "--code", "131047", "--dry-run")
    assert dry.exit_code == 0
    assert "window is closed" in dry.output  # the operator is told it would fail again
    assert "nothing changed" in dry.output
    assert await pipeline.dead_letters.get(message_id) is not None

    await pipeline.customer_writes(sandbox, STRANGER)
    done = await waq(env, "dlq", "requeue", message_id, "--yes", "--note", "customer wrote back")
    assert done.exit_code == 0, done.output
    assert "requeue: 1 done" in done.output
    assert await pipeline.dead_letters.get(message_id) is None
    assert (await pipeline.dead_letters.stats()).by_code == {}

    await pipeline.run_worker()
    status = await pipeline.status(message_id)
    assert status.state is MessageState.ACCEPTED
    history = [(e.state.value, e.detail or "") for e in status.history]
    assert [state for state, _ in history] == ["queued", "dead", "queued", "sending", "accepted"]
    assert "customer wrote back" in history[2][1]
    ledger = await sandbox.ledger()
    assert [entry["body"]["to"] for entry in ledger] == [STRANGER]


async def test_requeue_template_sends_the_original_text_as_a_template(
    pipeline: Pipeline, sandbox: SandboxClient, env: dict[str, str]
) -> None:
    """requeue-template turns a dead free-form text into the named template, text as {{1}}."""
    message_id = await dead_via_pipeline(pipeline)
    preview = await waq(env, "dlq", "requeue-template", "--template", "waq_followup", "--dry-run")
    assert '["Your order shipped"]' in preview.output
    result = await waq(
        env, "dlq", "requeue-template", "--template", "waq_followup", "--language", "en",
        "--param", "{text}", "--yes",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    await pipeline.run_worker()
    status = await pipeline.status(message_id)
    assert status.state is MessageState.ACCEPTED
    assert status.type == "template"
    [sent] = await sandbox.ledger()
    assert sent["body"]["template"] == {
        "name": "waq_followup",
        "language": {"code": "en"},
        "components": [
            {"type": "body", "parameters": [{"type": "text", "text": "Your order shipped"}]}
        ],
    }


async def test_requeue_template_skips_what_it_cannot_fill(
    redis: Redis, env: dict[str, str]
) -> None:
    """An image without a caption has no {text}: it stays in the queue, and the exit is 1."""
    store = store_for(redis)
    image = {"type": "image", "image": {"link": "https://example.com/a.jpg"}}
    await store.add(letter("m_image", message=image))
    await store.add(letter("m_text"))
    result = await waq(env, "dlq", "requeue-template", "--template", "waq_followup", "--yes")
    assert result.exit_code == 1
    assert "m_image: not moved: a image message has no text" in result.output
    assert "1 done; skipped 1 invalid" in result.output
    assert await store.get("m_image") is not None
    assert await store.get("m_text") is None


async def test_bulk_commands_need_a_selection_and_a_yes(redis: Redis, env: dict[str, str]) -> None:
    """No filter is refused without --all; the prompt's "n" changes nothing, "y" acts."""
    store = store_for(redis)
    await store.add(letter("m_1"))
    await store.add(letter("m_2", code=131026, suggestion=Suggestion.FIX_RECIPIENT))
    refused = await waq(env, "dlq", "purge")
    assert refused.exit_code == 2
    assert "needs message ids, a filter" in refused.output

    declined = await waq(env, "dlq", "purge", "--code", "131026", answer="n\n")
    assert "purge 1 dead letters?" in declined.output
    assert "nothing changed" in declined.output
    assert await store.count() == 2

    accepted = await waq(env, "dlq", "purge", "--code", "131026", answer="y\n")
    assert "purge: 1 done" in accepted.output
    assert [x.id for x in await store.list()] == ["m_1"]
    # The dead message's record and history went with its entry, and an event says so.
    assert not await redis.exists(keys.message("m_2"), keys.message_history("m_2"))
    [(_, event)] = await redis.xrevrange(keys.EVENTS, count=1)
    assert event[b"type"] == b"message.purged"
    assert json.loads(event[b"data"])["message_id"] == "m_2"
    assert (await store.stats()).by_code == {"131047": 1}
    assert await redis.zrange(keys.dead_letter_index("code:131026"), 0, -1) == []

    everything = await waq(env, "dlq", "purge", "--all", "--yes")
    assert everything.exit_code == 0
    assert await store.count() == 0


async def test_filters_by_recipient_sender_and_age(redis: Redis, env: dict[str, str]) -> None:
    """list selects by --to, --phone-number-id, --older-than and --newer-than."""
    store = store_for(redis)
    await store.add(letter("m_new"))
    await store.add(letter("m_old", age_s=3 * 3600))
    await store.add(letter("m_other_to", to=CUSTOMER))
    await store.add(letter("m_other_sender", phone_number_id=OTHER_PNID))

    async def ids(*args: str) -> list[str]:
        result = await waq(env, "dlq", "list", "--json", *args)
        assert result.exit_code == 0, result.output
        return sorted(json.loads(line)["id"] for line in result.output.splitlines())

    assert await ids("--to", CUSTOMER) == ["m_other_to"]
    assert await ids("--to", CUSTOMER.lstrip("+")) == ["m_other_to"]
    assert await ids("--phone-number-id", OTHER_PNID) == ["m_other_sender"]
    assert await ids("--older-than", "2h") == ["m_old"]
    assert await ids("--newer-than", "1h") == ["m_new", "m_other_sender", "m_other_to"]
    bad = await waq(env, "dlq", "list", "--older-than", "soon")
    assert bad.exit_code == 2
    assert "not an age" in bad.output


async def test_export_writes_json_lines_and_keeps_the_queue(
    redis: Redis, env: dict[str, str], tmp_path: Path
) -> None:
    """export writes one entry per line, every field kept; nothing leaves the queue."""
    store = store_for(redis)
    await store.add(letter("m_1"))
    await store.add(letter("m_2", code=131026, suggestion=Suggestion.FIX_RECIPIENT))
    out = tmp_path / "dead.jsonl"
    result = await waq(env, "dlq", "export", "--code", "131026", "--output", str(out))
    assert "exported 1 dead letters" in result.output
    [line] = out.read_text().splitlines()
    stored = await store.get("m_2")
    assert stored is not None
    assert DeadLetter.model_validate_json(line).model_dump() == stored.model_dump()
    assert await store.count() == 2


async def test_a_move_refuses_a_changed_or_a_missing_entry(redis: Redis) -> None:
    """Compare-and-move: an entry rewritten since it was read stays; one already gone is
    reported missing; a requeued one is its conversation's head in its lane, with a job."""
    store = store_for(redis)
    await store.add(letter("m_1"))
    read = await store.get("m_1")
    assert read is not None
    await store.add(letter("m_1", code=131026, suggestion=Suggestion.FIX_RECIPIENT))
    assert await store.requeue(read) is MoveResult.CHANGED
    assert await store.purge(read) is MoveResult.CHANGED

    fresh = await store.get("m_1")
    assert fresh is not None
    assert await store.requeue(fresh) is MoveResult.OK
    assert await store.requeue(fresh) is MoveResult.MISSING
    assert await redis.zscore(keys.lane(fresh.phone_number_id), "m_1") is not None
    [job] = await redis.zrange(keys.DEFAULT_QUEUE, 0, -1)
    assert job.startswith(f"lane:{fresh.phone_number_id}:".encode())
    assert (await store.stats()).total == 0


async def test_an_invalid_request_stays_with_its_reason(redis: Redis, env: dict[str, str]) -> None:
    """A request the producer would refuse is not requeued; the field is named."""
    store = store_for(redis)
    broken = letter("m_bad", code=100, suggestion=Suggestion.FIX_REQUEST)
    broken = broken.model_copy(update={"request": {**broken.request, "to": "12"}})
    await store.add(broken)
    result = await waq(env, "dlq", "requeue", "m_bad", "--yes")
    assert result.exit_code == 1
    assert "m_bad: not moved: invalid request: to:" in result.output
    assert await store.get("m_bad") is not None


@pytest.mark.parametrize(
    "command",
    [
        ["requeue"],
        ["requeue-template", "--template", "waq_followup", "--language", "en"],
        ["purge"],
    ],
    ids=["requeue", "requeue-template", "purge"],
)
async def test_a_bulk_move_killed_half_way_loses_and_doubles_nothing(
    redis: Redis, redis_url: str, command: list[str]
) -> None:
    """SIGKILL a bulk requeue, requeue-template or purge mid-way: every entry is still a
    dead letter (entry and index together) or moved (requeued, or purged with its event),
    never both, never half."""
    store = store_for(redis)
    total = 3000
    await asyncio.gather(
        *(store.add(letter(f"m_{i:05}", to=f"+1650555{i % 10000:04}")) for i in range(total))
    )
    assert await store.count() == total
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "waq", "dlq", *command, "--all", "--yes"],
        env={**os.environ, "WAQ_REDIS_URL": redis_url},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    while line := await process.stderr.readline():  # the first progress line: a few moved
        if line.startswith(command[0].encode() + b": "):
            break
    process.send_signal(signal.SIGKILL)
    await process.wait()

    every = {f"m_{i:05}" for i in range(total)}
    left = {x.id for x in await store.list(limit=total)}
    indexed = {i.decode() for i in await redis.zrange(keys.DEAD_LETTERS, 0, -1)}
    entries = {i for i in every if await redis.exists(keys.dead_letter(i))}
    assert left == indexed == entries, "an entry and its index move together"
    assert 0 < len(left) < total, "the kill should land mid-way"
    moved = every - left
    if command[0] == "purge":
        for message_id in moved:  # the record went with the entry
            assert not await redis.exists(keys.message(message_id)), message_id
    else:
        queued = {
            i.decode()
            for message_id in moved
            for i in await redis.lrange(keys.order(PNID, f"1650555{int(message_id[2:]):04}"), 0, -1)
        }
        assert queued == moved
        assert await redis.hget(keys.lane_job(PNID), "pending") == str(len(moved)).encode()
        kinds = {
            json.loads(await redis.hget(keys.message(i), "request") or "{}")["message"]["type"]
            for i in moved
        }
        assert kinds == ({"template"} if command[0] == "requeue-template" else {"text"})
    states = {(await redis.hget(keys.message(i), "state") or b"").decode() for i in every}
    assert states == ({"dead", ""} if command[0] == "purge" else {"dead", "queued"})
    stats = await store.stats()
    assert stats.total == len(left) == sum(stats.by_code.values())


async def test_status_shows_each_number(
    pipeline: Pipeline, redis: Redis, env: dict[str, str]
) -> None:
    """status: pending per number, paused with the reason, throttled, dead letters, queue."""
    await pipeline.send(to=CUSTOMER)
    await pipeline.send(to=CUSTOMER)
    await pipeline.send(to=STRANGER)
    await PauseStore(redis).pause(OTHER_PNID, reason="token rotated", code=190, by="worker")
    await store_for(redis).add(letter("m_dead", phone_number_id=OTHER_PNID))
    await RateLimiter(redis).slow_down("106540352240000")

    report = json.loads((await waq(env, "status", "--json")).output)
    numbers = {n["phone_number_id"]: n for n in report["numbers"]}
    assert report["queue_depth"] == 3
    assert report["dead_letters"] == 1
    assert numbers[PNID]["state"] == "sending"
    assert numbers[PNID]["pending"] == 3
    assert numbers[OTHER_PNID]["state"] == "paused"
    assert numbers[OTHER_PNID]["paused_reason"] == "token rotated"
    assert numbers[OTHER_PNID]["dead_letters"] == 1
    assert numbers["106540352240000"]["state"] == "throttled"
    assert numbers["106540352240000"]["slowdown"] > 1.9

    table = (await waq(env, "status")).output
    assert "queue 3 messages (2 due now)" in table  # the second to CUSTOMER waits its turn
    assert "token rotated (190), by worker" in table
    assert "rate divided by" in table
