"""The one owner of message state: every transition of a message's record happens here.

Enqueue, claim, settle, a status webhook's step, a dead letter, a requeue and a purge are each
one script (``producer.transition_scripts``) over the record, its history, its conversation's
order list and its sender's lane. Nothing else writes those keys. A state only moves forward
(``STATE_RANK``); a message that becomes final leaves its lane and lets the conversation's
next message go. A step that finds a lane without a job returns a token, and the caller
starts that job (``start_lanes``): arq runs it, and a job whose token was replaced exits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

from producer import keys, transition_scripts
from producer.status import MessageState, StatusEvent

__all__ = [
    "LANE_FUNCTION",
    "Claim",
    "ClaimLimits",
    "Claimed",
    "EnqueueItem",
    "Outcome",
    "Transitions",
    "json_serializer",
    "lane_job_id",
    "start_jobs",
]

LANE_FUNCTION: Final = "send_lane"
"""The worker function that drains one sender's lane; jobs are enqueued by name."""

# arq drops a job whose record has expired, and a Retry does not renew it: a lane busy for
# longer than this loses its job (the sweep starts another within WAQ_LANE_SWEEP_S). 30 days
# of 5 s slices is 518,400 tries, under the worker's max_tries of 1,000,000.
_JOB_EXPIRES_MS: Final = 30 * 24 * 3600 * 1000


def lane_job_id(phone_number_id: str, token: str) -> str:
    """arq's job id for a lane's job: one per token, so a replaced job never blocks a new one."""
    return f"lane:{phone_number_id}:{token}"


@dataclass(frozen=True, slots=True)
class ClaimLimits:
    """What a claim may take: the batch, how far ahead slots go, the rate and window rules."""

    max_batch: int = 200
    horizon_s: float = 0.5
    default_mps: float = 80.0
    safety: float = 0.03
    pair_interval_s: float = 6.18
    pair_burst: int = 45
    recover_s: float = 60.0
    reconcile_wait_s: float = 60.0
    reconcile_check_s: float = 2.0
    claim_deadline_s: float = 20.0
    ambiguous_policy: Literal["resend", "dead_letter"] = "resend"
    window_s: float = 24 * 3600 - 60.0
    sleep_after_ms: int = 200
    bulk_share: float = 0.2


