"""The dead-letter queue: every message waq will not send, with why and what to do about it.

An entry and the message's ``dead`` status are written in one step (``producer.transitions``,
which owns every move of a message), so a message is never dead without an entry. Taking an
entry out (requeue, purge) is one step per entry too: an operator's process killed half way
through a bulk requeue leaves each entry either still in the queue or requeued, never gone
and never both. The same steps keep counts by error code, suggestion and sender, so
``stats`` costs one read however long the queue is.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from producer import keys
from producer.errors import InvalidRequest, WaqError
from producer.request import SendRequest
from producer.status import MessageState, MessageStatus, StatusEvent
from producer.status_store import StatusStore
from producer.transitions import Transitions
from worker.error_table import Suggestion

__all__ = [
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterStats",
    "DeadLetterStore",
    "Move",
    "MoveResult",
    "move_each",
]


class DeadLetter(BaseModel):
    """One undeliverable message: the request as sent, every attempt, the final error, a hint."""

    model_config = ConfigDict(frozen=True)

    id: str
    phone_number_id: str
    to: str
    type: str
    request: dict[str, Any]
    error: dict[str, Any]
    hint: str
    suggestion: Suggestion
    attempts: list[StatusEvent]
    metadata: dict[str, str] = {}
    created_at: float
    dead_at: float
    _stored: str | None = PrivateAttr(default=None)

    @classmethod
    def load(cls, raw: bytes | str) -> DeadLetter:
        """An entry as read from Redis, remembering the exact JSON for compare-and-move."""
        letter = cls.model_validate_json(raw)
        letter._stored = _text(raw)
        return letter

    @property
    def stored(self) -> str:
        """The JSON the queue holds for this entry (what a move compares against)."""
        return self._stored if self._stored is not None else self.model_dump_json()

    @classmethod
    def of(
        cls,
        message_id: str,
        *,
        raw_request: dict[str, Any],
        status: MessageStatus | None,
        error: dict[str, Any],
        suggestion: Suggestion,
        hint: str,
        failed_attempt: int | None = None,
    ) -> DeadLetter:
        """The entry for a message, from its request and status.

        ``failed_attempt`` is the call to Meta that just failed, not yet in the history.
        """
        now = time.time()
        attempts = list(status.history) if status else []
        if failed_attempt is not None:
            attempts.append(
                StatusEvent(at=now, state=MessageState.SENDING, attempt=failed_attempt,
                            detail="attempt failed", error=error)
            )  # fmt: skip
        message = raw_request.get("message")
        return cls(
            id=message_id,
            phone_number_id=str(
                raw_request.get("phone_number_id") or (status.phone_number_id if status else "")
            ),
            to=str(status.to if status else raw_request.get("to", "")),
            type=status.type
            if status
            else str(message.get("type", "") if isinstance(message, dict) else ""),
            request=raw_request,
            error=error,
            hint=hint,
            suggestion=suggestion,
            attempts=attempts,
            metadata=status.metadata if status else {},
            created_at=status.created_at if status else now,
            dead_at=now,
        )

    @property
    def code(self) -> Any:
        """The final error's code (Meta's number, or waq's name for its own refusals)."""
        return self.error.get("code")


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which entries an operator means; every field left None matches everything."""

    ids: tuple[str, ...] | None = None
    code: str | None = None
    suggestion: str | None = None
    phone_number_id: str | None = None
    to: str | None = None
    older_than_s: float | None = None
    newer_than_s: float | None = None

    def matches(self, letter: DeadLetter) -> bool:
        """Whether the entry passes every field's test (ages are tested by the index)."""
        to = self.to and "+" + self.to.lstrip("+")
        return (
            (self.ids is None or letter.id in self.ids)
            and (self.code is None or str(letter.code) == self.code)
            and (self.suggestion is None or letter.suggestion == self.suggestion)
            and (self.phone_number_id is None or letter.phone_number_id == self.phone_number_id)
            and (to is None or letter.to == to)
        )

    @property
    def is_empty(self) -> bool:
        """True when the filter selects the whole queue (bulk commands ask twice for that)."""
        return all(getattr(self, name) is None for name in self.__slots__)


class DeadLetterStats(BaseModel):
    """Counts by error code, suggestion and sender, and the oldest entry's age."""

    total: int
    by_code: dict[str, int]
    by_suggestion: dict[str, int]
    by_phone_number: dict[str, int]
    oldest_id: str | None
    oldest_dead_at: float | None


class MoveResult(StrEnum):
    """What happened to one entry an operator moved out of the queue."""

    OK = "ok"
    MISSING = "missing"
    """Not in the queue (already moved, or never there)."""
    CHANGED = "changed"
    """Rewritten since it was read (the message died again); read it and try again."""


