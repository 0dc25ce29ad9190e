"""The operators' console in headless Chromium (Debian's package) through Playwright.

The scene is real: dead letters made by the pipeline, the gateway over HTTP, a worker in the
background for the health check, the sandbox as Meta. Screenshots go to
test-artifacts/console/. Without a Chromium the tests skip, unless WAQ_REQUIRE_BROWSER=1
(CI sets it), where a missing browser fails them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, async_playwright
from redis.asyncio import Redis

from gateway import GatewayConfig, create_app
from gateway.console_auth import COOKIE
from producer.broadcasts import Broadcasts, BroadcastSpec, Recipient
from sandbox import DEFAULT_PHONE_NUMBER_ID, BackgroundServer, SandboxClient, SandboxServer
from tests.receiver import ReceiverServer
from tests.support import CUSTOMER, STRANGER, Pipeline
from tests.test_dlq import store_for
from tests.test_operator_reads import seed
from worker.subscriptions import SubscriptionSpec, SubscriptionStore
from worker.webhook_sender import WebhookConfig

ADMIN_KEY = "test-admin-key"
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts" / "console"
LATE = "+16505550199"  # another customer whose window closed
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    found = os.environ.get("WAQ_CHROMIUM") or shutil.which("chromium")
    return found or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def console_server(redis_url: str, sandbox_server: SandboxServer) -> Iterator[BackgroundServer]:
    """A gateway with an admin key, on the session's Valkey and sandbox."""
    config = GatewayConfig(
        redis_url=redis_url,
        admin_keys=(ADMIN_KEY,),
        default_phone_number_id=DEFAULT_PHONE_NUMBER_ID,
        graph_base_url=sandbox_server.url,
        health_timeout_s=8,
    )
    with BackgroundServer(create_app(config)) as server:
        yield server


@pytest.fixture
async def page(console_server: BackgroundServer) -> AsyncIterator[Page]:
    """A fresh headless Chromium page, not yet signed in."""
    executable = chromium_path()
    if executable is None:
        if os.environ.get("WAQ_REQUIRE_BROWSER") == "1":
            pytest.fail("WAQ_REQUIRE_BROWSER=1 but no chromium on PATH (apt install chromium)")
        pytest.skip("no chromium on PATH (apt install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        context = await browser.new_context(
            base_url=console_server.url, viewport={"width": 1280, "height": 800}
        )
        context.set_default_timeout(8_000)
        try:
            yield await context.new_page()
        finally:
            await browser.close()


async def sign_in(page: Page) -> None:
    await page.goto("/console/dead-letters")
    await page.fill("input[name=admin_key]", ADMIN_KEY)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/console/dead-letters")


async def shot(page: Page, name: str, *, full_page: bool = True) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


async def test_sign_in_is_required_and_checks_the_key(page: Page) -> None:
    """A page without a session redirects to sign-in; a wrong key is refused with a reason."""
    await page.goto("/console/numbers")
    assert "/console/login" in page.url
    await shot(page, "00-sign-in")
    await page.fill("input[name=admin_key]", "not-the-key")
    await page.click("button[type=submit]")
    assert "not one of WAQ_ADMIN_KEYS" in await page.inner_text("[role=alert]")
    await page.fill("input[name=admin_key]", ADMIN_KEY)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/console/numbers")  # back where the operator was going