@dataclass(frozen=True, slots=True)
class EnqueueItem:
    """One message for ``Transitions.enqueue_many``.

    Its ids, its request's fingerprint, its first history event and its record's fields.
    """

    message_id: str
    phone_number_id: str
    wa_id: str
    fingerprint: str
    event: str
    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class Claimed:
    """One message a claim handed over.

    ``send`` it at its slot; or dead-letter it: ``closed`` (its window is shut) or
    ``ambiguous`` (an unknown outcome, past the reconcile wait).
    """

    kind: Literal["send", "closed", "ambiguous"]
    message_id: str
    attempt: int
    slot_s: float
    """Seconds after the claim (``Claim.redis_now``) when it may leave."""
    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Claim:
    """A claim's answer: what to do with the lane now."""

    kind: Literal["ok", "stale", "paused", "idle", "sleep", "wait"]
    messages: list[Claimed] = field(default_factory=list)
    wait_s: float | None = None
    """For ``ok``: how far ahead the number's slots are booked; for ``sleep`` and ``wait``:
    when to look again (None: when a batch in flight settles)."""
    redis_now: float = 0.0
    """Redis's clock (unix s) when it claimed: the slots are this plus each ``slot_s``."""
    interval_s: float = 0.0
    """The number's slot spacing (1 / its rate, under the safety margin and any slowdown)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one claimed message, for ``settle``; built by ``Outcome.<kind>``."""

    kind: Literal["accepted", "retry", "dead"]
    message_id: str
    wa_id: str
    args: tuple[str, str, str, str]

    @classmethod
    def accepted(
        cls, message_id: str, wa_id: str, *, attempt: int, wamid: str, sent_at: float
    ) -> Outcome:
        """Meta took it: the record gets its wamid, the conversation's next message goes."""
        event = StatusEvent(at=time.time(), state=MessageState.ACCEPTED, attempt=attempt)
        events = _events(event, attempt=attempt, sent_at=sent_at)
        return cls("accepted", message_id, wa_id, (str(attempt), wamid, events, ""))

    @classmethod
    def retry(
        cls,
        message_id: str,
        wa_id: str,
        *,
        state: MessageState,
        attempt: int,
        due_s: float,
        detail: str | None = None,
        error: dict[str, Any] | None = None,
        attempts: int | None = None,
        sent_at: float | None = None,
        unsent: bool = False,
    ) -> Outcome:
        """Back in the lane, due in ``due_s``.

        ``state`` says why (retrying, queued, or sending for an unknown outcome);
        ``attempts`` rewrites the count (a wait is free); ``sent_at``: the request left then
        (None: it never did); ``unsent``: it was claimed but never left, so the pair's rate
        slot it took goes back.
        """
        now = time.time()
        fields: dict[str, str] = {"state": state.value, "updated_at": repr(now)}
        if state is not MessageState.SENDING:
            fields["next_attempt_at"] = repr(now + due_s)
        if detail is not None:
            fields["detail"] = detail
        if error is not None:
            fields["error"] = json.dumps(error)
        if attempts is not None:
            fields["attempts"] = str(attempts)
        event = StatusEvent(at=now, state=state, attempt=attempt, detail=detail, error=error)
        events = _events(event, attempt=attempt, sent_at=sent_at)
        return cls(
            "retry",
            message_id,
            wa_id,
            (repr(due_s), events, json.dumps(fields), "unsent" if unsent else ""),
        )

    @classmethod
    def dead(
        cls,
        message_id: str,
        wa_id: str,
        *,
        entry: str,
        dead_at: float,
        detail: str,
        error: dict[str, Any],
        attempts: int | None,
        sent_at: float | None = None,
    ) -> Outcome:
        """Dead-lettered with ``entry`` (the dead letter's JSON), in the same step."""
        fields = {"state": MessageState.DEAD.value, "updated_at": repr(dead_at),
                  "detail": detail, "error": json.dumps(error)}  # fmt: skip
        if attempts is not None:
            fields["attempts"] = str(attempts)
        event = StatusEvent(at=dead_at, state=MessageState.DEAD, detail=detail, error=error)
        events = _events(event, attempt=attempts or 0, sent_at=sent_at)
        return cls("dead", message_id, wa_id, (repr(dead_at), events, json.dumps(fields), entry))


