"""``waq dlq``: read, count, requeue, rewrite as templates, purge and export dead letters.

Every command that changes the queue shows what it selected, takes ``--dry-run``, and asks
before it acts unless ``--yes``. Selecting the whole queue takes ``--all``, so a forgotten
filter cannot requeue everything. Each entry moves in one Redis script (see
``worker.dead_letters``): a command killed half way has moved some entries and not others.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Annotated, Literal

import typer
from redis.asyncio import Redis

from producer.errors import WaqError
from waq._command import dead_letter_store, open_redis, parse_age, run
from waq.settings import Settings
from worker.dead_letters import (
    DeadLetter,
    DeadLetterFilter,
    DeadLetterStats,
    DeadLetterStore,
    MoveReport,
    MoveResult,
    RequestFor,
)
from worker.logs import format_age, shorten_phone
from worker.template_rewrite import RewriteError, TemplateRewrite
from worker.windows import WindowStore

__all__ = ["dlq"]

dlq = typer.Typer(
    help="Dead letters: what failed and why; requeue, rewrite as a template, purge, export.",
    no_args_is_help=True,
)

Ids = Annotated[list[str] | None, typer.Argument(help="Dead letters by message id.")]
Code = Annotated[str | None, typer.Option(help="Only this error code, e.g. 131047.")]
Hint = Annotated[
    str | None,
    typer.Option("--suggestion", "--hint", help="Only this suggestion, e.g. send_template."),
]
Sender = Annotated[str | None, typer.Option(help="Only this sender (phone_number_id).")]
Recipient = Annotated[str | None, typer.Option("--to", help="Only this recipient (E.164).")]
OlderThan = Annotated[str | None, typer.Option(help="Only entries dead longer than this: 2h.")]
NewerThan = Annotated[str | None, typer.Option(help="Only entries dead for less than this: 15m.")]
All = Annotated[bool, typer.Option("--all", help="Select the whole queue (no filter).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would happen; change nothing.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
AsJson = Annotated[bool, typer.Option("--json", help="JSON instead of a table.")]


def _selection(
    *,
    ids: list[str] | None,
    code: str | None,
    suggestion: str | None,
    phone_number_id: str | None,
    to: str | None,
    older_than: str | None,
    newer_than: str | None,
) -> DeadLetterFilter:
    return DeadLetterFilter(
        ids=tuple(ids) if ids else None,
        code=code,
        suggestion=suggestion,
        phone_number_id=phone_number_id,
        to=to,
        older_than_s=parse_age(older_than),
        newer_than_s=parse_age(newer_than),
    )


@dlq.command("list")
def dlq_list(
    code: Code = None,
    suggestion: Hint = None,
    phone_number_id: Sender = None,
    to: Recipient = None,
    older_than: OlderThan = None,
    newer_than: NewerThan = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List dead letters, newest first."""
    selection = _selection(
        ids=None, code=code, suggestion=suggestion, phone_number_id=phone_number_id, to=to,
        older_than=older_than, newer_than=newer_than,
    )  # fmt: skip
    settings = Settings()

    async def read() -> list[DeadLetter]:
        redis = open_redis(settings)
        try:
            return await dead_letter_store(redis, settings).list(selection, limit=limit)
        finally:
            await redis.aclose()

    letters = run(read())
    if as_json:
        for letter in letters:
            typer.echo(letter.model_dump_json())
        return
    typer.echo(_table(letters))


@dlq.command("show")
def dlq_show(
    message_id: Annotated[str, typer.Argument(help="The dead letter's message id.")],
    as_json: AsJson = False,
) -> None:
    """Show one dead letter: request, attempts, final error, hint."""
    settings = Settings()

    async def read() -> DeadLetter | None:
        redis = open_redis(settings)
        try:
            return await dead_letter_store(redis, settings).get(message_id)
        finally:
            await redis.aclose()

    letter = run(read())
    if letter is None:
        typer.echo(f"error: no dead letter {message_id}", err=True)
        raise typer.Exit(1)
    typer.echo(letter.model_dump_json(indent=2) if as_json else _describe(letter))