async def test_drain_131047s_by_filter_requeue_and_template(
    page: Page, pipeline: Pipeline, sandbox: SandboxClient
) -> None:
    """Filter by code, look at one, requeue after the customer wrote back, rewrite another as
    a template, purge a wrong number: each confirmed, each entry gone, each message delivered."""
    await sandbox.set_recipient("16505550000", registered=False)
    first = await pipeline.send(to=STRANGER, message={"type": "text", "text": {"body": "one"}})
    second = await pipeline.send(to=STRANGER, message={"type": "text", "text": {"body": "two"}})
    late = await pipeline.send(to=LATE, message={"type": "text", "text": {"body": "Your order"}})
    await pipeline.customer_writes(sandbox, "+16505550000")
    wrong = await pipeline.send(to="+16505550000")
    await pipeline.run_worker()
    assert await pipeline.dead_letters.count() == 4

    await sign_in(page)
    assert "Dead letters (4)" in await page.inner_text("h1")
    await shot(page, "01-dead-letters")

    await page.click("#codes a[data-code='131047']")
    await page.wait_for_url("**code=131047**")
    rows = page.locator("#letters tbody tr")
    assert await rows.count() == 3
    assert "3 matches" in await page.inner_text("#matching")
    await shot(page, "02-filtered-131047")

    await page.click(f"a[href='/console/dead-letters/{first.message_id}']")
    assert "send_template" in await page.inner_text("#hint")
    assert '"body": "one"' in await page.inner_text("#request")
    await shot(page, "03-detail")

    # The customer wrote back: their two messages can go as they were.
    await pipeline.customer_writes(sandbox, STRANGER)
    await page.goto(f"/console/dead-letters?code=131047&to={STRANGER.lstrip('+')}")
    await page.click("#bulk button[value=requeue]")
    assert "Requeue 2 dead letters?" in await page.inner_text("h1")
    assert await page.locator("#plan tbody tr").count() == 2
    await shot(page, "04-confirm-requeue")
    await page.click("#apply button[type=submit]")
    assert "Requeued 2." in await page.inner_text("[role=status]")
    await shot(page, "05-requeued")
    assert await pipeline.dead_letters.get(first.message_id) is None
    assert await pipeline.dead_letters.get(second.message_id) is None

    # The other customer did not: send an approved template carrying the original text.
    await page.goto(f"/console/dead-letters/{late.message_id}")
    await page.fill("input[name=template]", "waq_followup")
    await page.fill("input[name=language]", "en")
    await page.click("button[value=requeue-template]")
    assert "sent as template waq_followup with ['Your order']" in await page.inner_text("#plan")
    await page.click("#apply button[type=submit]")
    assert "Requeued as template 1." in await page.inner_text("[role=status]")

    # The unregistered number: nothing to send; purge it.
    await page.goto(f"/console/dead-letters/{wrong.message_id}")
    assert "131026" in await page.inner_text("#error")
    await page.click("button[value=purge]")
    assert "gone for good" in await page.inner_text("main")
    await page.click("#apply button[type=submit]")
    assert "Purged 1." in await page.inner_text("[role=status]")
    assert "Dead letters (0)" in await page.inner_text("h1")

    await pipeline.run_worker()
    for message_id in (first.message_id, second.message_id, late.message_id):
        assert (await pipeline.status(message_id)).state.value == "accepted"
    ledger = await sandbox.ledger()
    sent = {entry["body"]["to"]: entry["body"] for entry in ledger}
    assert sorted(e["body"]["text"]["body"] for e in ledger if e["body"]["to"] == STRANGER) == [
        "one",
        "two",
    ]
    assert sent[LATE]["template"]["components"][0]["parameters"][0]["text"] == "Your order"


async def test_pause_and_resume_a_number(page: Page, pipeline: Pipeline) -> None:
    """The numbers page pauses a number with a reason (after a confirm dialog), then resumes it."""
    await pipeline.send(to=CUSTOMER)
    await sign_in(page)
    await page.goto("/console/numbers")
    row = page.locator(f"#numbers tr[data-number='{DEFAULT_PHONE_NUMBER_ID}']")
    assert "sending" in await row.inner_text()
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await row.locator("input[name=reason]").fill("template review")
    await row.locator("button").click()
    await page.wait_for_selector("[role=status]")
    assert "paused" in await row.inner_text()
    assert "template review" in await row.inner_text()
    pause = await pipeline.pauses.get(DEFAULT_PHONE_NUMBER_ID)
    assert pause is not None
    assert pause.by == "operator"
    await shot(page, "06-numbers-paused")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await row.locator("button").click()
    await page.wait_for_selector("text=resumed")
    assert await pipeline.pauses.get(DEFAULT_PHONE_NUMBER_ID) is None


