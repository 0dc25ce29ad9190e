"""The operators' console at ``/console``: dead letters, numbers, broadcasts, webhooks, health.

Server-rendered Jinja pages and plain HTML forms, no front-end build. Every change to the
dead-letter queue goes through a confirmation page that lists what will move; the move itself
is the same per-entry script the CLI uses (``DeadLetterStore``), so a console action is as
crash-safe as ``waq dlq``.
"""

from __future__ import annotations

import functools
import hmac
import time
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from pydantic import BaseModel

from gateway.charts import overview_charts
from gateway.console_auth import (
    COOKIE,
    SESSION_S,
    ConsoleSession,
    ConsoleSessions,
    LoginRequired,
    SignInThrottled,
)
from gateway.errors import ApiError
from gateway.health import run_health_check
from gateway.state import GatewayState, gateway_state, state_of
from producer import keys
from producer.broadcasts import Broadcasts
from producer.errors import WaqError
from producer.recipient import normalize_recipient
from worker.dead_letters import DeadLetter, DeadLetterFilter, MoveResult
from worker.error_table import Suggestion
from worker.finder import find_messages
from worker.logs import format_age
from worker.overview import read_overview
from worker.pauses import PauseStore
from worker.stats import read_series
from worker.template_rewrite import TemplateRewrite

__all__ = ["console_router"]

State = Annotated[GatewayState, Depends(gateway_state)]
_PAGE_SIZE = 100


class Selection(BaseModel):
    """What an operator picked on the dead-letter page: ids, or a filter (carried in forms)."""

    ids: list[str] = []
    code: str = ""
    suggestion: str = ""
    phone_number_id: str = ""
    to: str = ""
    older_than_h: str = ""

    def as_filter(self) -> DeadLetterFilter:
        """The store's filter; an unparseable age is a 400 naming the field."""
        older = None
        if self.older_than_h:
            try:
                older = float(self.older_than_h) * 3600
            except ValueError:
                raise ApiError(
                    "older_than_h must be a number of hours", code="invalid_filter",
                    status_code=400, field="older_than_h",
                ) from None  # fmt: skip
        return DeadLetterFilter(
            ids=tuple(self.ids) if self.ids else None,
            code=self.code or None,
            suggestion=self.suggestion or None,
            phone_number_id=self.phone_number_id or None,
            to=self.to or None,
            older_than_s=older,
        )

    def query(self) -> str:
        """The filter as a query string (ids are not carried in links)."""
        fields = {name: getattr(self, name) for name in Selection.model_fields if name != "ids"}
        return urllib.parse.urlencode({k: v for k, v in fields.items() if v})


class DeadLetterAction(Selection):
    """A console form that moves dead letters: the selection, the action, its template."""

    action: str
    csrf: str
    until: float | None = None
    """When the confirmation was shown: the apply leaves entries that died after it."""
    template: str = ""
    language: str = "en_US"
    params: str = "{text}"

    def rewrite(self) -> TemplateRewrite | None:
        """The template to rewrite into (requeue-template), or None; 400 if it is not named."""
        return _rewrite(self.action, self.template, self.language, self.params)


class TestMessageForm(BaseModel):
    """The health page's test-message form."""

    phone_number_id: str
    to: str
    csrf: str
    text: str = "waq health check"


async def _session(request: Request) -> ConsoleSession:
    state = state_of(request)
    session = await ConsoleSessions(state.redis).read(
        request.cookies.get(COOKIE), state.config.admin_keys
    )
    if session is None:
        raise LoginRequired
    return session


Session = Annotated[ConsoleSession, Depends(_session)]


console_router = APIRouter(prefix="/console", include_in_schema=False)
"""The console's routes (the gateway app includes them)."""


@functools.cache
def _templates() -> Jinja2Templates:
    # Built on first render, not at import: no work at module level.
    templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
    templates.env.filters["age"] = lambda at: format_age(time.time() - at)
    templates.env.filters["when"] = _when
    templates.env.filters["when_ms"] = _when_ms
    templates.env.filters["plain"] = _plain
    return templates


def page(
    request: Request, name: str, session: ConsoleSession | None, status_code: int = 200,
    **context: Any,
) -> HTMLResponse:  # fmt: skip
    """Render a console page with the session's CSRF token."""
    return _templates().TemplateResponse(
        request,
        name,
        {"csrf": session.csrf if session else "", "signed_in": session is not None,
         **context},
        status_code=status_code,
    )  # fmt: skip


