"""The send job's logic: window, pause, Graph call, classification, and exactly one outcome.

arq calls ``send_message`` (see ``worker.runner``); this module holds what it does, with its
collaborators passed in, so it is tested against real Redis and the sandbox without arq's loop.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import structlog
from arq.worker import Retry
from pydantic import ValidationError
from redis.asyncio.client import Pipeline

from producer.request import SendRequest
from producer.status import FINAL_STATES, MessageState, MessageStatus
from producer.status_store import StatusStore
from worker.backoff import backoff_s, pair_backoff_s
from worker.dead_letters import DeadLetter, DeadLetterStore
from worker.error_table import Action, ErrorRule, Schedule, Suggestion, Throttle, rule_for
from worker.errors import GraphError, GraphTransportError
from worker.graph import GraphClient
from worker.limits import APP_SCOPE, RateLimiter
from worker.metrics import WorkerMetrics
from worker.ordering import ConversationOrder
from worker.pauses import Pause, PauseStore
from worker.pipelined import Pipelined
from worker.windows import WindowStore

__all__ = ["Deliverer", "DeliveryConfig"]

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
    order_recheck_s: float = 30.0
    reconcile_wait_s: float = 60.0
    reconcile_check_s: float = 2.0
    ambiguous_policy: Literal["resend", "dead_letter"] = "resend"
    slot_tries: int = 5
    # A job that crashed this many times (an exception, not a wait: a pause may last days)
    # is a bug or poisoned data; past it the message is dead-lettered instead of looping.
    max_job_errors: int = 50


class Deliverer:
    """Delivers one message per call and leaves it in exactly one recorded state."""

    def __init__(
        self,
        *,
        graph: GraphClient,
        statuses: StatusStore,
        windows: WindowStore,
        pauses: PauseStore,
        dead_letters: DeadLetterStore,
        order: ConversationOrder,
        limiter: RateLimiter,
        config: DeliveryConfig,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.graph = graph
        self.statuses = statuses
        self.windows = windows
        self.pauses = pauses
        self.dead_letters = dead_letters
        self.order = order
        self.limiter = limiter
        self.config = config
        self.metrics = metrics or WorkerMetrics()
        self._pipelined = Pipelined(statuses.redis)

    async def deliver(self, message_id: str, raw_request: dict[str, Any]) -> str:
        """Run one attempt; return the state reached, or raise arq's ``Retry`` to come back."""
        try:
            request = SendRequest.model_validate(raw_request)
        except ValidationError as exc:
            status = await self.statuses.get(message_id)
            if status is not None and status.state in FINAL_STATES:
                return await self._skip_final(message_id, status)
            # Only a producer of another version could enqueue this; keep it for an operator.
            error = {
                "code": "invalid_job",
                "title": "job payload failed validation",
                "details": str(exc),
            }
            return await self._dead(
                message_id,
                raw_request=raw_request,
                status=status,
                error=error,
                suggestion=Suggestion.FIX_REQUEST,
                hint="the queued request no longer validates: fix and requeue it",
            )
        pnid, wa_id = request.phone_number_id, request.wa_id
        status, earlier, pause, last_inbound = await self._read_checks(message_id, pnid, wa_id)
        if status is not None and status.state in FINAL_STATES:
            return await self._skip_final(message_id, status)
        if status is not None and status.job_errors >= self.config.max_job_errors:
            error = {
                "code": "too_many_errors",
                "title": f"the send job failed {status.job_errors} times with an exception",
            }
            return await self._dead(
                message_id,
                raw_request=raw_request,
                status=status,
                error=error,
                suggestion=Suggestion.CONTACT_SUPPORT,
                hint="waq kept failing on this message: check the worker logs (send.error)",
            )
        if status is not None and status.state is MessageState.SENDING:
            resend = await self._reconcile(message_id, raw_request, status)
            if resend is not None:
                return resend
        if earlier is not None:
            # Woken as soon as the earlier message is final; the delay is only a safety net.
            detail = f"waiting for {earlier}, earlier in this conversation"
            recheck_s = self.config.order_recheck_s * random.uniform(0.75, 1.25)  # noqa: S311
            await self._wait(message_id, status, detail, recheck_s)
        if pause is not None:
            await self._wait(
                message_id, status, f"number paused: {pause.reason}", self.config.pause_check_s
            )
        if not request.message.is_template and not self.windows.open_at(last_inbound):
            rule = rule_for(131047, http_status=400)
            return await self._dead(
                message_id,
                raw_request=raw_request,
                status=status,
                error=_CLOSED_WINDOW,
                suggestion=rule.suggestion,
                hint=rule.hint,
            )
        return await self._attempt(message_id, request, raw_request, status)

    async def _read_checks(
        self, message_id: str, pnid: str, wa_id: str
    ) -> tuple[MessageStatus | None, str | None, Pause | None, bytes | None]:
        """Status, the earlier message waited for, the number's pause, the last inbound time.

        One round trip for what would be four: the reads are independent, and the order
        script only drops heads that are already final.
        """

        async def fill(pipe: Pipeline) -> None:
            self.statuses.read_into(pipe, message_id)
            await self.order.waiting_for_into(pipe, pnid, wa_id, message_id)
            PauseStore.read_into(pipe, pnid)
            WindowStore.read_into(pipe, pnid, wa_id)

        raw, history, order, pause, last_inbound = await self._pipelined.execute(fill)
        return (
            StatusStore.parse(message_id, raw, history),
            ConversationOrder.parse_waiting_for(order),
            PauseStore.parse(pause),
            last_inbound,
        )

    async def _skip_final(self, message_id: str, status: MessageStatus) -> str:
        """Final already: a re-run after a crash, or a send reconciled by its status webhook."""
        pnid, to = status.phone_number_id, status.to
        if pnid and to:
            await self.order.done(pnid, to.removeprefix("+"), message_id)
        log.info("send.skipped", outcome=status.state.value, reason="already final")
        return status.state.value

    async def _reconcile(
        self, message_id: str, raw_request: dict[str, Any], status: MessageStatus
    ) -> str | None:
        """A send whose outcome is unknown (a crash mid-call, or no answer): never resend blindly.

        Meta echoes ``biz_opaque_callback_data`` (the message id) in every status webhook;
        the gateway records it, which makes the message final. Until ``reconcile_wait_s``
        after the send, wait for that. Then resend (the default), or dead-letter the message
        as ambiguous, by policy. Returns the final state when dead-lettered, else None.
        """
        unknown_for_s = time.time() - status.updated_at
        if unknown_for_s < self.config.reconcile_wait_s:
            log.info("send.reconciling", unknown_for_s=round(unknown_for_s, 1))
            raise Retry(defer=self.config.reconcile_check_s)
        if self.config.ambiguous_policy == "dead_letter":
            error = {
                "code": "ambiguous",
                "title": "outcome unknown",
                "details": f"no answer, no status webhook in {self.config.reconcile_wait_s:g} s",
            }
            return await self._dead(
                message_id,
                raw_request=raw_request,
                status=status,
                error=error,
                suggestion=Suggestion.RETRY_LATER,
                hint="it may or may not have reached the customer: check before requeueing",
            )
        log.warning(
            "send.reconcile_timeout", policy="resend", unknown_for_s=round(unknown_for_s, 1)
        )
        return None

    async def _outcome_unknown(
        self, message_id: str, attempt: int, error: dict[str, Any]
    ) -> NoReturn:
        """The request may have reached Meta: wait for its status webhook before any resend."""
        wait_s = self.config.reconcile_wait_s
        await self.statuses.record(
            message_id,
            MessageState.SENDING,
            attempt=attempt,
            count_attempt=True,
            error=error,
            detail=f"outcome unknown: waiting up to {wait_s:g} s for Meta's status webhook",
        )
        self.metrics.outcome("unknown", error.get("code"))
        log.warning("send.outcome", outcome="unknown", attempt=attempt, error=error)
        raise Retry(defer=self.config.reconcile_check_s)

    async def _take_slot(
        self, message_id: str, status: MessageStatus | None, pnid: str, wa_id: str
    ) -> None:
        """Sleep until this send's rate slot, or come back later without using an attempt."""
        slot = await self.limiter.wait_for_slot(pnid, wa_id, tries=self.config.slot_tries)
        if slot.granted:
            self.metrics.rate_limit_wait.observe(slot.wait_s)
        else:
            self.metrics.rate_limit_deferrals.labels(limit=slot.reason).inc()
            await self._wait(
                message_id, status, f"waiting for the {slot.reason} rate limit", slot.wait_s
            )

    async def _wait(
        self, message_id: str, status: MessageStatus | None, detail: str, defer_s: float
    ) -> NoReturn:
        """Come back later without using up an attempt; say why in the status.

        The record is skipped only when the status this run read is already this very wait
        (a backlog's jobs come back many times); any other state, ``sending`` of an unknown
        outcome that policy resends included, is moved back to ``queued``.
        """
        if status is None or status.state is not MessageState.QUEUED or status.detail != detail:
            await self.statuses.record(
                message_id,
                MessageState.QUEUED,
                detail=detail,
                next_attempt_at=time.time() + defer_s,
            )
        log.info("send.waiting", reason=detail, defer_s=round(defer_s, 3))
        raise Retry(defer=defer_s)

    async def _attempt(
        self,
        message_id: str,
        request: SendRequest,
        raw_request: dict[str, Any],
        status: MessageStatus | None,
    ) -> str:
        attempt = (status.attempts if status else 0) + 1
        body = request.graph_body(callback_data=message_id)
        # The slot comes first and `sending` right after it: `sending` means the request may
        # have left, and a re-run reconciles it instead of sending. A message recorded
        # `sending` before a slot that was then refused would sit there, unsent, and be
        # taken for an unknown outcome (held for the reconcile wait, then resent or
        # dead-lettered as ambiguous). The record costs one round trip between the slot and
        # the call, the same for every send, so the spacing at Meta holds.
        await self._take_slot(message_id, status, request.phone_number_id, request.wa_id)
        await self.statuses.record(message_id, MessageState.SENDING, attempt=attempt)
        started = time.perf_counter()
        try:
            result = await self.graph.send(request.phone_number_id, body)
        except GraphError as exc:
            self.metrics.graph_latency.labels(result="error").observe(time.perf_counter() - started)
            rule = rule_for(exc.meta_code, http_status=exc.http_status, subcode=exc.subcode)
            if rule.throttle is not Throttle.PAIR:  # Meta refused it: the customer got nothing
                await self.limiter.release_pair(request.phone_number_id, request.wa_id)
            return await self._failed(
                message_id,
                raw_request=raw_request,
                request=request,
                status=status,
                attempt=attempt,
                rule=rule,
                error=exc.as_dict(),
            )
        except GraphTransportError as exc:
            self.metrics.graph_latency.labels(result="transport").observe(
                time.perf_counter() - started
            )
            if exc.ambiguous:
                await self._outcome_unknown(message_id, attempt, exc.as_dict())
            await self.limiter.release_pair(request.phone_number_id, request.wa_id)
            rule = ErrorRule(Action.RETRY, Suggestion.RETRY_LATER, "no answer from the Graph API")
            return await self._failed(
                message_id,
                raw_request=raw_request,
                request=request,
                status=status,
                attempt=attempt,
                rule=rule,
                error=exc.as_dict(),
            )
        self.metrics.graph_latency.labels(result="ok").observe(time.perf_counter() - started)

        async def accepted(pipe: Pipeline) -> None:
            # One round trip: the outcome, then the next message of the conversation woken.
            await self.statuses.record(
                message_id, MessageState.ACCEPTED, attempt=attempt, wamid=result.wamid,
                count_attempt=True, pipe=pipe,
            )  # fmt: skip
            await self.order.done(request.phone_number_id, request.wa_id, message_id, pipe=pipe)

        await self._pipelined.execute(accepted)
        self.metrics.outcome("accepted")
        log.info("send.outcome", outcome="accepted", attempt=attempt, wamid=result.wamid)
        return MessageState.ACCEPTED.value

    async def _failed(
        self,
        message_id: str,
        *,
        raw_request: dict[str, Any],
        request: SendRequest,
        status: MessageStatus | None,
        attempt: int,
        rule: ErrorRule,
        error: dict[str, Any],
    ) -> str:
        if rule.throttle is not None:
            await self._throttled(
                message_id, request=request, status=status, attempt=attempt, rule=rule, error=error
            )
        if rule.action is Action.PAUSE:
            first = await self.pauses.pause(
                request.phone_number_id, reason=rule.hint, code=error.get("code")
            )
            if first:
                log.error("alert.number_paused", reason=rule.hint, error=error)
            self.metrics.outcome("paused", error.get("code"))
            # A pause is not the message's fault: the attempt is not counted.
            await self.statuses.record(
                message_id,
                MessageState.QUEUED,
                attempt=attempt - 1,
                count_attempt=True,
                detail=f"number paused: {rule.hint}",
                error=error,
                next_attempt_at=time.time() + self.config.pause_check_s,
            )
            raise Retry(defer=self.config.pause_check_s)
        if rule.action is Action.PERMANENT:
            return await self._dead(
                message_id,
                raw_request=raw_request,
                status=status,
                failed_attempt=attempt,
                error=error,
                suggestion=rule.suggestion,
                hint=rule.hint,
            )
        if attempt >= self.config.max_attempts:
            hint = f"gave up after {attempt} attempts: {rule.hint}"
            return await self._dead(
                message_id,
                raw_request=raw_request,
                status=status,
                failed_attempt=attempt,
                error=error,
                suggestion=rule.suggestion,
                hint=hint,
            )
        delay = self._delay(rule, attempt, message_id)
        self.metrics.outcome("retrying", error.get("code"))
        self.metrics.retries.labels(code=str(error.get("code"))).inc()
        await self.statuses.record(
            message_id,
            MessageState.RETRYING,
            attempt=attempt,
            count_attempt=True,
            detail=rule.hint,
            error=error,
            next_attempt_at=time.time() + delay,
        )
        log.info(
            "send.outcome",
            outcome="retrying",
            attempt=attempt,
            delay_s=round(delay, 3),
            error=error,
        )
        raise Retry(defer=delay)

    async def _throttled(
        self,
        message_id: str,
        *,
        request: SendRequest,
        status: MessageStatus | None,
        attempt: int,
        rule: ErrorRule,
        error: dict[str, Any],
    ) -> NoReturn:
        """Meta throttled: slow the scope down, come back; not held against the message."""
        self.metrics.outcome("throttled", error.get("code"))
        pnid, wa_id = request.phone_number_id, request.wa_id
        if rule.throttle is Throttle.PAIR:
            throttled = sum(
                1
                for e in (status.history if status else [])
                if (e.error or {}).get("code") == 131056
            )
            delay = pair_backoff_s(throttled + 1)
            await self.limiter.back_off_pair(pnid, wa_id, delay)
        else:
            scope = pnid if rule.throttle is Throttle.NUMBER else APP_SCOPE
            factor = await self.limiter.slow_down(scope)
            delay = max(rule.min_delay_s, 1.0)  # the slowed limiter spaces the retries
            log.warning("rate.slowdown", scope=scope, factor=factor, code=error.get("code"))
        await self.statuses.record(
            message_id, MessageState.QUEUED, attempt=attempt - 1, count_attempt=True, error=error,
            detail=f"throttled by Meta: {rule.hint}", next_attempt_at=time.time() + delay,
        )  # fmt: skip
        raise Retry(defer=delay)

    def _delay(self, rule: ErrorRule, attempt: int, message_id: str) -> float:
        if rule.schedule is Schedule.PAIR:
            delay = pair_backoff_s(attempt)
        else:
            delay = backoff_s(
                attempt, base_s=self.config.backoff_base_s, cap_s=self.config.backoff_cap_s
            )
        return max(delay, rule.min_delay_s)

    async def _dead(
        self,
        message_id: str,
        *,
        raw_request: dict[str, Any],
        status: MessageStatus | None,
        error: dict[str, Any],
        suggestion: Suggestion,
        hint: str,
        failed_attempt: int | None = None,
    ) -> str:
        """Dead-letter the message; ``failed_attempt`` is the call to Meta that just failed."""
        letter = DeadLetter.of(
            message_id,
            raw_request=raw_request,
            status=status,
            error=error,
            suggestion=suggestion,
            hint=hint,
            failed_attempt=failed_attempt,
        )
        await self.dead_letters.add(letter, attempts=failed_attempt)
        if letter.phone_number_id and letter.to:
            await self.order.done(letter.phone_number_id, letter.to.removeprefix("+"), message_id)
        self.metrics.outcome("dead", error.get("code"))
        log.warning(
            "send.outcome", outcome="dead", code=error.get("code"), suggestion=suggestion.value
        )
        return MessageState.DEAD.value