async def test_a_failing_subscription_is_seen_and_replayed_from_the_console(
    page: Page,
    pipeline: Pipeline,
    receiver_server: ReceiverServer,
    start_worker: Callable[..., Awaitable[None]],
) -> None:
    """A receiver down past the retries: the webhooks page shows the subscription paused with
    the reason, the failed attempts and the dead letters; once it is back, Replay delivers."""
    store = SubscriptionStore(pipeline.redis)
    made = await store.add(
        SubscriptionSpec(url=receiver_server.events_url, types=["message.queued"])
    )
    receiver = receiver_server.receiver
    receiver.secrets = [made.secret.get_secret_value()]
    receiver.behaviour = "down"
    await start_worker(webhooks=WebhookConfig(timeout_s=0.4, retry_schedule_s=(0.05,)))
    queued = await pipeline.send(to=CUSTOMER)
    for _ in range(100):
        if (await store.state(made.id)).state == "paused":
            break
        await asyncio.sleep(0.05)
    await sign_in(page)
    await page.goto("/console/webhooks")
    section = page.locator(f"section[data-subscription='{made.id}']")
    text = await section.inner_text()
    assert "paused" in text
    assert "not delivered after 2 attempts" in text
    assert "503" in text
    assert "Replay 1 dead letters" in text
    await shot(page, "07-webhooks-paused")
    receiver.behaviour = "ok"
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await section.locator("button", has_text="Replay").click()
    await page.wait_for_selector("[role=status]")
    assert "Replaying 1 events" in await page.inner_text("[role=status]")
    for _ in range(100):
        if receiver.unique_events():
            break
        await asyncio.sleep(0.05)
    [event] = receiver.unique_events().values()
    assert event["data"]["message_id"] == queued.message_id


async def test_a_broadcast_is_watched_and_cancelled_from_the_console(
    page: Page, pipeline: Pipeline, sandbox: SandboxClient
) -> None:
    """The broadcasts page charts a broadcast's funnel; Cancel (after a confirm) cancels its
    unsent messages, and the chart says how many."""
    recipients = [Recipient(to=f"+1650554{i:04d}") for i in range(5)]
    made, _ = await Broadcasts(pipeline.producer).create(
        BroadcastSpec(
            phone_number_id=DEFAULT_PHONE_NUMBER_ID,
            template="hello_world",
            recipients=recipients,
            name="spring sale",
        )
    )
    await sign_in(page)
    await page.goto("/console/broadcasts")
    section = page.locator(f"section[data-broadcast='{made.id}']")
    assert "spring sale" in await section.inner_text()
    assert await section.locator("text[data-step='queued']").text_content() == "5"
    await shot(page, "08-broadcast")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await section.locator("button", has_text="Cancel").click()
    await page.wait_for_selector("[role=status]")
    assert "5 unsent messages cancelled" in await page.inner_text("[role=status]")
    section = page.locator(f"section[data-broadcast='{made.id}']")
    assert await section.locator("text[data-step='cancelled']").text_content() == "5"
    assert await sandbox.ledger() == []


async def test_health_check_then_a_test_message(
    page: Page, pipeline: Pipeline, sandbox: SandboxClient, running_worker: None
) -> None:
    """Pick the configuration, run the check, then send a test message to a customer who wrote
    in (suggested on the page) and read the result; a stranger's fails with the reason."""
    await pipeline.customer_writes(sandbox, CUSTOMER)
    await sign_in(page)
    await page.goto("/console/health")
    await page.select_option("select[name=phone_number_id]", DEFAULT_PHONE_NUMBER_ID)
    await page.click("#pick button[type=submit]")
    assert (await page.inner_text("#verdict")) in {"HEALTHY", "DEGRADED"}
    assert "ok" in await page.inner_text("#checks tr[data-check='phone_number_access']")
    assert CUSTOMER in await page.inner_text("#test")  # wrote in recently
    await page.fill("#test input[name=to]", CUSTOMER)
    await page.click("#test button[type=submit]")
    result = await page.inner_text("#test-result")
    assert "Meta accepted the test message" in result
    await shot(page, "07-health-test-message")
    await page.fill("#test input[name=to]", STRANGER)
    await page.click("#test button[type=submit]")
    assert "window is closed" in await page.inner_text("#test-result")