class Transitions:
    """Runs the transition scripts and starts the lane jobs they ask for."""

    def __init__(
        self, redis: Redis, *, retention_s: int, queue_name: str = keys.DEFAULT_QUEUE
    ) -> None:
        self.redis = redis
        self.retention_s = retention_s
        self.queue_name = queue_name
        s = transition_scripts
        self._enqueue_many = redis.register_script(s.ENQUEUE_MANY)
        self._claim = redis.register_script(s.CLAIM)
        self._settle = redis.register_script(s.SETTLE)
        self._record = redis.register_script(s.RECORD)
        self._dead_letter = redis.register_script(s.DEAD_LETTER)
        self._requeue = redis.register_script(s.REQUEUE)
        self._purge = redis.register_script(s.PURGE)
        self._expire_dead_letters = redis.register_script(s.EXPIRE_DEAD_LETTERS)
        self._wake = redis.register_script(s.WAKE_IF_WAITING)
        self._cancel = redis.register_script(s.CANCEL)

    # -- enqueue ------------------------------------------------------------------------

    async def enqueue_many(self, items: Sequence[EnqueueItem]) -> list[list[Any]]:
        """Enqueue a batch in one command (answers: ``parse_enqueue``, in order).

        Also adds each sender to ``keys.SENDERS``.
        """
        batch = orjson.dumps(
            [[item.message_id, item.phone_number_id, item.wa_id, item.fingerprint, item.event,
              item.fields] for item in items]
        )  # fmt: skip
        answers: list[list[Any]] = await self._enqueue_many(
            keys=[keys.SENDERS], args=[self.retention_s, batch]
        )
        return answers

    @staticmethod
    def parse_enqueue(answer: list[Any]) -> tuple[str | None, str | None]:
        """(the state already recorded, or None when created; a lane token to start)."""
        state = _text(answer[0])
        token = _text(answer[1]) if len(answer) > 1 and answer[1] is not None else None
        return (state or None), token

    async def start_lanes(self, tokens: Iterable[tuple[str, str]]) -> None:
        """Start the lane job each (phone_number_id, token) names, in one round trip."""
        await start_jobs(
            self.redis,
            self.queue_name,
            (
                (lane_job_id(pnid, token), LANE_FUNCTION,
                 {"phone_number_id": pnid, "token": token})
                for pnid, token in tokens
            ),
        )  # fmt: skip

    async def wake(self, phone_number_id: str, *, replace: bool = False) -> str | None:
        """Start the lane's job if it has none (or it sleeps); the token started, if any.

        For the sweep: the lane may hold due messages and no job. ``replace``: for a resumed
        number, whose job is deferred by the pause check; a new one starts now, and the old
        one finds its token stale.
        """
        token = await self._wake(
            keys=[
                keys.lane(phone_number_id),
                keys.lane_job(phone_number_id),
                keys.bulk_lane(phone_number_id),
            ],
            args=[keys.ARQ_JOB_PREFIX + lane_job_id(phone_number_id, ""), 1 if replace else 0],
        )
        if token is None:
            return None
        await self.start_lanes([(phone_number_id, _text(token))])
        return _text(token)

    # -- the lane job's two steps ----------------------------------------------------------

    async def claim(
        self, phone_number_id: str, token: str, limits: ClaimLimits, *, app_factor: float,
        may_idle: bool, max_batch: int | None = None,
    ) -> Claim:  # fmt: skip
        """Claim a batch of the lane's due messages, with their rate slots, in one step.

        ``max_batch`` lowers the limits' batch (the caller has only so many calls free).
        """
        c = limits
        batch = min(c.max_batch, max_batch or c.max_batch)
        answer = await self._claim(
            keys=[keys.lane(phone_number_id), keys.lane_job(phone_number_id),
                  keys.number_rate(phone_number_id), keys.slowdown(phone_number_id),
                  keys.PAUSED_NUMBERS, keys.RATE_LIMITS, keys.bulk_lane(phone_number_id)],
            args=[token, phone_number_id, batch, c.horizon_s, c.default_mps, c.safety,
                  c.pair_interval_s, c.pair_burst, c.recover_s, app_factor, c.reconcile_wait_s,
                  c.reconcile_check_s, c.claim_deadline_s, c.ambiguous_policy, c.window_s,
                  c.sleep_after_ms, 1 if may_idle else 0, repr(time.time()), c.bulk_share],
        )  # fmt: skip
        kind = _text(answer[0])
        if kind in ("sleep", "wait"):
            wait = answer[1] if len(answer) > 1 else None
            return Claim(kind, wait_s=float(wait) / 1000 if wait is not None else None)  # type: ignore[arg-type]
        if kind != "ok":
            return Claim(kind)  # type: ignore[arg-type]
        items = answer[4:]
        messages = [
            Claimed(
                kind=_text(items[i]),  # type: ignore[arg-type]
                message_id=_text(items[i + 1]),
                attempt=int(items[i + 2]),
                slot_s=float(items[i + 3]),
                request=json.loads(items[i + 4]),
            )
            for i in range(0, len(items), 5)
        ]
        return Claim(
            "ok",
            messages,
            wait_s=float(answer[1]),
            redis_now=float(answer[2]),
            interval_s=float(answer[3]),
        )

    async def settle(
        self, phone_number_id: str, outcomes: Sequence[Outcome], limits: ClaimLimits
    ) -> None:
        """Record a batch's outcomes in one step; start any lane job that step asks for."""
        if not outcomes:
            return
        args: list[str | int | float] = [phone_number_id, self.retention_s, limits.pair_interval_s]
        for o in outcomes:
            args += [o.kind, o.message_id, o.wa_id, *o.args]
        tokens = await self._settle(
            keys=[keys.lane(phone_number_id), keys.DEAD_LETTERS, keys.DEAD_LETTER_COUNTS],
            args=args,
        )
        await self.start_lanes((phone_number_id, _text(t)) for t in tokens)

    # -- status webhooks, dead letters ------------------------------------------------------

    async def record(
        self,
        message_id: str,
        state: MessageState,
        *,
        attempt: int = 0,
        detail: str | None = None,
        error: dict[str, Any] | None = None,
        wamid: str | None = None,
        at: float | None = None,
        pipe: Pipeline | None = None,
    ) -> bool:
        """Move a message to ``state`` (unless a later one is recorded); log the step.

        Returns whether the state moved. On a caller's ``pipe`` (a webhook's transaction)
        the step is only queued, its answer is ``parse_record``'s, and the caller starts
        any lane job it names.
        """
        now = time.time()
        always: dict[str, str] = {}
        if wamid is not None:
            always["wamid"] = wamid
        moved: dict[str, str] = {"updated_at": repr(now)}
        cleared = [name for name, value in (("detail", detail), ("error", error)) if value is None]
        cleared.append("next_attempt_at")
        if detail is not None:
            moved["detail"] = detail
        if error is not None:
            moved["error"] = json.dumps(error)
        event = StatusEvent(
            at=now, state=state, attempt=attempt, detail=detail, error=error, reported_at=at
        )
        key = keys.message(message_id)
        answer = await self._record(
            keys=[key, keys.message_history(message_id), keys.wamid(wamid) if wamid else key],
            args=[state.value, event.model_dump_json(exclude_none=True), self.retention_s,
                  message_id, json.dumps(always), json.dumps(moved), ",".join(cleared)],
            client=pipe,
        )  # fmt: skip
        if pipe is not None:
            return False
        moved_, _ = await self.apply_answer(answer)
        return moved_

    async def dead_letter(
        self,
        message_id: str,
        *,
        entry: str,
        dead_at: float,
        detail: str,
        error: dict[str, Any],
        attempts: int | None = None,
        unless: Iterable[MessageState] = (),
        pipe: Pipeline | None = None,
    ) -> bool:
        """Store a dead letter and mark the message dead, in one step.

        A message already in a state of ``unless`` is left alone (False): Meta's failure
        reports arrive late, and one about a message it since delivered is stale. On a
        caller's ``pipe`` only queued (answer: ``apply_answer``).
        """
        event = StatusEvent(at=dead_at, state=MessageState.DEAD, detail=detail, error=error)
        fields = {"state": MessageState.DEAD.value, "updated_at": repr(dead_at),
                  "detail": detail, "error": json.dumps(error)}  # fmt: skip
        if attempts is not None:
            fields["attempts"] = str(attempts)
        answer = await self._dead_letter(
            keys=[keys.dead_letter(message_id), keys.DEAD_LETTERS, keys.DEAD_LETTER_COUNTS,
                  keys.message(message_id), keys.message_history(message_id)],
            args=[message_id, entry, dead_at, event.model_dump_json(exclude_none=True),
                  self.retention_s, "," + "".join(f"{state.value}," for state in unless),
                  *(item for pair in fields.items() for item in pair)],
            client=pipe,
        )  # fmt: skip
        if pipe is not None:
            return False
        added, _ = await self.apply_answer(answer)
        return added

    async def apply_answer(self, answer: list[Any]) -> tuple[bool, str | None]:
        """Read a record or dead-letter step's answer (also from a caller's pipeline).

        Returns whether it moved the state (or added the entry), and the token of the lane
        job it started, if the step asked for one.
        """
        done = int(answer[0]) == 1
        if len(answer) < 3:
            return done, None
        token = _text(answer[1])
        await self.start_lanes([(_text(answer[2]), token)])
        return done, token

    async def requeue(
        self,
        message_id: str,
        *,
        expected_entry: str,
        phone_number_id: str,
        wa_id: str,
        detail: str,
        fields: dict[str, str],
    ) -> str:
        """Put a dead letter's message back in its lane, as the producer would.

        Returns ``ok``, or ``missing`` / ``changed`` when the entry is not as the caller read.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            self.requeue_into(
                pipe, message_id, expected_entry=expected_entry, phone_number_id=phone_number_id,
                wa_id=wa_id, detail=detail, fields=fields,
            )  # fmt: skip
            [answer] = await pipe.execute()
        result, token = self.parse_requeue(answer)
        if token is not None:
            await self.start_lanes([(phone_number_id, token)])
        return result

    def requeue_into(
        self,
        pipe: Pipeline,
        message_id: str,
        *,
        expected_entry: str,
        phone_number_id: str,
        wa_id: str,
        detail: str,
        fields: dict[str, str],
    ) -> None:
        """Queue ``requeue`` on a caller's pipeline (its answer: ``parse_requeue``)."""
        now = time.time()
        created_at = fields.pop("created_at", repr(now))
        fields["updated_at"] = repr(now)
        event = StatusEvent(at=now, state=MessageState.QUEUED, detail=detail)
        _queue_script(pipe, self._requeue, [message_id, expected_entry, self.retention_s,
                      event.model_dump_json(exclude_none=True), created_at, phone_number_id,
                      wa_id, orjson.dumps(fields)])  # fmt: skip

    @staticmethod
    def parse_requeue(answer: list[Any]) -> tuple[str, str | None]:
        """A requeue's result (ok, missing, changed) and the lane token it asks to start."""
        token = answer[1] if len(answer) > 1 else None
        return _text(answer[0]), _text(token) if token is not None else None

    async def cancel(self, message_id: str, *, detail: str = "cancelled") -> tuple[str, str | None]:
        """Take a message back before it is handed to Meta.

        Returns (``cancelled``, None), (``refused``, the state it is in: sending or later) or
        (``missing``, None).
        """
        event = StatusEvent(at=time.time(), state=MessageState.CANCELLED, detail=detail)
        answer = await self._cancel(
            keys=[keys.message(message_id), keys.message_history(message_id)],
            args=[message_id, event.model_dump_json(exclude_none=True), repr(time.time())],
        )
        kind = _text(answer[0])
        if kind == "cancelled":
            if answer[1]:
                await self.start_lanes([(_text(answer[2]), _text(answer[1]))])
            return kind, None
        return kind, _text(answer[1]) if len(answer) > 1 else None

    async def purge(self, message_id: str, *, expected_entry: str) -> str:
        """Drop a dead letter, and its dead message's record, for good: ok, missing or changed."""
        async with self.redis.pipeline(transaction=False) as pipe:
            self.purge_into(pipe, message_id, expected_entry=expected_entry)
            [answer] = await pipe.execute()
        return _text(answer[0])

    def purge_into(self, pipe: Pipeline, message_id: str, *, expected_entry: str) -> None:
        """Queue ``purge`` on a caller's pipeline (its answer's first item is the result)."""
        _queue_script(pipe, self._purge, [message_id, expected_entry])

    async def expire_dead_letters(self, older_than_s: float, *, chunk: int = 500) -> int:
        """Drop the dead letters that died ``older_than_s`` ago, a bounded chunk per step.

        Each step holds Redis for one chunk (about 20 µs an entry); returns how many went.
        """
        cutoff = time.time() - older_than_s
        dropped = 0
        while True:
            n = int(
                await self._expire_dead_letters(
                    keys=[keys.DEAD_LETTERS, keys.DEAD_LETTER_COUNTS], args=[cutoff, chunk]
                )
            )
            dropped += n
            if n < chunk:
                return dropped


