"""Operators' reads at any size: dead letters paged through their indexes, bulk moves
streamed, retention enforced by a real worker's sweep, and no read that SCANs the keyspace.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from producer import keys
from producer.errors import InvalidRequest
from sandbox import SandboxServer
from tests.conftest import ADMIN_KEY
from tests.test_dlq import env, letter, store_for, waq  # noqa: F401 (env is a fixture)
from tests.test_events import customers_write, until
from tests.test_under_load import read_logs, spawn_workers, stop
from worker.dead_letters import DeadLetter, DeadLetterFilter, DeadLetterStore
from worker.error_table import Suggestion
from worker.limits import RateLimiter
from worker.overview import read_overview
from worker.stats import read_series

OTHER = "106540352242999"
CODES = (131047, 131026, 100)


async def seed(store: DeadLetterStore, count: int, *, at: float) -> list[DeadLetter]:
    """``count`` entries over three codes and two senders; every seven share a death time
    (ties the cursor must not skip or repeat)."""
    made = [
        letter(
            f"m_{i:05}", code=CODES[i % 3], phone_number_id=OTHER if i % 2 else "106540352240000",
            to=f"+1650555{i % 10000:04}",
        ).model_copy(update={"dead_at": at - (i // 7)})
        for i in range(count)
    ]  # fmt: skip
    for start in range(0, count, 500):
        async with store.redis.pipeline(transaction=False) as pipe:
            for entry in made[start : start + 500]:
                await store.add(entry, pipe=pipe)
            await pipe.execute()
    return made


def newest_first(letters: list[DeadLetter]) -> list[str]:
    return [x.id for x in sorted(letters, key=lambda x: (-x.dead_at, _desc(x.id)))]


def _desc(message_id: str) -> list[int]:
    return [-ord(c) for c in message_id]


async def walk(store: DeadLetterStore, selection: DeadLetterFilter, limit: int) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.page(selection, cursor=cursor, limit=limit)
        assert len(page.letters) <= limit
        seen += [x.id for x in page.letters]
        if page.next_cursor is None:
            return seen
        assert len(page.letters) == limit
        cursor = page.next_cursor


async def test_pages_walk_every_entry_once_newest_first_through_each_index(redis: Redis) -> None:
    """The cursor goes through ties in death time without skipping or repeating; a filter by
    code or sender pages its own index; combined filters and a recipient filter still give
    exactly the matching entries, with an exact count while the bound is small."""
    store = store_for(redis)
    made = await seed(store, 1050, at=time.time())

    assert await walk(store, DeadLetterFilter(), 100) == newest_first(made)
    by_code = [x for x in made if x.code == 131026]
    assert await walk(store, DeadLetterFilter(code="131026"), 37) == newest_first(by_code)
    both = [x for x in by_code if x.phone_number_id == OTHER]
    chosen = DeadLetterFilter(code="131026", phone_number_id=OTHER)
    assert await walk(store, chosen, 50) == newest_first(both)
    to = DeadLetterFilter(to="+16505550007")
    assert await walk(store, to, 10) == ["m_00007"]

    assert (await store.matching(DeadLetterFilter(code="131026"))).count == len(by_code)
    counted = await store.matching(chosen)
    assert (counted.count, counted.exact) == (len(both), True)
    bound = await store.matching(chosen, count_up_to=10)
    assert (bound.count, bound.exact) == (len(by_code) if len(by_code) < 525 else 525, False)

    with pytest.raises(InvalidRequest) as refused:
        await store.page(cursor="not-a-cursor")
    assert refused.value.field == "cursor"


async def test_a_bulk_move_takes_what_was_selected_and_keeps_every_index_in_step(
    redis: Redis,
) -> None:
    """move_all streams the selection in chunks; an entry that died after the selection stays;
    after the moves each label's index holds exactly what its count says."""
    store = store_for(redis)
    selected_at = time.time()
    await seed(store, 900, at=selected_at - 10)
    later = letter("m_later", code=131026)
    await store.add(later)  # died after the operator confirmed

    progress: list[int] = []
    report = await store.move_all(
        "purge", DeadLetterFilter(code="131026"), until=selected_at, chunk=100,
        on_progress=lambda r: progress.append(r.seen),
    )  # fmt: skip
    assert report.outcome == {"ok": 300}
    assert progress == [100, 200, 300]
    assert await store.get("m_later") is not None

    report = await store.move_all("requeue", DeadLetterFilter(phone_number_id=OTHER), chunk=64)
    assert report.outcome == {"ok": 300}
    counts = {k.decode(): int(v) for k, v in (await redis.hgetall(keys.DEAD_LETTER_COUNTS)).items()}
    for label, count in counts.items():
        assert await redis.zcard(keys.dead_letter_index(label)) == count, label
    assert sum(v for k, v in counts.items() if k.startswith("code:")) == await store.count() == 301