def check_csrf(session: ConsoleSession, given: str) -> None:
    if not session.csrf_ok(given):
        raise ApiError("the form's CSRF token is wrong", code="csrf_failed", status_code=403)


@console_router.get("/login")
async def login_form(request: Request, state: State, next: str = "/console") -> HTMLResponse:
    enabled = bool(state.config.admin_keys)
    return page(request, "login.html", None, enabled=enabled, next=_local(next), error=None)


@console_router.post("/login")
async def login(
    request: Request,
    state: State,
    admin_key: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/console",
) -> Response:
    sessions = ConsoleSessions(state.redis)
    client = request.client.host if request.client else "unknown"
    try:
        await sessions.check_throttle(client)
    except SignInThrottled as exc:
        refused = page(
            request, "login.html", None, status_code=429, enabled=bool(state.config.admin_keys),
            next=_local(next), error=f"Too many failed sign-ins: wait {exc.retry_after_s} s.",
        )  # fmt: skip
        refused.headers["Retry-After"] = str(exc.retry_after_s)
        return refused
    matching = [k for k in state.config.admin_keys if _same(admin_key, k)]
    if not matching:
        await sessions.failed(client)
        return page(
            request, "login.html", None, status_code=401, enabled=bool(state.config.admin_keys),
            next=_local(next), error="That admin key is not one of WAQ_ADMIN_KEYS.",
        )  # fmt: skip
    session = await sessions.issue(matching[0])
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(
        COOKIE, session.token, max_age=SESSION_S, httponly=True, samesite="strict",
        secure=request.url.scheme == "https", path="/console",
    )  # fmt: skip
    return response


@console_router.post("/logout")
async def logout(state: State, session: Session, csrf: Annotated[str, Form()]) -> Response:
    check_csrf(session, csrf)
    await ConsoleSessions(state.redis).revoke(session.token)  # the cookie is dead everywhere
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/console")
    return response


@console_router.get("")
async def home(session: Session) -> Response:
    return RedirectResponse("/console/overview", status_code=303)


@console_router.get("/overview")
async def overview(request: Request, state: State, session: Session) -> HTMLResponse:
    """The figures and the last hour's charts; the page refreshes them every 5 s."""
    return page(request, "overview.html", session, **await _live(state))


@console_router.get("/overview/live")
async def overview_live(request: Request, state: State, session: Session) -> HTMLResponse:
    """The overview's figures and charts alone, for the page's refresh."""
    return page(request, "overview_live.html", session, **await _live(state))


async def _live(state: GatewayState) -> dict[str, Any]:
    config = state.config
    figures = await read_overview(
        state.redis, queue_name=config.queue_name, default_mps=config.default_mps
    )
    series = await read_series(state.redis, default_mps=config.default_mps)
    return {
        "overview": figures,
        "charts": overview_charts(series),
        "width": series.width_s,
        "read_at": figures.read_at,
    }


@console_router.get("/dead-letters")
async def dead_letters(
    request: Request,
    *,
    state: State,
    session: Session,
    selection: Annotated[Selection, Query()],
    notice: str = "",
    cursor: str = "",
) -> HTMLResponse:
    """A page of the matching entries, newest first, and how many match: bounded reads."""
    selection.ids = []
    chosen = selection.as_filter()
    stats = await state.dead_letters.stats()
    try:
        found = await state.dead_letters.page(chosen, cursor=cursor or None, limit=_PAGE_SIZE)
    except WaqError as exc:
        raise ApiError(exc.detail, code="invalid_cursor", status_code=400, field="cursor") from None
    matching = await state.dead_letters.matching(chosen)
    return page(
        request, "dead_letters.html", session, stats=stats, letters=found.letters,
        next_cursor=found.next_cursor, first_page=not cursor, matching=matching,
        selection=selection, notice=notice, suggestions=[s.value for s in Suggestion],
        now=time.time(),
    )  # fmt: skip