async def start_jobs(
    redis: Redis, queue_name: str, jobs: Iterable[tuple[str, str, dict[str, Any]]]
) -> None:
    """Start arq jobs named (job id, function, keyword arguments), in one round trip.

    Written as arq's ``enqueue_job`` writes a job (its own format, ``serialize_job``), without
    arq's WATCH/MULTI: each id carries a new token, so it cannot exist yet.
    """
    wanted = list(jobs)
    if not wanted:
        return
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for job_id, function, kwargs in wanted:
            payload = serialize_job(function, (), kwargs, None, now_ms, serializer=json_serializer)
            pipe.set(keys.ARQ_JOB_PREFIX + job_id, payload, px=_JOB_EXPIRES_MS, nx=True)
            pipe.zadd(queue_name, {job_id: now_ms}, nx=True)
        await pipe.execute()


def _queue_script(pipe: Pipeline, script: AsyncScript, args: list[Any]) -> None:
    """Queue a script on a pipeline without awaiting.

    redis-py's ``Script.__call__`` is a coroutine even when it only queues, and a caller
    building a chunk's pipeline in plain code (while the previous chunk runs) cannot await.
    The pipeline loads the script first if Redis lacks it, as it does for ``__call__``.
    """
    pipe.scripts.add(script)  # type: ignore[arg-type]  # redis-py types it Script, holds both
    pipe.evalsha(script.sha, 0, *args)  # the scripts build their keys from the ids


def _events(outcome: StatusEvent, *, attempt: int, sent_at: float | None) -> str:
    """An outcome's history lines: the attempt's ``sending`` (when it left), then the outcome."""
    lines = [outcome.model_dump_json(exclude_none=True)]
    if sent_at is not None:
        sending = StatusEvent(at=sent_at, state=MessageState.SENDING, attempt=attempt)
        lines.insert(0, sending.model_dump_json(exclude_none=True))
    return "\n".join(lines)


def json_serializer(data: dict[str, Any]) -> bytes:
    """arq's job and result serializer: JSON, readable by any service and by operators."""
    return json.dumps(data, separators=(",", ":"), default=str).encode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
