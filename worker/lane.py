"""A lane job: one sender's due messages, claimed a batch at a time, sent, settled in batches.

arq runs one job per active lane (``worker.runner.send_lane``). The job loops for a time
slice: claim (one script: pause, window, both rate slots, each message ``sending``), send each
claimed message at its slot, concurrently, and settle finished sends together (one script:
accepted, retry at a due time, dead letter), while the next claim is already under way. So
arq's per-job cost and the Redis round trips are paid per batch, not per message.

The job ends when the lane is empty (the claim that finds it so gives the token up, in the
same step a new message would see), sleeps through arq (``Retry``) when the next message is
due later, and yields after ``slice_s`` so many lanes share few workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass

import structlog
from arq.worker import Retry

from producer.transitions import Claim, Claimed, ClaimLimits, Outcome, Transitions
from worker.delivery import Delivery, DeliveryConfig
from worker.error_table import Action, ErrorRule, Suggestion
from worker.limits import APP_SCOPE, RateLimiter

__all__ = ["LaneJob", "LaneReport", "RedisClock"]

log = structlog.get_logger("waq.worker")

_APP_FACTOR_TTL_S = 1.0
_SETTLE_TRIES = 5


@dataclass(slots=True)
class LaneReport:
    """What one run of a lane job did (arq's result, and the batch log line)."""

    claims: int = 0
    sent: int = 0
    settled: int = 0
    ended: str = ""


class RedisClock:
    """Maps Redis's clock (the limiter's slots) onto this process's monotonic clock.

    A claim ran at Redis time ``now`` somewhere between asking and reading the answer, so
    ``now - answered`` is a lower bound of the offset between the clocks. Each claim alone
    gives a different bound (a 200-message claim takes milliseconds longer to run and parse
    than a 5-message one), and mapping each claim's slots with its own bound squeezed the
    schedule: sends ran at 991/s against 970/s booked in a 1,000 mps run. The largest bound
    of the last ``window_s`` is the tightest and the same for every claim; a slot mapped
    with it is never early.
    """

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self._bounds: deque[tuple[float, float]] = deque()

    def offset(self, *, redis_now: float, answered: float) -> float:
        """Redis's clock minus the monotonic clock: subtract it from a slot.

        From a claim's ``redis_now`` and when its answer was read (``time.monotonic()``).
        """
        bound = redis_now - answered
        while self._bounds and self._bounds[-1][1] <= bound:
            self._bounds.pop()
        self._bounds.append((answered, bound))
        while answered - self._bounds[0][0] > self.window_s:
            self._bounds.popleft()
        return self._bounds[0][1]


class LaneJob:
    """Drains lanes; one instance per worker process, one ``run`` per arq job."""

    def __init__(
        self,
        *,
        transitions: Transitions,
        delivery: Delivery,
        limiter: RateLimiter,
        limits: ClaimLimits,
        config: DeliveryConfig,
        concurrency: int = 50,
    ) -> None:
        self.transitions = transitions
        self.delivery = delivery
        self.limiter = limiter
        self.limits = limits
        self.config = config
        # A slot missed by more than this is given up: sends then stay within (slot, slot +
        # tolerance], so no second holds more than Meta's limit (the limiter's safety margin).
        self.late_tolerance_s = limiter.config.late_tolerance_s
        self._app_factor = (1.0, 0.0)
        # Graph calls open at once, over every lane this process runs: the connection pool's
        # size. More would queue inside the HTTP client (httpcore scans its whole pool for
        # each queued request: a py-spy profile showed 64% of the CPU there at 200).
        self.concurrency = concurrency
        self.clock = RedisClock()
        self.calls = asyncio.Semaphore(concurrency)

    async def run(self, phone_number_id: str, token: str) -> LaneReport:
        """Drain the lane for one time slice; raise ``Retry`` to come back later."""
        run = _LaneRun(self, phone_number_id, token)
        try:
            return await run.loop()
        finally:
            await run.drain()

    async def app_factor(self) -> float:
        """Meta's app-wide throttling divisor, read at most once a second."""
        factor, read_at = self._app_factor
        if time.monotonic() - read_at > _APP_FACTOR_TTL_S:
            factor = await self.limiter.slowdown(APP_SCOPE)
            self._app_factor = (factor, time.monotonic())
        return factor


class _LaneRun:
    """One run of a lane job: its sends in flight and its outcomes waiting to be settled."""

    def __init__(self, job: LaneJob, phone_number_id: str, token: str) -> None:
        self.job = job
        self.pnid = phone_number_id
        self.token = token
        self.report = LaneReport()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.active = 0
        """Claimed messages whose slot has come: calling Meta, or about to."""
        self.interval_s = 0.0
        self.last_send = 0.0
        """When this run last sent (monotonic): late sends never come closer than a slot."""
        self.pending: list[Outcome] = []
        self.settling: asyncio.Task[None] | None = None
        self.settled = asyncio.Event()

    async def loop(self) -> LaneReport:
        config = self.job.config
        ends_at = time.monotonic() + config.slice_s
        while True:
            if (free := self.job.concurrency - self.active) <= 0:
                # Claim no more than can be sent on time: a message claimed beyond the calls
                # free would wait for one, miss its slot and go back in line. Messages asleep
                # until a later slot do not count (the horizon bounds them).
                await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            # Cleared before the claim, not after: a settle that lands while the claim is on
            # its way must still wake the wait below (a lost wake-up held an idle lane's
            # next message for the whole claim deadline, 20 s).
            self.settled.clear()
            claim = await self.job.transitions.claim(
                self.pnid, self.token, self.job.limits, app_factor=await self.job.app_factor(),
                may_idle=not self.in_flight and not self.pending and self.settling is None,
                max_batch=free,
            )  # fmt: skip
            claimed_at = time.monotonic()
            if claim.kind in ("stale", "idle"):
                return self._end(claim.kind)
            if claim.kind == "paused":
                await self.drain()
                self._end("paused")
                raise Retry(defer=config.pause_check_s)
            if claim.kind == "sleep":
                self._end("sleep")
                raise Retry(defer=max(claim.wait_s or 0, 0.001))
            if claim.kind == "ok":
                await self._start(claim, claimed_at)
                # The slots booked reach ``wait_s`` ahead: claim again when half are used.
                await self._wait((claim.wait_s or 0) - self.job.limits.horizon_s / 2)
            else:
                await self._wait(claim.wait_s)
            if time.monotonic() > ends_at:
                await self.drain()
                self._end("yield")
                # Behind every job due now: arq moves a retried job to now + defer only for
                # a defer above zero (with 0 it keeps its old score, and runs again first).
                raise Retry(defer=0.001)

    def _end(self, how: str) -> LaneReport:
        self.report.ended = how
        if self.report.claims:
            log.info("lane.run", phone_number_id=self.pnid, claims=self.report.claims,
                     sent=self.report.sent, settled=self.report.settled, ended=how)  # fmt: skip
        return self.report

    async def _start(self, claim: Claim, claimed_at: float) -> None:
        self.report.claims += 1
        offset = self.job.clock.offset(redis_now=claim.redis_now, answered=claimed_at)
        now = time.monotonic()
        for claimed in claim.messages:
            at = claim.redis_now + claimed.slot_s - offset
            due = at <= now or claimed.kind != "send"
            if due:
                self.active += 1
            task = asyncio.create_task(self._deliver(claimed, at, counted=due, wait_s=at - now))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
        self.interval_s = claim.interval_s

    async def _wait(self, wait_s: float | None) -> None:
        """Wait until ``wait_s`` has passed or a settle may have made a message due.

        None: only the latter (when something is in flight).
        """
        if wait_s is not None and wait_s <= 0:
            return
        # Always on the event: a settle that ended since the claim has set it already.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settled.wait(), timeout=wait_s)

    async def _deliver(self, claimed: Claimed, at: float, *, counted: bool, wait_s: float) -> None:
        if not counted:
            await asyncio.sleep(at - time.monotonic())
            self.active += 1
        try:
            await self._deliver_now(claimed, at, wait_s)
        finally:
            self.active -= 1

    async def _deliver_now(self, claimed: Claimed, at: float, wait_s: float) -> None:
        delivery = self.job.delivery
        try:
            if claimed.kind == "closed":
                outcome = await delivery.closed_window(claimed)
            elif claimed.kind == "ambiguous":
                outcome = await delivery.ambiguous(claimed)
            elif self._would_bunch(at):
                outcome = delivery.missed_slot(claimed)
            else:
                self.last_send = time.monotonic()
                delivery.metrics.rate_limit_wait.observe(max(wait_s, 0.0))
                async with self.job.calls:  # shared with this process's other lanes
                    outcome = await delivery.send(self.pnid, claimed)
                self.report.sent += 1
        except Exception as exc:  # a bug: count it as a failed attempt, never loop forever
            log.exception("send.error", message_id=claimed.message_id)
            rule = ErrorRule(
                Action.RETRY,
                Suggestion.CONTACT_SUPPORT,
                "waq failed on this message: see the worker log (send.error)",
            )
            error = {"code": "worker_error", "title": type(exc).__name__}
            try:
                outcome = await delivery.failed(self.pnid, claimed, rule, error)
            except Exception:
                # Left `sending`: it comes due at its claim deadline and is reconciled.
                log.exception("send.error", message_id=claimed.message_id, stage="outcome")
                return
        self.pending.append(outcome)
        if self.settling is None:
            self.settling = asyncio.create_task(self._settle())

    def _would_bunch(self, at: float) -> bool:
        """Whether sending now, past the slot at ``at``, could break Meta's per-second limit.

        A send within ``late_tolerance_s`` of its slot is on time. A later one is safe only
        if the run's previous send was at least a slot's spacing ago: then the sends are no
        closer together than the limiter booked them. A worker that is merely busy sends
        late but spaced (and loses no slot); one catching up after a stall would burst, and
        gives those slots up instead.
        """
        now = time.monotonic()
        if now - at <= self.job.late_tolerance_s:
            return False
        return now - self.last_send < self.interval_s

    async def _settle(self) -> None:
        """Settle whatever has finished, in one step per round; more gathers meanwhile."""
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                for attempt in range(_SETTLE_TRIES):
                    try:
                        await self.job.transitions.settle(self.pnid, batch, self.job.limits)
                        break
                    except Exception:
                        if attempt == _SETTLE_TRIES - 1:
                            # The messages stay `sending` until their claim deadline, then
                            # are reconciled like a crashed worker's.
                            log.exception("lane.settle_failed", messages=len(batch))
                            raise
                        await asyncio.sleep(0.1 * 2**attempt)
                self.report.settled += len(batch)
                self.settled.set()
        finally:
            self.settling = None
            self.settled.set()

    async def drain(self) -> None:
        """Wait for every send in flight and settle every outcome."""
        while self.in_flight or self.pending or self.settling is not None:
            if self.in_flight:
                await asyncio.gather(*self.in_flight, return_exceptions=True)
            if self.settling is not None:
                await asyncio.gather(self.settling, return_exceptions=True)
            elif self.pending:
                self.settling = asyncio.create_task(self._settle())
