"""One claimed message's send, and what became of it, returned as a value.

The lane job (``worker.lane``) claims a batch and hands each message here; ``Delivery``
makes the Graph call, classifies the answer through the error table, applies the limiter's
and the pause store's reactions (those are about the number, not the message), and returns
the message's ``Outcome``. It never writes the message's record: the lane job settles the
whole batch's outcomes in one step (``producer.transitions``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from producer.recipient import wa_id_of
from producer.request import graph_body_of
from producer.status import MessageState
from producer.status_store import StatusStore
from producer.transitions import Claimed, Outcome
from worker.backoff import backoff_s, pair_backoff_s
from worker.dead_letters import DeadLetter
from worker.error_table import Action, ErrorRule, Schedule, Suggestion, Throttle, rule_for
from worker.errors import GraphError, GraphTransportError
from worker.graph import GraphClient
from worker.limits import APP_SCOPE, RateLimiter
from worker.metrics import WorkerMetrics
from worker.pauses import PauseStore

__all__ = ["Delivery", "DeliveryConfig"]

log = structlog.get_logger("waq.worker")

_CLOSED_WINDOW = {
    "code": 131047,
    "title": "Re-engagement message",
    "details": "No message from this customer in the last 24 hours (checked by waq before "
    "sending; Meta was not called).",
    "http_status": None,
}


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """The knobs of delivery, passed in from the settings by the entrypoint."""

    max_attempts: int = 6
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0
    pause_check_s: float = 30.0
    reconcile_wait_s: float = 60.0
    reconcile_check_s: float = 2.0
    ambiguous_policy: Literal["resend", "dead_letter"] = "resend"
    max_batch: int = 200
    """Messages one claim takes at most."""
    horizon_s: float = 0.5
    """How far ahead a claim books the number's rate slots."""
    slice_s: float = 5.0
    """A lane job yields after this long, so many lanes share few workers fairly."""