async def test_forms_without_the_session_token_are_refused(
    console_server: BackgroundServer, pipeline: Pipeline
) -> None:
    """A POST with the session cookie but a wrong CSRF token changes nothing (403)."""
    await pipeline.send(to=STRANGER)
    await pipeline.run_worker()
    async with httpx.AsyncClient(base_url=console_server.url) as client:
        signed = await client.post("/console/login", data={"admin_key": ADMIN_KEY})
        assert signed.status_code == 303
        forged = await client.post(
            "/console/dead-letters/apply",
            data={"action": "purge", "csrf": "forged", "code": "131047"},
        )
    assert forged.status_code == 403
    assert forged.json()["error"] == "csrf_failed"
    assert await pipeline.dead_letters.count() == 1


async def test_failed_sign_ins_are_throttled(
    console_server: BackgroundServer, redis: Redis
) -> None:
    """Five wrong keys from one client, then even the right key waits: 429 with Retry-After
    (50 wrong keys took 70 ms before, with no limit)."""
    async with httpx.AsyncClient(base_url=console_server.url) as client:
        for _ in range(5):
            wrong = await client.post("/console/login", data={"admin_key": "guess"})
            assert wrong.status_code == 401
        throttled = await client.post("/console/login", data={"admin_key": ADMIN_KEY})
    assert throttled.status_code == 429
    assert 0 < int(throttled.headers["retry-after"]) <= 300
    assert "Too many failed sign-ins" in throttled.text
    assert COOKIE not in throttled.cookies


async def test_signing_out_ends_the_session_for_every_copy_of_the_cookie(
    console_server: BackgroundServer, redis: Redis
) -> None:
    """A cookie copied before sign-out no longer opens a page after it."""
    async with httpx.AsyncClient(base_url=console_server.url) as client:
        signed = await client.post("/console/login", data={"admin_key": ADMIN_KEY})
        cookie = signed.cookies[COOKIE]
        page = await client.get("/console/numbers")
        assert page.status_code == 200
        csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        assert (await client.post("/console/logout", data={"csrf": csrf})).status_code == 303
    async with httpx.AsyncClient(base_url=console_server.url, cookies={COOKIE: cookie}) as copy:
        after = await copy.get("/console/numbers")
    assert after.status_code == 303
    assert "/console/login" in after.headers["location"]


async def test_removing_an_admin_key_ends_its_sessions(
    console_server: BackgroundServer, redis_url: str, redis: Redis,
    sandbox_server: SandboxServer,
) -> None:  # fmt: skip
    """The same Redis behind a gateway whose WAQ_ADMIN_KEYS no longer holds the key the
    session was opened with: the cookie is refused there."""
    async with httpx.AsyncClient(base_url=console_server.url) as client:
        cookie = (await client.post("/console/login", data={"admin_key": ADMIN_KEY})).cookies[
            COOKIE
        ]
    rotated = GatewayConfig(
        redis_url=redis_url, admin_keys=("a-new-key",), graph_base_url=sandbox_server.url
    )
    with BackgroundServer(create_app(rotated)) as server:
        async with httpx.AsyncClient(base_url=server.url, cookies={COOKIE: cookie}) as client:
            refused = await client.get("/console/numbers")
    assert refused.status_code == 303
    assert "/console/login" in refused.headers["location"]