@console_router.get("/search")
async def search(request: Request, state: State, session: Session, q: str = "") -> Response:
    """Find messages by id, wamid, phone number or idempotency key; one goes straight to it."""
    if not q.strip():
        return page(request, "search.html", session, query="", found=None, statuses=[])
    found = await find_messages(state.redis, q)
    if len(found.message_ids) == 1:
        return RedirectResponse(f"/console/messages/{found.message_ids[0]}", status_code=303)
    async with state.redis.pipeline(transaction=False) as pipe:  # one round trip for all
        for message_id in found.message_ids:
            state.statuses.read_into(pipe, message_id)
        answers = await pipe.execute()
    statuses = [
        status
        for message_id, raw, history in zip(
            found.message_ids, answers[::2], answers[1::2], strict=True
        )
        if (status := state.statuses.parse(message_id, raw, history)) is not None
    ]
    return page(
        request, "search.html", session, query=q.strip(), found=found, statuses=statuses,
        recent=keys.RECIPIENT_RECENT,
    )  # fmt: skip


@console_router.get("/messages/{message_id}")
async def message(
    request: Request, state: State, session: Session, message_id: str
) -> HTMLResponse:
    """A message's state, its whole timeline, its request, and its dead letter if it has one."""
    status = await state.statuses.get(message_id)
    letter = await state.dead_letters.get(message_id)
    if status is None and letter is None:
        return page(
            request, "gone.html", session, status_code=404, message_id=message_id, kind="message"
        )
    timeline = status.history if status else letter.attempts if letter else []
    request_json = await state.statuses.request(message_id) or (letter.request if letter else None)
    return page(
        request, "message.html", session, message_id=message_id, status=status, letter=letter,
        timeline=sorted(timeline, key=lambda e: e.at), request_json=request_json,
    )  # fmt: skip


@console_router.get("/dead-letters/{message_id}")
async def dead_letter(
    request: Request, state: State, session: Session, message_id: str
) -> HTMLResponse:
    """One entry; its attempts are the message's whole history while its record lives."""
    letter = await state.dead_letters.get(message_id)
    if letter is None:
        return page(request, "gone.html", session, status_code=404, message_id=message_id)
    status = await state.statuses.get(message_id)
    timeline = sorted(status.history if status else letter.attempts, key=lambda e: e.at)
    return page(
        request, "dead_letter.html", session, letter=letter, timeline=timeline, now=time.time()
    )


@console_router.post("/dead-letters/confirm")
async def confirm(
    request: Request, state: State, session: Session, form: Annotated[DeadLetterAction, Form()]
) -> HTMLResponse:
    """What the action will do: the count, the first page's plans; nothing moves yet."""
    check_csrf(session, form.csrf)
    rewrite = form.rewrite()
    form.until = time.time()  # the apply acts on what had died by now, not on later entries
    chosen = form.as_filter()
    first = await state.dead_letters.page(chosen, limit=_PAGE_SIZE)
    matching = await state.dead_letters.matching(chosen, until=form.until)
    plans = {letter.id: _plan(form.action, letter, rewrite) for letter in first.letters}
    return page(
        request, "confirm.html", session, form=form, letters=first.letters,
        total=matching.count, exact=matching.exact, plans=plans,
    )  # fmt: skip


@console_router.post("/dead-letters/apply")
async def apply(
    state: State, session: Session, form: Annotated[DeadLetterAction, Form()]
) -> Response:
    """Move what the confirmation showed, streamed in chunks (constant memory)."""
    check_csrf(session, form.csrf)
    rewrite = form.rewrite()
    note = f"from the console, as template {form.template}" if rewrite else "from the console"
    report = await state.dead_letters.move_all(
        "purge" if form.action == "purge" else "requeue", form.as_filter(),
        until=form.until or time.time(), request_for=rewrite.request_for if rewrite else None,
        note=note,
    )  # fmt: skip
    outcome = dict(report.outcome)
    done = outcome.pop(MoveResult.OK.value, 0)
    verb = {"purge": "Purged", "requeue": "Requeued"}.get(form.action, "Requeued as template")
    notice = f"{verb} {done}." + (
        " Skipped " + ", ".join(f"{n} {why}" for why, n in sorted(outcome.items())) + "."
        if outcome
        else ""
    )
    query = urllib.parse.urlencode({"notice": notice})
    return RedirectResponse(f"/console/dead-letters?{query}", status_code=303)


@console_router.get("/numbers")
async def numbers(
    request: Request, state: State, session: Session, notice: str = ""
) -> HTMLResponse:
    overview = await read_overview(
        state.redis, queue_name=state.config.queue_name, default_mps=state.config.default_mps
    )
    return page(request, "numbers.html", session, overview=overview, notice=notice)