async def test_a_real_worker_drops_dead_letters_past_their_retention(
    redis: Redis, redis_url: str, sandbox_server: SandboxServer, tmp_path: Path
) -> None:
    """A `waq worker` whose sweep runs every second drops entries older than
    WAQ_DLQ_RETENTION_S, with their dead messages' records and the counts; younger stay;
    and its lane sweep records the queue depth for the charts."""
    store = store_for(redis)
    old = letter("m_old", age_s=7200)
    young = letter("m_young", age_s=60, code=131026, suggestion=Suggestion.FIX_RECIPIENT)
    await store.add(old)
    await store.add(young)
    assert await redis.ttl(keys.message("m_old")) == -1, "kept as long as its entry"
    workers = spawn_workers(
        1, redis_url, sandbox_server.url, tmp_path,
        WAQ_LANE_SWEEP_S="1", WAQ_DLQ_RETENTION_S="3600",
    )  # fmt: skip
    try:

        async def dropped() -> bool:
            return await store.get("m_old") is None

        await until(dropped, timeout_s=20)
    finally:
        assert stop(workers) == [0], read_logs(tmp_path)
    assert not await redis.exists(keys.message("m_old"), keys.message_history("m_old"))
    assert await store.get("m_young") is not None
    stats = await store.stats()
    assert (stats.total, stats.by_code) == (1, {"131026": 1})
    assert await redis.zrange(keys.dead_letter_index("code:131047"), 0, -1) == []
    logs = read_logs(tmp_path)
    assert '"event": "dlq.expired"' in logs or '"event":"dlq.expired"' in logs, logs[-2000:]
    # The same sweep writes the queue depth the console charts, from the real process.
    assert any(b.depth is not None for b in (await read_series(redis)).buckets)


async def test_a_conversation_record_expires_after_its_last_message(
    admin: httpx.AsyncClient, redis: Redis
) -> None:
    """A customer's message gives their conversation record the retention again."""
    await customers_write(admin, ["+16505551777"])
    [conversation] = [k async for k in redis.scan_iter(match=keys.conversation("*"))]
    ttl = await redis.ttl(conversation)
    assert 30 * 86400 - 60 < ttl <= 30 * 86400


async def test_operator_reads_never_scan_the_keyspace(
    admin: httpx.AsyncClient,
    redis: Redis,
    env: dict[str, str],  # noqa: F811
) -> None:
    """/metrics, `waq status`, the overview and the console's pages answer from counters and
    indexes: Redis' own command counts show no SCAN or KEYS while they run, with a
    throttled number and thousands of keys in place."""
    store = store_for(redis)
    await seed(store, 2000, at=time.time())
    await RateLimiter(redis).slow_down(OTHER)
    for i in range(50):
        await admin.post("/v1/messages", json={"to": f"+1650555{i:04}", "message": {
            "type": "text", "text": {"body": "hi"}}})  # fmt: skip

    async def scans() -> int:
        stats = await redis.info("commandstats")
        return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("scan", "keys"))

    before = await scans()
    overview = await read_overview(redis)
    assert overview.queue_depth == 50
    assert {n.phone_number_id for n in overview.numbers if n.state.value == "throttled"} == {OTHER}
    metrics = await admin.get("/metrics")
    assert metrics.status_code == 200
    assert "waq_queue_depth 50.0" in metrics.text
    status = await waq(env, "status", "--json")
    assert status.exit_code == 0, status.output
    report = json.loads(status.output)
    assert report["dead_letters"] == 2000
    async with httpx.AsyncClient(base_url=str(admin.base_url), follow_redirects=True) as console:
        signed = await console.post("/console/login", data={"admin_key": ADMIN_KEY})
        assert signed.url.path == "/console/overview"  # signed in, at the home page
        for path in (
            "/console/overview",
            "/console/numbers",
            "/console/dead-letters",
            "/console/dead-letters?code=100&phone_number_id=" + OTHER,
            "/console/search?q=%2B16505550001",
        ):  # fmt: skip  (one: its page)
            assert (await console.get(path)).status_code == 200, path
    assert await scans() == before

    kinds = {k["kind"]: k for k in report["memory"]["kinds"]}
    assert report["memory"]["sampled"] > 100
    # 2,000 entries among ~2,300 keys: the sample's estimate is within a quarter of it.
    assert 1500 <= kinds["dead letters"]["keys"] <= 2500, kinds


async def test_reindex_rebuilds_the_filter_indexes_after_an_upgrade(
    redis: Redis,
    env: dict[str, str],  # noqa: F811
) -> None:
    """Entries from a waq that kept only counts (no label indexes): a filtered page finds
    nothing until `waq dlq reindex` rebuilds the indexes, then finds each one."""
    store = store_for(redis)
    made = await seed(store, 600, at=time.time())
    labels = [k.decode() for k in await redis.hkeys(keys.DEAD_LETTER_COUNTS)]
    await redis.delete(*(keys.dead_letter_index(label) for label in labels))
    assert (await store.page(DeadLetterFilter(code="100"))).letters == []
    result = await waq(env, "dlq", "reindex")
    assert result.exit_code == 0, result.output
    assert "reindexed 600 dead letters" in result.output
    expected = newest_first([x for x in made if x.code == 100])
    assert await walk(store, DeadLetterFilter(code="100"), 100) == expected
    for label in labels:
        count = int(await redis.hget(keys.DEAD_LETTER_COUNTS, label) or 0)
        assert await redis.zcard(keys.dead_letter_index(label)) == count, label
