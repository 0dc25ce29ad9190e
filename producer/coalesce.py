"""Concurrent calls made in one turn of the event loop share one batched call.

A gateway taking 50 single sends at once made 50 enqueue round trips; each cost redis-py
about 60 µs of the gateway's CPU (a fifth of a request, py-spy) and Redis a script call.
Calls submitted in the same turn of the loop now go out as one list, on the next turn, and
while a list is out (``max_in_flight``, 1 by default) the calls that arrive meanwhile
gather for the next one, as a database's group commit does: under load a round trip carries
every call that came during the one before, and a lone call waits for nothing (its list
leaves on the next turn, before any I/O is waited on). Lists go out in the order their
calls came.

Hand-written rather than a DataLoader port (aiodataloader): that pattern is for reads,
keyed and cached, and a write must neither be merged with an equal one nor remembered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Gathers ``submit``-ted items into lists for ``call``; each caller gets its own answer.

    ``call`` answers a list with a list of the same length, in order; at most
    ``max_items`` go in one list, and at most ``max_in_flight`` lists are out at once. If
    it raises, every caller of that list gets the error. A caller cancelled while waiting
    gives up its answer, not its item: the batch it joined still goes out whole.
    """

    def __init__(
        self,
        call: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_items: int = 1000,
        max_in_flight: int = 1,
    ) -> None:
        self._call = call
        self._max_items = max_items
        self._max_in_flight = max_in_flight
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def submit(self, item: T) -> R:
        """Add ``item`` to the next batch; its answer."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (a program calling asyncio.run again): what a closed loop left
            # waiting or in flight can never finish, and must not hold up this one's calls.
            self._loop, self._waiting, self._scheduled = loop, [], False
            self._in_flight = set()
        answer: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, answer))
        self._schedule()
        return await answer

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        while self._waiting and len(self._in_flight) < self._max_in_flight:
            batch = self._waiting[: self._max_items]
            del self._waiting[: self._max_items]
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._landed)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._waiting:
            self._schedule()

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            answers = _same_length(await self._call([item for item, _ in batch]), len(batch))
        except asyncio.CancelledError:  # the loop is closing
            for _, answer in batch:
                answer.cancel()
            raise
        except Exception as exc:  # handed to each caller, who raises it
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
            return
        for (_, answer), result in zip(batch, answers, strict=True):  # lengths checked
            if not answer.done():
                answer.set_result(result)


def _same_length(answers: Sequence[R], calls: int) -> Sequence[R]:
    """``answers``, checked: a short list would leave a caller waiting for good."""
    if len(answers) != calls:
        raise RuntimeError(f"{len(answers)} answers to {calls} calls")
    return answers