@console_router.post("/numbers/{phone_number_id}/pause")
async def pause(
    state: State,
    session: Session,
    phone_number_id: str,
    csrf: Annotated[str, Form()],
    reason: Annotated[str, Form()] = "",
) -> Response:
    check_csrf(session, csrf)
    paused = await PauseStore(state.redis).pause(
        phone_number_id, reason=reason or "paused from the console", code=None, by="operator"
    )
    notice = f"{phone_number_id} {'paused' if paused else 'was already paused'}."
    return RedirectResponse(
        "/console/numbers?" + urllib.parse.urlencode({"notice": notice}), status_code=303
    )


@console_router.post("/numbers/{phone_number_id}/resume")
async def resume(
    state: State, session: Session, phone_number_id: str, csrf: Annotated[str, Form()]
) -> Response:
    check_csrf(session, csrf)
    resumed = await PauseStore(state.redis).resume(phone_number_id, by="console")
    if resumed:  # its lane's job waits out the pause check: start one now
        await state.producer.transitions.wake(phone_number_id, replace=True)
    notice = f"{phone_number_id} {'resumed' if resumed else 'was not paused'}."
    return RedirectResponse(
        "/console/numbers?" + urllib.parse.urlencode({"notice": notice}), status_code=303
    )


@console_router.get("/broadcasts")
async def broadcasts(
    request: Request, state: State, session: Session, notice: str = ""
) -> HTMLResponse:
    found = await Broadcasts(state.producer).recent(20)
    return page(request, "broadcasts.html", session, broadcasts=found, notice=notice)


@console_router.post("/broadcasts/{broadcast_id}/{action}")
async def broadcast_action(
    state: State,
    session: Session,
    broadcast_id: str,
    action: str,
    csrf: Annotated[str, Form()],
) -> Response:
    """Pause, resume or cancel a broadcast, then back to the list with a notice."""
    check_csrf(session, csrf)
    store = Broadcasts(state.producer)
    if await store.get(broadcast_id) is None:
        raise ApiError(f"no broadcast {broadcast_id}", code="broadcast_not_found", status_code=404)
    if action == "pause":
        await store.pause(broadcast_id)
        notice = f"{broadcast_id} paused: its unsent messages wait."
    elif action == "resume":
        await store.resume(broadcast_id)
        notice = f"{broadcast_id} resumed."
    elif action == "cancel":
        notice = f"{broadcast_id}: {await store.cancel(broadcast_id)} unsent messages cancelled."
    else:
        raise ApiError(f"no action {action!r}", code="unknown_action", status_code=404)
    return RedirectResponse(
        "/console/broadcasts?" + urllib.parse.urlencode({"notice": notice}), status_code=303
    )


@console_router.get("/webhooks")
async def webhooks(
    request: Request, state: State, session: Session, notice: str = ""
) -> HTMLResponse:
    store = state.subscriptions
    rows = [
        {"s": s, "state": await store.state(s.id), "stats": await store.stats(s.id),
         "log": await store.log(s.id, 10), "dead": await store.dead(s.id, 20)}
        for s in await store.all()
    ]  # fmt: skip
    return page(request, "webhooks.html", session, rows=rows, notice=notice)


@console_router.post("/webhooks/{subscription_id}/{action}")
async def webhook_action(
    state: State,
    session: Session,
    subscription_id: str,
    action: str,
    csrf: Annotated[str, Form()],
) -> Response:
    """Test, pause, resume or replay a subscription, then back to the list with a notice."""
    check_csrf(session, csrf)
    store = state.subscriptions
    if await store.get(subscription_id) is None:
        raise ApiError(f"no webhook subscription {subscription_id}",
                       code="subscription_not_found", status_code=404)  # fmt: skip
    if action == "test":
        notice = f"Queued test event {await store.send_test(subscription_id)}."
    elif action == "pause":
        await store.pause(subscription_id, "paused from the console")
        notice = f"{subscription_id} paused; new events wait in its dead letters."
    elif action == "resume":
        await store.resume(subscription_id)
        notice = f"{subscription_id} resumed."
    elif action == "replay":
        notice = f"Replaying {await store.replay(subscription_id)} events to {subscription_id}."
    else:
        raise ApiError(f"no action {action!r}", code="unknown_action", status_code=404)
    return RedirectResponse(
        "/console/webhooks?" + urllib.parse.urlencode({"notice": notice}), status_code=303
    )