class DeadLetterStore:
    """Writes, reads, requeues and purges dead letters; the CLI and console share it."""

    def __init__(self, redis: Redis, statuses: StatusStore, *, queue_name: str = "") -> None:
        self.redis = redis
        self.statuses = statuses
        self.transitions = Transitions(
            redis, retention_s=statuses.retention_s, queue_name=queue_name or keys.DEFAULT_QUEUE
        )

    async def add(
        self,
        letter: DeadLetter,
        *,
        attempts: int | None = None,
        unless: Iterable[MessageState] = (),
        pipe: Pipeline | None = None,
    ) -> bool:
        """Store the entry and mark the message dead, in one step.

        ``Transitions.dead_letter`` says what ``unless`` and ``pipe`` do.
        """
        return await self.transitions.dead_letter(
            letter.id,
            entry=letter.model_dump_json(),
            dead_at=letter.dead_at,
            detail=letter.hint,
            error=letter.error,
            attempts=attempts,
            unless=unless,
            pipe=pipe,
        )

    async def get(self, message_id: str) -> DeadLetter | None:
        """One entry, or None."""
        raw = await self.redis.get(keys.dead_letter(message_id))
        return DeadLetter.load(raw) if raw is not None else None

    async def scan(
        self, selection: DeadLetterFilter | None = None, *, batch: int = 200
    ) -> AsyncIterator[DeadLetter]:
        """Every matching entry, newest first, read ``batch`` at a time."""
        selection = selection or DeadLetterFilter()
        if selection.ids is not None:
            for message_id in selection.ids:
                letter = await self.get(message_id)
                if letter is not None and selection.matches(letter):
                    yield letter
            return
        now = time.time()
        newest = now - selection.older_than_s if selection.older_than_s is not None else "+inf"
        oldest = now - selection.newer_than_s if selection.newer_than_s is not None else "-inf"
        ids = await self.redis.zrevrangebyscore(keys.DEAD_LETTERS, newest, oldest)
        for start in range(0, len(ids), batch):
            chunk = [_text(i) for i in ids[start : start + batch]]
            for raw in await self.redis.mget([keys.dead_letter(i) for i in chunk]):
                if raw is None:
                    continue  # moved out since the index was read
                letter = DeadLetter.load(raw)
                if selection.matches(letter):
                    yield letter

    async def list(
        self, selection: DeadLetterFilter | None = None, *, limit: int = 50
    ) -> list[DeadLetter]:
        """The newest ``limit`` matching entries."""
        found: list[DeadLetter] = []
        async for letter in self.scan(selection):
            found.append(letter)
            if len(found) >= limit:
                break
        return found

    async def count(self) -> int:
        """How many entries wait for an operator."""
        return int(await self.redis.zcard(keys.DEAD_LETTERS))

    async def stats(self) -> DeadLetterStats:
        """Counts by code, suggestion and sender, and the oldest entry (two reads)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.DEAD_LETTER_COUNTS)
            pipe.zrange(keys.DEAD_LETTERS, 0, 0, withscores=True)
            pipe.zcard(keys.DEAD_LETTERS)
            counts, oldest, total = await pipe.execute()
        groups: dict[str, dict[str, int]] = {"code": {}, "suggestion": {}, "number": {}}
        for label, value in counts.items():
            group, _, name = _text(label).partition(":")
            groups.setdefault(group, {})[name] = int(value)

        def ordered(group: dict[str, int]) -> dict[str, int]:
            return dict(sorted(group.items(), key=lambda item: (-item[1], item[0])))

        return DeadLetterStats(
            total=int(total),
            by_code=ordered(groups["code"]),
            by_suggestion=ordered(groups["suggestion"]),
            by_phone_number=ordered(groups["number"]),
            oldest_id=_text(oldest[0][0]) if oldest else None,
            oldest_dead_at=float(oldest[0][1]) if oldest else None,
        )

    async def requeue(
        self, letter: DeadLetter, *, request: dict[str, Any] | None = None, note: str = ""
    ) -> MoveResult:
        """Send the message again through the whole pipeline, with its history kept.

        ``request`` replaces the one that failed (a template instead of free-form text, say);
        it is validated as the producer would (``InvalidRequest`` names the field). The
        entry leaves the queue in the same script
        that queues the message, and only if it is unchanged since ``letter`` was read.
        """
        payload = request if request is not None else letter.request
        try:
            valid = SendRequest.model_validate(payload)
        except ValidationError as exc:
            raise InvalidRequest.from_validation_error(exc) from None
        payload = valid.model_dump(mode="json", exclude_none=True)
        fields, _ = self.statuses.new_record(valid, payload)
        detail = "requeued from the dead-letter queue" + (f": {note}" if note else "")
        answer = await self.transitions.requeue(
            letter.id,
            expected_entry=letter.stored,
            phone_number_id=valid.phone_number_id,
            wa_id=valid.wa_id,
            detail=detail,
            fields=fields,
        )
        return MoveResult(answer)

    async def purge(self, letter: DeadLetter, *, note: str = "") -> MoveResult:
        """Drop the entry for good (its message stays ``dead``); export it first if in doubt."""
        detail = "purged from the dead-letter queue" + (f": {note}" if note else "")
        answer = await self.transitions.purge(
            letter.id, expected_entry=letter.stored, detail=detail
        )
        return MoveResult(answer)


Move = Callable[[DeadLetter], Awaitable[MoveResult]]


async def move_each(
    letters: list[DeadLetter],
    move: Move,
    *,
    on_refused: Callable[[DeadLetter, WaqError], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Move entries one by one; count outcomes by ``MoveResult`` (or "invalid").

    An entry whose move raises a ``WaqError`` (its request no longer validates, a template
    cannot be filled from it) stays in the queue and is reported, and the rest go on.
    """
    outcome: dict[str, int] = {}
    for done, letter in enumerate(letters, start=1):
        try:
            result = (await move(letter)).value
        except WaqError as exc:
            result = "invalid"
            if on_refused is not None:
                on_refused(letter, exc)
        outcome[result] = outcome.get(result, 0) + 1
        if on_progress is not None:
            on_progress(done, len(letters))
    return outcome


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