@dlq.command("stats")
def dlq_stats(as_json: AsJson = False) -> None:
    """Count dead letters by error code, suggestion and sender; show the oldest."""
    settings = Settings()

    async def read() -> DeadLetterStats:
        redis = open_redis(settings)
        try:
            return await dead_letter_store(redis, settings).stats()
        finally:
            await redis.aclose()

    stats = run(read())
    if as_json:
        typer.echo(stats.model_dump_json(indent=2))
        return
    typer.echo(f"{stats.total} dead letters")
    if stats.oldest_dead_at is not None:
        typer.echo(f"oldest: {stats.oldest_id}, dead {_age(stats.oldest_dead_at)} ago")
    for title, group in (
        ("by code", stats.by_code),
        ("by suggestion", stats.by_suggestion),
        ("by sender", stats.by_phone_number),
    ):
        if group:
            typer.echo(f"{title}:")
            for name, count in group.items():
                typer.echo(f"  {name or '-':<24} {count:>8}")


@dlq.command("requeue")
def dlq_requeue(
    ids: Ids = None,
    code: Code = None,
    suggestion: Hint = None,
    phone_number_id: Sender = None,
    to: Recipient = None,
    older_than: OlderThan = None,
    newer_than: NewerThan = None,
    select_all: All = False,
    note: Annotated[str, typer.Option(help="Why, kept in each message's history.")] = "",
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Send dead letters again through the whole pipeline (window, limits, order), history kept.

    Fix the cause first: a 131047 sent again as free-form text fails again while the
    customer's window is closed (use requeue-template), a bad parameter fails again as is.
    """
    selection = _selection(
        ids=ids, code=code, suggestion=suggestion, phone_number_id=phone_number_id, to=to,
        older_than=older_than, newer_than=newer_than,
    )  # fmt: skip
    _bulk(
        "requeue",
        selection,
        select_all=select_all,
        dry_run=dry_run,
        yes=yes,
        action="requeue",
        note=note,
        warn=True,
    )


@dlq.command("requeue-template")
def dlq_requeue_template(
    ids: Ids = None,
    template: Annotated[str, typer.Option(help="The approved template's name.")] = "",
    language: Annotated[str, typer.Option(help="The template's language code.")] = "en_US",
    param: Annotated[
        list[str] | None,
        typer.Option(
            help="A body parameter, in order (repeat the option): {text} is the original "
            "text or caption, {to}, {id}, {metadata.KEY}; name=VALUE for a named parameter. "
            "Default: {text}."
        ),
    ] = None,
    no_params: Annotated[
        bool, typer.Option("--no-params", help="The template has no body parameters.")
    ] = False,
    code: Annotated[str, typer.Option(help="Only this error code ('any' for all).")] = "131047",
    suggestion: Hint = None,
    phone_number_id: Sender = None,
    to: Recipient = None,
    older_than: OlderThan = None,
    newer_than: NewerThan = None,
    select_all: All = False,
    note: Annotated[str, typer.Option(help="Why, kept in each message's history.")] = "",
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Send free-form messages that died outside the 24-hour window again, as a template.

    Each message keeps its id, recipient, sender and metadata; its body becomes the
    template, filled from the original (by default the original text is body parameter 1).
    """
    if not template:
        typer.echo("error: --template is required (an approved template's name)", err=True)
        raise typer.Exit(2)
    parameters = () if no_params else tuple(param or ("{text}",))
    rewrite = TemplateRewrite(name=template, language=language, parameters=parameters)
    selection = _selection(
        ids=ids, code=None if code == "any" else code, suggestion=suggestion,
        phone_number_id=phone_number_id, to=to, older_than=older_than, newer_than=newer_than,
    )  # fmt: skip
    label = f"template {template} ({language})" + (f": {note}" if note else "")

    def preview(letter: DeadLetter) -> str:
        try:
            filled = rewrite.request_for(letter)["message"]["template"]
        except RewriteError as exc:
            return f"cannot: {exc.detail}"
        params = filled.get("components", [{}])[0].get("parameters", [])
        return "params " + json.dumps([p["text"] for p in params], ensure_ascii=False)[:60]

    _bulk(
        "requeue-template",
        selection,
        select_all=select_all,
        dry_run=dry_run,
        yes=yes,
        action="requeue",
        request_for=rewrite.request_for,
        note=label,
        describe=preview,
    )


@dlq.command("purge")
def dlq_purge(
    ids: Ids = None,
    code: Code = None,
    suggestion: Hint = None,
    phone_number_id: Sender = None,
    to: Recipient = None,
    older_than: OlderThan = None,
    newer_than: NewerThan = None,
    select_all: All = False,
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Drop dead letters for good, with their messages' records. Export them first if in doubt.

    Services hear of each through a ``message.purged`` event.
    """
    selection = _selection(
        ids=ids, code=code, suggestion=suggestion, phone_number_id=phone_number_id, to=to,
        older_than=older_than, newer_than=newer_than,
    )  # fmt: skip
    _bulk(
        "purge",
        selection,
        select_all=select_all,
        dry_run=dry_run,
        yes=yes,
        action="purge",
    )


@dlq.command("reindex")
def dlq_reindex() -> None:
    """Rebuild the per-code, suggestion and sender indexes that filtered listings page through.

    Once, after upgrading from a waq without them; safe to run again.
    """
    settings = Settings()

    async def go() -> int:
        redis = open_redis(settings)
        try:
            return await dead_letter_store(redis, settings).reindex()
        finally:
            await redis.aclose()

    typer.echo(f"reindexed {run(go())} dead letters")


@dlq.command("export")
def dlq_export(
    ids: Ids = None,
    code: Code = None,
    suggestion: Hint = None,
    phone_number_id: Sender = None,
    to: Recipient = None,
    older_than: OlderThan = None,
    newer_than: NewerThan = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Write to this file (default stdout).")
    ] = None,
) -> None:
    """Write dead letters as JSON lines, newest first (nothing is removed)."""
    selection = _selection(
        ids=ids, code=code, suggestion=suggestion, phone_number_id=phone_number_id, to=to,
        older_than=older_than, newer_than=newer_than,
    )  # fmt: skip
    settings = Settings()

    async def export() -> int:
        redis = open_redis(settings)
        # One command, one task: a blocking write stalls nothing else.
        out = open(output, "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115, ASYNC230
        written = 0
        try:
            async for letter in dead_letter_store(redis, settings).scan(selection):
                out.write(letter.model_dump_json() + "\n")
                written += 1
        finally:
            if output:
                out.close()
            await redis.aclose()
        return written

    written = run(export())
    if output:
        typer.echo(f"exported {written} dead letters to {output}", err=True)


def _bulk(
    verb: str,
    selection: DeadLetterFilter,
    *,
    select_all: bool,
    dry_run: bool,
    yes: bool,
    action: Literal["requeue", "purge"],
    request_for: RequestFor | None = None,
    note: str = "",
    describe: Callable[[DeadLetter], str] | None = None,
    warn: bool = False,
) -> None:
    """Select, show, confirm, then stream the selection through the moves, with progress.

    The count comes from the indexes and the table from the first page, so selecting
    300,000 entries reads 20 of them; the move then takes what had died when the selection
    was shown, a pipelined chunk at a time.
    """
    if selection.is_empty and not select_all:
        typer.echo(
            f"error: {verb} needs message ids, a filter (--code, --suggestion, --to, ...) or --all",
            err=True,
        )
        raise typer.Exit(2)
    settings = Settings()

    async def go() -> MoveReport | None:
        redis = open_redis(settings)
        try:
            store = dead_letter_store(redis, settings)
            selected_at = time.time()
            first = await store.page(selection, limit=20)
            if not first.letters:
                typer.echo("no dead letters match")
                return None
            matching = await store.matching(selection)
            many = str(matching.count) if matching.exact else f"up to {matching.count}"
            typer.echo(_table(first.letters, describe=describe))
            if first.next_cursor is not None:
                more = matching.count - len(first.letters)
                typer.echo(f"... and {more if matching.exact else 'up to ' + str(more)} more")
            if warn and (warning := await _closed_windows(redis, settings, store, selection,
                                                           selected_at)):  # fmt: skip
                typer.echo(f"warning: {warning}", err=True)
            if dry_run:
                typer.echo(f"dry run: would {verb} {many} dead letters; nothing changed")
                return None
            if not yes and not typer.confirm(f"{verb} {many} dead letters?"):
                typer.echo("nothing changed")
                return None
            return await _move_all(verb, store, selection, selected_at, action, request_for, note)
        finally:
            await redis.aclose()

    report = run(go())
    if report is not None:
        outcome = dict(report.outcome)
        done = outcome.pop(MoveResult.OK.value, 0)
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(outcome.items()))
        typer.echo(f"{verb}: {done} done" + (f"; skipped {skipped}" if skipped else ""))
        if outcome:
            raise typer.Exit(1)


async def _move_all(
    verb: str,
    store: DeadLetterStore,
    selection: DeadLetterFilter,
    selected_at: float,
    action: Literal["requeue", "purge"],
    request_for: RequestFor | None,
    note: str,
) -> MoveReport:
    shown = time.monotonic()
    started = shown

    def refused(letter: DeadLetter, exc: WaqError) -> None:
        typer.echo(f"{letter.id}: not moved: {exc.detail}", err=True)

    def progress(report: MoveReport) -> None:
        nonlocal shown
        if report.seen % 1000 < 200 or time.monotonic() - shown > 2:
            shown = time.monotonic()
            rate = report.seen / max(shown - started, 1e-3)
            typer.echo(f"{verb}: {report.seen} ({rate:,.0f}/s)", err=True)

    return await store.move_all(
        action, selection, until=selected_at, request_for=request_for, note=note,
        on_refused=refused, on_progress=progress,
    )  # fmt: skip


async def _closed_windows(
    redis: Redis,
    settings: Settings,
    store: DeadLetterStore,
    selection: DeadLetterFilter,
    selected_at: float,
) -> str | None:
    """How many selected free-form messages go to customers whose window is closed.

    Streams the selection, one pipelined read of the windows per chunk.
    """
    windows = WindowStore(redis, margin_s=settings.window_margin_s)
    closed = 0
    chunk: list[DeadLetter] = []

    async def check() -> int:
        free = [x for x in chunk if x.type != "template"]
        opened = await windows.are_open((x.phone_number_id, x.to.removeprefix("+")) for x in free)
        return sum(not is_open for is_open in opened)

    async for letter in store.scan(selection, until=selected_at):
        chunk.append(letter)
        if len(chunk) == 200:
            closed += await check()
            chunk = []
    closed += await check()
    if not closed:
        return None
    return (
        f"{closed} of these are free-form messages to customers whose 24-hour window is "
        "closed: they will fail again with 131047 (use `waq dlq requeue-template`)"
    )


def _table(letters: list[DeadLetter], describe: Callable[[DeadLetter], str] | None = None) -> str:
    lines = [
        f"{'id':<35} {'dead':>6} {'sender':<16} {'to':<11} {'type':<9} {'code':<8} "
        f"{'suggestion':<15} {'plan' if describe else 'hint'}"
    ]
    lines += [
        f"{letter.id:<35} {_age(letter.dead_at):>6} {letter.phone_number_id:<16} "
        f"{shorten_phone(letter.to):<11} {letter.type:<9} {letter.code!s:<8} "
        f"{letter.suggestion.value:<15} {describe(letter) if describe else letter.hint}"
        for letter in letters
    ]
    return "\n".join(lines)


def _age(at: float) -> str:
    return format_age(time.time() - at)


def _describe(letter: DeadLetter) -> str:
    lines = [
        f"message    {letter.id}",
        f"from/to    {letter.phone_number_id} -> {letter.to} ({letter.type})",
        f"error      {letter.code}: {letter.error.get('title')}",
        f"details    {letter.error.get('details') or '-'}",
        f"suggestion {letter.suggestion.value}: {letter.hint}",
        f"dead       {_age(letter.dead_at)} ago",
        "attempts:",
    ]
    lines += [
        f"  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(e.at))}Z {e.state.value:<9} "
        f"{e.detail or ''}"
        for e in letter.attempts
    ]
    lines.append("request:\n" + json.dumps(letter.request, indent=2, ensure_ascii=False))
    return "\n".join(lines)