@console_router.get("/health")
async def health(
    request: Request, state: State, session: Session, phone_number_id: str = ""
) -> HTMLResponse:
    report = None
    if phone_number_id:
        report = await run_health_check(
            state.redis, state.producer, phone_number_id=phone_number_id,
            queue_name=state.config.queue_name, timeout_s=state.config.health_timeout_s,
        )  # fmt: skip
    return page(
        request, "health.html", session, report=report, phone_number_id=phone_number_id,
        configurations=await _configurations(state), recent=await _recent(state,
        phone_number_id), to="", text="waq health check", error=None,
    )  # fmt: skip


@console_router.post("/health/test")
async def health_test(
    request: Request, state: State, session: Session, form: Annotated[TestMessageForm, Form()]
) -> HTMLResponse:
    check_csrf(session, form.csrf)
    phone_number_id, to, text = form.phone_number_id, form.to, form.text
    error = None
    report = None
    try:
        recipient = normalize_recipient(to)
    except ValueError as exc:
        error = f"to: {exc}"
    else:
        report = await run_health_check(
            state.redis, state.producer, phone_number_id=phone_number_id,
            queue_name=state.config.queue_name, to=recipient, text=text or None,
            timeout_s=state.config.health_timeout_s,
        )  # fmt: skip
    return page(
        request, "health.html", session, report=report, phone_number_id=phone_number_id,
        configurations=await _configurations(state), recent=await _recent(state,
        phone_number_id), to=to, text=text, error=error,
        status_code=400 if error else 200,
    )  # fmt: skip


def _rewrite(action: str, template: str, language: str, params: str) -> TemplateRewrite | None:
    if action not in {"requeue", "requeue-template", "purge"}:
        raise ApiError(f"unknown action {action!r}", code="invalid_action", status_code=400)
    if action != "requeue-template":
        return None
    if not template.strip():
        raise ApiError(
            "name the approved template", code="invalid_request", status_code=400, field="template"
        )
    parameters = tuple(line.strip() for line in params.splitlines() if line.strip())
    return TemplateRewrite(name=template.strip(), language=language.strip(), parameters=parameters)


def _plan(action: str, letter: DeadLetter, rewrite: TemplateRewrite | None) -> str:
    """One line per entry on the confirmation page: what will happen to it."""
    if action == "purge":
        return "removed from the queue for good"
    try:
        request = rewrite.request_for(letter) if rewrite else letter.request
    except WaqError as exc:
        return f"stays: {exc.detail}"
    if rewrite is None:
        return "sent again as it was"
    template = request["message"]["template"]
    texts = [p["text"] for c in template.get("components", []) for p in c["parameters"]]
    return f"sent as template {template['name']} with {texts}"


async def _configurations(state: GatewayState) -> list[str]:
    """The numbers an operator may check: the default, and every number waq has seen."""
    overview = await read_overview(state.redis, queue_name=state.config.queue_name)
    seen = [n.phone_number_id for n in overview.numbers]
    default = state.config.default_phone_number_id
    return ([default] if default else []) + [n for n in seen if n != default]


async def _recent(state: GatewayState, phone_number_id: str) -> list[tuple[str, float]]:
    """Customers whose window with this number is open (they wrote in the last 24 h)."""
    if not phone_number_id:
        return []
    return await state.windows.recent(phone_number_id)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _local(target: str) -> str:
    """Only redirect within the console (an open redirect would help phishing)."""
    return target if target.startswith("/console") and "//" not in target else "/console"


def _plain(value: Any, name: str = "") -> str:
    """A detail as words: a dict as "level STANDARD", a time as its UTC date, yes and no."""
    if isinstance(value, dict):
        return ", ".join(f"{k.replace('_', ' ')} {_plain(v, k)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v, name) for v in value) or "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and name.endswith(("_at", "at")) and value > 1e9:
        return _when(float(value))
    return "-" if value is None else str(value)


def _when_ms(at: float) -> Markup:
    """A step's time to the millisecond (a message's steps are often within one second)."""
    text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d} UTC"
    return _time_tag(at, text)


def _when(at: float) -> Markup:
    """A time in UTC, marked up so the page shows it in the operator's own zone."""
    return _time_tag(at, time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)))


def _time_tag(at: float, text: str) -> Markup:
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"
    return Markup('<time datetime="{}">{}</time>').format(iso, text)