class Delivery:
    """Sends one claimed message and says what became of it."""

    def __init__(
        self,
        *,
        graph: GraphClient,
        statuses: StatusStore,
        pauses: PauseStore,
        limiter: RateLimiter,
        config: DeliveryConfig,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.graph = graph
        self.statuses = statuses
        self.pauses = pauses
        self.limiter = limiter
        self.config = config
        self.metrics = metrics or WorkerMetrics()

    async def send(self, phone_number_id: str, claimed: Claimed) -> Outcome:
        """Make the Graph call (the slot has come) and classify its answer."""
        message_id, attempt = claimed.message_id, claimed.attempt
        request = claimed.request
        to, message = request.get("to"), request.get("message")
        if not (isinstance(to, str) and isinstance(message, dict) and "type" in message):
            # The producer validated it; only a corrupt record, or a producer of another
            # version, gets here. Keep it for an operator.
            error = {"code": "invalid_job", "title": "queued request is malformed",
                     "details": "the stored request has no recipient or no message"}  # fmt: skip
            return await self.dead(
                claimed, error=error, suggestion=Suggestion.FIX_REQUEST,
                hint="the queued request no longer validates: fix and requeue it",
            )  # fmt: skip
        wa_id = wa_id_of(to)
        body = graph_body_of(request, callback_data=message_id)
        started, sent_at = time.perf_counter(), time.time()
        try:
            result = await self.graph.send(phone_number_id, body)
        except GraphError as exc:
            self.metrics.graph_latency.labels(result="error").observe(time.perf_counter() - started)
            rule = rule_for(exc.meta_code, http_status=exc.http_status, subcode=exc.subcode)
            if rule.throttle is not Throttle.PAIR:  # Meta refused it: the customer got nothing
                await self.limiter.release_pair(phone_number_id, wa_id)
            return await self._failed(
                phone_number_id, wa_id, claimed, rule, exc.as_dict(), sent_at=sent_at
            )
        except GraphTransportError as exc:
            self.metrics.graph_latency.labels(result="transport").observe(
                time.perf_counter() - started
            )
            if exc.ambiguous:
                return self._outcome_unknown(claimed, wa_id, exc.as_dict(), sent_at=sent_at)
            await self.limiter.release_pair(phone_number_id, wa_id)
            rule = ErrorRule(Action.RETRY, Suggestion.RETRY_LATER, "no answer from the Graph API")
            return await self._failed(
                phone_number_id, wa_id, claimed, rule, exc.as_dict(), sent_at=sent_at
            )
        self.metrics.graph_latency.labels(result="ok").observe(time.perf_counter() - started)
        self.metrics.outcome("accepted")
        log.debug("send.outcome", message_id=message_id, outcome="accepted", attempt=attempt,
                  wamid=result.wamid)  # fmt: skip
        return Outcome.accepted(
            message_id, wa_id, attempt=attempt, wamid=result.wamid, sent_at=sent_at
        )

    def missed_slot(self, claimed: Claimed) -> Outcome:
        """The event loop woke too late for the message's rate slot: back in line, free.

        Sent now, it would bunch with on-time sends and break Meta's per-second limit.
        """
        self.metrics.rate_limit_deferrals.labels(limit="missed").inc()
        wa_id = str(claimed.request.get("to", "")).lstrip("+")
        return Outcome.retry(
            claimed.message_id, wa_id, state=MessageState.QUEUED, attempt=claimed.attempt,
            attempts=claimed.attempt - 1, due_s=0.0, detail="missed its rate slot: next one",
            unsent=True,
        )  # fmt: skip

    async def closed_window(self, claimed: Claimed) -> Outcome:
        """A free-form message to a customer whose window is shut: Meta is not called."""
        rule = rule_for(131047, http_status=400)
        return await self.dead(
            claimed, error=_CLOSED_WINDOW, suggestion=rule.suggestion, hint=rule.hint,
            failed_attempt=None,
        )  # fmt: skip

    async def ambiguous(self, claimed: Claimed) -> Outcome:
        """An unknown outcome past the reconcile wait, under the dead_letter policy."""
        wait_s = self.config.reconcile_wait_s
        error = {
            "code": "ambiguous",
            "title": "outcome unknown",
            "details": f"no answer, no status webhook in {wait_s:g} s",
        }
        return await self.dead(
            claimed, error=error, suggestion=Suggestion.RETRY_LATER,
            hint="it may or may not have reached the customer: check before requeueing",
        )  # fmt: skip

    def _outcome_unknown(
        self, claimed: Claimed, wa_id: str, error: dict[str, Any], *, sent_at: float
    ) -> Outcome:
        """The request may have reached Meta: wait for its status webhook before any resend."""
        wait_s = self.config.reconcile_wait_s
        self.metrics.outcome("unknown", error.get("code"))
        log.warning("send.outcome", message_id=claimed.message_id, outcome="unknown",
                    attempt=claimed.attempt, error=error)  # fmt: skip
        return Outcome.retry(
            claimed.message_id, wa_id, state=MessageState.SENDING, attempt=claimed.attempt,
            due_s=self.config.reconcile_check_s, error=error, sent_at=sent_at,
            detail=f"outcome unknown: waiting up to {wait_s:g} s for Meta's status webhook",
        )  # fmt: skip

    async def failed(
        self, phone_number_id: str, claimed: Claimed, rule: ErrorRule, error: dict[str, Any]
    ) -> Outcome:
        """A failed attempt the caller classified itself (a crash in waq, say)."""
        wa_id = str(claimed.request.get("to", "")).lstrip("+")
        return await self._failed(phone_number_id, wa_id, claimed, rule, error, sent_at=None)

    async def _failed(
        self,
        phone_number_id: str,
        wa_id: str,
        claimed: Claimed,
        rule: ErrorRule,
        error: dict[str, Any],
        *,
        sent_at: float | None,
    ) -> Outcome:
        message_id, attempt = claimed.message_id, claimed.attempt
        code = error.get("code")
        if rule.throttle is not None:
            return await self._throttled(
                phone_number_id, wa_id, claimed, rule, error, sent_at=sent_at
            )
        if rule.action is Action.PAUSE:
            if await self.pauses.pause(phone_number_id, reason=rule.hint, code=code):
                log.error("alert.number_paused", reason=rule.hint, error=error)
            self.metrics.outcome("paused", code)
            # A pause is not the message's fault: the attempt is not counted.
            return Outcome.retry(
                message_id, wa_id, state=MessageState.QUEUED, attempt=attempt,
                attempts=attempt - 1, due_s=self.config.pause_check_s, error=error,
                detail=f"number paused: {rule.hint}", sent_at=sent_at,
            )  # fmt: skip
        if rule.action is Action.PERMANENT:
            return await self.dead(
                claimed, error=error, suggestion=rule.suggestion, hint=rule.hint,
                failed_attempt=attempt, sent_at=sent_at,
            )  # fmt: skip
        if attempt >= self.config.max_attempts:
            return await self.dead(
                claimed, error=error, suggestion=rule.suggestion, failed_attempt=attempt,
                hint=f"gave up after {attempt} attempts: {rule.hint}", sent_at=sent_at,
            )  # fmt: skip
        delay = self._delay(rule, attempt)
        self.metrics.outcome("retrying", code)
        self.metrics.retries.labels(code=str(code)).inc()
        log.info("send.outcome", message_id=message_id, outcome="retrying", attempt=attempt,
                 delay_s=round(delay, 3), error=error)  # fmt: skip
        return Outcome.retry(
            message_id, wa_id, state=MessageState.RETRYING, attempt=attempt, due_s=delay,
            detail=rule.hint, error=error, sent_at=sent_at,
        )  # fmt: skip

    async def _throttled(
        self,
        phone_number_id: str,
        wa_id: str,
        claimed: Claimed,
        rule: ErrorRule,
        error: dict[str, Any],
        *,
        sent_at: float | None,
    ) -> Outcome:
        """Meta throttled: slow the scope down, come back; not held against the message."""
        self.metrics.outcome("throttled", error.get("code"))
        if rule.throttle is Throttle.PAIR:
            status = await self.statuses.get(claimed.message_id)
            throttled = sum(
                1
                for e in (status.history if status else [])
                if (e.error or {}).get("code") == 131056
            )
            delay = pair_backoff_s(throttled + 1)
            await self.limiter.back_off_pair(phone_number_id, wa_id, delay)
        else:
            scope = phone_number_id if rule.throttle is Throttle.NUMBER else APP_SCOPE
            factor = await self.limiter.slow_down(scope)
            delay = max(rule.min_delay_s, 1.0)  # the slowed limiter spaces the retries
            log.warning("rate.slowdown", scope=scope, factor=factor, code=error.get("code"))
        return Outcome.retry(
            claimed.message_id, wa_id, state=MessageState.QUEUED, attempt=claimed.attempt,
            attempts=claimed.attempt - 1, due_s=delay, error=error, sent_at=sent_at,
            detail=f"throttled by Meta: {rule.hint}",
        )  # fmt: skip

    def _delay(self, rule: ErrorRule, attempt: int) -> float:
        if rule.schedule is Schedule.PAIR:
            delay = pair_backoff_s(attempt)
        else:
            delay = backoff_s(
                attempt, base_s=self.config.backoff_base_s, cap_s=self.config.backoff_cap_s
            )
        return max(delay, rule.min_delay_s)

    async def dead(
        self,
        claimed: Claimed,
        *,
        error: dict[str, Any],
        suggestion: Suggestion,
        hint: str,
        failed_attempt: int | None = None,
        sent_at: float | None = None,
    ) -> Outcome:
        """The dead-letter outcome; ``failed_attempt`` is the call to Meta that just failed."""
        status = await self.statuses.get(claimed.message_id)
        letter = DeadLetter.of(
            claimed.message_id, raw_request=claimed.request, status=status, error=error,
            suggestion=suggestion, hint=hint, failed_attempt=failed_attempt,
        )  # fmt: skip
        self.metrics.outcome("dead", error.get("code"))
        log.warning("send.outcome", message_id=claimed.message_id, outcome="dead",
                    code=error.get("code"), suggestion=suggestion.value)  # fmt: skip
        return Outcome.dead(
            claimed.message_id, wa_id_of(letter.to) if letter.to else "",
            entry=letter.model_dump_json(), dead_at=letter.dead_at, detail=hint, error=error,
            attempts=failed_attempt, sent_at=sent_at,
        )  # fmt: skip