async def test_search_leads_to_a_message_and_its_whole_timeline(
    page: Page, pipeline: Pipeline, sandbox: SandboxClient
) -> None:
    """The header's search finds a message by its id, wamid, phone number or idempotency
    key; its page shows every step from queued to accepted, the request, and for a dead
    message the error and a way to its dead letter."""
    await pipeline.customer_writes(sandbox, CUSTOMER)
    sent = await pipeline.send(to=CUSTOMER, idempotency_key="order-1187-shipped")
    dead = await pipeline.send(to=STRANGER)
    await pipeline.run_worker()
    status = await pipeline.status(sent.message_id)
    assert status.wamid is not None

    await sign_in(page)
    for query in (sent.message_id, status.wamid, "order-1187-shipped", "+1 650 555 1234"):
        await page.fill("header input[name=q]", query)
        await page.press("header input[name=q]", "Enter")
        await page.wait_for_url(f"**/console/messages/{sent.message_id}")
    assert CUSTOMER == "+16505551234"
    assert await page.inner_text("#state") == "accepted"
    steps = await page.locator("#timeline tbody tr td:nth-child(2)").all_inner_texts()
    assert steps[0] == "queued"
    assert steps[-1] == "accepted"
    assert "sending" in steps
    assert '"body"' in await page.inner_text("#request")
    # Times are shown in the browser's zone, the UTC original kept in the tooltip.
    first_time = page.locator("#timeline time").first
    assert await first_time.get_attribute("data-local") == "1"
    assert (await first_time.get_attribute("title") or "").endswith(" UTC")
    await shot(page, "09-message-timeline")

    await page.fill("header input[name=q]", STRANGER)
    await page.press("header input[name=q]", "Enter")
    await page.wait_for_url(f"**/console/messages/{dead.message_id}")
    assert "131047" in await page.inner_text("#dead-letter")
    await page.fill("header input[name=q]", "no-such-key")
    await page.press("header input[name=q]", "Enter")
    await page.wait_for_url("**/console/search?q=no-such-key")
    assert "idempotency key: 0 found" in await page.inner_text("#found-as")
    await pipeline.send(to=CUSTOMER)  # a second message to the customer: a list, not a page
    await page.fill("header input[name=q]", CUSTOMER)
    await page.press("header input[name=q]", "Enter")
    await page.wait_for_url("**/console/search?q=**")
    assert await page.locator("#results tbody tr").count() == 2
    await shot(page, "13-search-results")


async def test_the_overview_charts_a_short_run_and_refreshes_itself(
    page: Page, pipeline: Pipeline, sandbox: SandboxClient
) -> None:
    """After a short run the overview's figures and charts have data (sends per number
    against the limit, outcomes, dead letters by code, depth, latency), and the page
    refreshes itself without a reload."""
    await pipeline.customer_writes(sandbox, CUSTOMER)
    for _ in range(5):
        await pipeline.send(to=CUSTOMER)
    await pipeline.send(to=STRANGER)
    await pipeline.run_worker()
    await sign_in(page)
    await page.goto("/console")
    await page.wait_for_url("**/console/overview")
    assert await page.inner_text("[data-figure=dead_letters]") == "1"
    for chart in ("chart-sends", "chart-outcomes", "chart-dead", "chart-latency", "chart-depth"):
        points = await page.get_attribute(f"#{chart}", "data-points")
        assert points is not None, chart
        if chart != "chart-depth":  # depth: a sweep wrote it (0 once the run ended)
            assert int(points) > 0, chart
    assert "limit" in (await page.inner_html("#chart-sends"))
    await shot(page, "10-overview")
    await page.wait_for_function(
        "document.getElementById('refreshed').textContent.startsWith('live, updated')",
        timeout=8000,
    )
    assert await page.inner_text("[data-figure=dead_letters]") == "1"


async def test_dead_letters_page_through_a_large_queue(page: Page, redis: Redis) -> None:
    """5,000 entries: 100 a page with the exact count; "Older" continues where the page
    ended, and a filter pages its own index."""
    store = store_for(redis)
    await seed(store, 5000, at=time.time())
    await sign_in(page)
    assert "Dead letters (5000)" in await page.inner_text("h1")
    assert "5000 matches" in await page.inner_text("#matching")
    first = await page.locator("#letters tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.id)"
    )
    await page.click("#next")
    second = await page.locator("#letters tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.id)"
    )
    assert len(first) == len(second) == 100
    assert not set(first) & set(second)
    assert [x.id for x in (await store.page(limit=200)).letters] == first + second
    await page.goto("/console/dead-letters?code=131026")
    assert "1667 matches" in await page.inner_text("#matching")
    await shot(page, "11-dead-letters-paged", full_page=False)  # 100 rows: the top tells
