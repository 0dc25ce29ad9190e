"""Concurrent ``Producer.enqueue`` calls share script calls, against a real Valkey: fewer
round trips, and each caller still gets exactly its own answer."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from producer import IdempotencyKeyReused, InvalidRequest, Producer
from producer.coalesce import Coalescer
from producer.status import MessageState
from sandbox import DEFAULT_PHONE_NUMBER_ID, free_port

PNID = DEFAULT_PHONE_NUMBER_ID


def send(to: str, body: str = "hi", **extra: str) -> dict[str, object]:
    return {
        "phone_number_id": PNID,
        "to": to,
        "message": {"type": "text", "text": {"body": body}},
        **extra,
    }


async def script_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    scripts = ("cmdstat_evalsha", "cmdstat_eval")
    return sum(int(v["calls"]) for k, v in stats.items() if k in scripts)


async def test_concurrent_enqueues_share_script_calls_and_each_gets_its_own_id(
    redis: Redis,
) -> None:
    producer = Producer(redis)
    await producer.enqueue(send("+16505550000"))  # loads the script
    before = await script_calls(redis)
    answers = await asyncio.gather(
        *(producer.enqueue(send(f"+1650555{n:04d}", body=f"n{n}")) for n in range(1, 201))
    )
    calls = await script_calls(redis) - before
    assert len({a.message_id for a in answers}) == 200
    assert all(a.created and a.state is MessageState.QUEUED for a in answers)
    assert calls <= 5, calls  # one turn of the loop: 200 messages, not 200 calls
    for n, answer in zip(range(1, 201), answers, strict=True):  # each id is its own request
        request = await producer.statuses.request(answer.message_id)
        assert request is not None
        assert request["to"] == f"+1650555{n:04d}", request


async def test_one_idempotency_key_in_a_shared_call_makes_one_message(redis: Redis) -> None:
    """The same key twice in one coalesced call: the first creates, the second finds it;
    a different body under the key is refused, as when the calls come one after another."""
    producer = Producer(redis)
    same = [producer.enqueue(send("+16505551234", idempotency_key="order-1")) for _ in range(10)]
    other = producer.enqueue(send("+16505551234", body="changed", idempotency_key="order-1"))
    *answers, refused = await asyncio.gather(*same, other, return_exceptions=True)
    assert isinstance(refused, IdempotencyKeyReused), refused
    assert {a.message_id for a in answers} == {answers[0].message_id}  # type: ignore[union-attr]
    assert [a.created for a in answers] == [True] + [False] * 9  # type: ignore[union-attr]


async def test_an_invalid_request_fails_alone(redis: Redis) -> None:
    """Validation happens before a call joins the batch: a bad request is refused and the
    others in the same turn are enqueued."""
    producer = Producer(redis)
    good, bad = await asyncio.gather(
        producer.enqueue(send("+16505551234")),
        producer.enqueue(send("12")),
        return_exceptions=True,
    )
    assert isinstance(bad, InvalidRequest)
    assert bad.field == "to"
    assert not isinstance(good, BaseException)
    assert await producer.status(good.message_id) is not None


async def test_a_failed_call_fails_every_caller_of_its_batch() -> None:
    """Redis unreachable: each caller of the shared call raises the error, none hangs."""
    redis = Redis(port=free_port(), socket_connect_timeout=1)  # nothing listens there
    producer = Producer(redis)
    results = await asyncio.wait_for(
        asyncio.gather(
            *(producer.enqueue(send(f"+1650555{n:04d}")) for n in range(5)),
            return_exceptions=True,
        ),
        timeout=10,
    )
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    await redis.aclose()


async def test_a_cancelled_caller_leaves_the_others_their_answers() -> None:
    calls: list[list[int]] = []

    async def double(items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0.01)
        return [2 * i for i in items]

    coalescer: Coalescer[int, int] = Coalescer(double)
    tasks = [asyncio.create_task(coalescer.submit(n)) for n in range(4)]
    await asyncio.sleep(0)  # all four submitted in this turn
    tasks[1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert calls == [[0, 1, 2, 3]]  # the cancelled item still went out with its batch
    assert [done[0], done[2], done[3]] == [0, 4, 6]
    assert isinstance(done[1], asyncio.CancelledError)


async def test_a_full_batch_leaves_at_once() -> None:
    calls: list[list[int]] = []

    async def echo(items: list[int]) -> list[int]:
        calls.append(items)
        return items

    coalescer: Coalescer[int, int] = Coalescer(echo, max_items=3)
    assert await asyncio.gather(*(coalescer.submit(n) for n in range(7))) == list(range(7))
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]


async def test_a_call_answering_the_wrong_number_fails_its_callers() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    coalescer: Coalescer[int, int] = Coalescer(short)
    results = await asyncio.wait_for(
        asyncio.gather(*(coalescer.submit(n) for n in range(3)), return_exceptions=True), 5
    )
    assert all(isinstance(r, RuntimeError) for r in results), results


async def test_calls_made_while_one_is_out_go_together_in_the_next() -> None:
    """Group commit: one call out at a time; what arrives meanwhile waits and goes as one."""
    started: list[list[int]] = []
    release = asyncio.Event()

    async def slow(items: list[int]) -> list[int]:
        started.append(list(items))
        if len(started) == 1:
            await release.wait()
        return items

    coalescer: Coalescer[int, int] = Coalescer(slow)
    first = [asyncio.create_task(coalescer.submit(n)) for n in range(2)]
    await asyncio.sleep(0.01)  # the first list is out
    later = [asyncio.create_task(coalescer.submit(n)) for n in range(2, 6)]
    await asyncio.sleep(0.01)
    assert started == [[0, 1]]  # nothing else goes out while it is
    release.set()
    assert await asyncio.gather(*first, *later) == list(range(6))
    assert started == [[0, 1], [2, 3, 4, 5]]


def test_a_coalescer_outlives_its_event_loop() -> None:
    """A call whose loop closed before its batch left does not block the next loop's."""

    async def echo(items: list[int]) -> list[int]:
        return items

    coalescer: Coalescer[int, int] = Coalescer(echo)

    async def abandon() -> None:
        asyncio.get_running_loop().create_task(coalescer.submit(1))  # never awaited

    loop = asyncio.new_event_loop()
    loop.run_until_complete(abandon())  # the submit ran; its flush never did
    loop.close()
    assert asyncio.run(asyncio.wait_for(coalescer.submit(2), 2)) == 2
