"""The sandbox behaves like Meta: its rules, its webhooks and signatures, its reproducibility."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from producer import SendRequest
from sandbox import (
    DEFAULT_PHONE_NUMBER_ID,
    FakeMeta,
    MetaError,
    SandboxClient,
    SandboxConfig,
    SandboxServer,
)
from sandbox.config import WindowErrors
from sandbox.rules import check_body
from tests.conftest import APP_SECRET
from tests.support import ACCESS_TOKEN, WebhookSinkServer
from tests.test_contract import META_EXAMPLES

PNID = DEFAULT_PHONE_NUMBER_ID
CUSTOMER = "+16505551234"


class Clock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


def body(message: dict[str, Any] | None = None, to: str = CUSTOMER) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": to, **(message or META_EXAMPLES["text"])}


def meta_with_open_window(**config: Any) -> tuple[FakeMeta, Clock]:
    clock = Clock()
    meta = FakeMeta(SandboxConfig(**config), clock=clock)
    meta.receive(PNID, CUSTOMER, "hi", None)
    return meta, clock


def code_of(meta: FakeMeta, send_body: dict[str, Any], pnid: str = PNID) -> int | None:
    try:
        meta.send(pnid, send_body)
    except MetaError as exc:
        return exc.code
    return None


def test_window_closes_after_24_hours() -> None:
    """Free-form is accepted for 24 h after the customer's message, then 131047."""
    meta, clock = meta_with_open_window()
    assert code_of(meta, body()) is None
    clock.now += 24 * 3600 - 1
    assert code_of(meta, body()) is None
    clock.now += 2
    assert code_of(meta, body()) == 131047


def test_templates_go_outside_the_window() -> None:
    """A known template is accepted to a customer who never wrote."""
    meta = FakeMeta(SandboxConfig(), clock=Clock())
    assert code_of(meta, body(META_EXAMPLES["template"])) is None


def test_unknown_template_and_wrong_parameter_count() -> None:
    """132001 for a template Meta does not know; 132000 for the wrong number of body params."""
    meta = FakeMeta(SandboxConfig(), clock=Clock())
    unknown = copy.deepcopy(META_EXAMPLES["template"])
    unknown["template"]["name"] = "nope"
    assert code_of(meta, body(unknown)) == 132001
    short = copy.deepcopy(META_EXAMPLES["template"])
    short["template"]["components"][1]["parameters"].pop()
    assert code_of(meta, body(short)) == 132000


def test_unregistered_number_is_refused_with_131026() -> None:
    """Numbers configured as unregistered fail with 131026."""
    meta, _ = meta_with_open_window()
    meta.unregistered.add("16505551234")
    assert code_of(meta, body()) == 131026


def test_throughput_limit_per_number() -> None:
    """More than mps sends within one second give 130429; the next second accepts again."""
    meta, clock = meta_with_open_window(pair_burst=1000)
    meta.numbers[PNID].mps = 5
    assert [code_of(meta, body()) for _ in range(6)] == [None] * 5 + [130429]
    clock.now += 1.0
    assert code_of(meta, body()) is None
    assert meta.stats()["peak_per_second"][PNID] == 5


def test_pair_limit_allows_a_burst_of_45_then_one_per_6_seconds() -> None:
    """The 46th message in a burst to one user is 131056; 6 s later one more goes."""
    meta, clock = meta_with_open_window()
    codes = []
    for _ in range(46):
        clock.now += 0.02  # stay under 80 mps
        codes.append(code_of(meta, body()))
    assert codes == [None] * 45 + [131056]
    meta.receive(PNID, "+16505550000", "hi", None)
    assert code_of(meta, body(to="+16505550000")) is None  # other users are untouched
    clock.now += 6.0
    assert code_of(meta, body()) is None
    assert code_of(meta, body()) == 131056


def test_unknown_phone_number_id() -> None:
    """100 with subcode 33, as Meta answers for an object that does not exist."""
    meta = FakeMeta(SandboxConfig(), clock=Clock())
    with pytest.raises(MetaError) as info:
        meta.send("123", body())
    assert (info.value.code, info.value.subcode) == (100, 33)


def test_number_with_configured_account_error() -> None:
    """A number set to fail (a locked account) fails every send with that code."""
    meta, _ = meta_with_open_window()
    meta.numbers[PNID].send_error_code = 131031
    assert code_of(meta, body()) == 131031


@pytest.mark.parametrize("name", sorted(META_EXAMPLES))
def test_sandbox_accepts_what_the_contract_produces(name: str) -> None:
    """Every body the contract serialises passes the sandbox's independent rules."""
    request = SendRequest.model_validate(
        {"phone_number_id": PNID, "to": CUSTOMER, "message": META_EXAMPLES[name]}
    )
    check_body(request.graph_body(callback_data="m"))


WIRE_VIOLATIONS: list[tuple[dict[str, Any], int]] = [
    ({"type": "text", "text": {"body": "x" * 4097}}, 100),
    ({"type": "text", "text": {}}, 131008),
    ({"type": "image", "image": {"caption": "no source"}}, 131008),
    ({"type": "image", "image": {"id": "1", "link": "https://h/a.png"}}, 100),
    ({"type": "image", "image": {"id": "1", "caption": "c" * 1025}}, 100),
    ({"type": "audio", "audio": {"id": "1", "caption": "no"}}, 100),
    ({"type": "location", "location": {"latitude": 91, "longitude": 0}}, 131009),
    ({"type": "location", "location": {"latitude": 0}}, 131008),
    ({"type": "contacts", "contacts": []}, 100),
    (
        {
            "type": "reaction",
            "reaction": {"message_id": "w", "emoji": "x"},
            "context": {"message_id": "w"},
        },
        100,
    ),
    (
        {
            "type": "interactive",
            "interactive": {
                "type": "button",
                "body": {"text": "b"},
                "action": {"buttons": [{"type": "reply", "reply": {"id": "1", "title": "x" * 21}}]},
            },
        },
        100,
    ),
    (
        {
            "type": "interactive",
            "interactive": {
                "type": "list",
                "body": {"text": "b"},
                "action": {
                    "button": "Go",
                    "sections": [
                        {"title": "A", "rows": [{"id": f"a{i}", "title": "r"} for i in range(11)]}
                    ],
                },
            },
        },
        100,
    ),
    (
        {
            "type": "interactive",
            "interactive": {
                "type": "product_list",
                "header": {"type": "text", "text": "h"},
                "body": {"text": "b"},
                "action": {
                    "catalog_id": "1",
                    "sections": [
                        {
                            "title": "A",
                            "product_items": [{"product_retailer_id": f"s{i}"} for i in range(31)],
                        }
                    ],
                },
            },
        },
        100,
    ),
    (
        {
            "type": "interactive",
            "interactive": {
                "type": "location_request_message",
                "body": {"text": "b"},
                "footer": {"text": "f"},
                "action": {"name": "send_location"},
            },
        },
        100,
    ),
    (
        {"type": "interactive", "interactive": {"type": "product", "action": {"catalog_id": "1"}}},
        131008,
    ),
    (
        {
            "type": "interactive",
            "interactive": {
                "type": "flow",
                "body": {"text": "b"},
                "action": {
                    "name": "flow",
                    "parameters": {"flow_message_version": "3", "flow_cta": "Go"},
                },
            },
        },
        100,
    ),
    (
        {
            "type": "template",
            "template": {
                "name": "t",
                "language": {"code": "en"},
                "components": [
                    {
                        "type": "carousel",
                        "cards": [
                            {
                                "card_index": i,
                                "components": [
                                    {"type": "body", "parameters": [{"type": "text", "text": "x"}]}
                                ],
                            }
                            for i in range(11)
                        ],
                    }
                ],
            },
        },
        100,
    ),
    ({"type": "fax", "fax": {}}, 100),
]


@pytest.mark.parametrize(("message", "code"), WIRE_VIOLATIONS)
def test_contract_and_sandbox_refuse_the_same_bodies(message: dict[str, Any], code: int) -> None:
    """Both independent readings of Meta's rules refuse each invalid body."""
    with pytest.raises(ValidationError):
        SendRequest.model_validate({"phone_number_id": PNID, "to": CUSTOMER, "message": message})
    with pytest.raises(MetaError) as info:
        check_body(body(message))
    assert info.value.code == code


def test_seeded_runs_are_reproducible() -> None:
    """Two sandboxes with one seed draw the same faults in the same order."""
    draws = []
    for _ in range(2):
        meta = FakeMeta(SandboxConfig(seed=42), clock=Clock())
        meta.faults.update({"server_error_ratio": 0.3, "drop_ratio": 0.2})
        draws.append([meta.faults.draw(meta.rng) for _ in range(50)])
    assert draws[0] == draws[1]
    assert len(set(draws[0])) == 3


def _signature_ok(raw: bytes, header: str) -> bool:
    expected = "sha256=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


async def _wait_for(predicate: Any, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def _send(
    sandbox_server: SandboxServer, message: dict[str, Any], **extra: Any
) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{sandbox_server.url}/v24.0/{PNID}/messages",
            json={**body(message), **extra},
            headers={"Authorization": f"Bearer {ACCESS_TOKEN}"},
        )


async def test_inbound_message_is_posted_as_a_signed_webhook(
    sandbox: SandboxClient, webhook_sink: WebhookSinkServer
) -> None:
    """A customer's message reaches the webhook URL in Meta's shape, correctly signed."""
    await sandbox.set_webhook_url(webhook_sink.hook_url)
    await sandbox.inbound(CUSTOMER, "Does it come in blue?")
    [received] = webhook_sink.sink.received
    assert _signature_ok(received.body, received.headers["x-hub-signature-256"])
    value = received.payload["entry"][0]["changes"][0]["value"]
    assert value["metadata"]["phone_number_id"] == PNID
    assert value["messages"][0]["from"] == "16505551234"
    assert value["messages"][0]["text"]["body"] == "Does it come in blue?"


async def test_statuses_follow_an_accepted_send(
    sandbox_server: SandboxServer, sandbox: SandboxClient, webhook_sink: WebhookSinkServer
) -> None:
    """sent, delivered, read arrive signed, each echoing biz_opaque_callback_data."""
    await sandbox.inbound(CUSTOMER)
    await sandbox.set_webhook_url(webhook_sink.hook_url)
    response = await _send(sandbox_server, META_EXAMPLES["text"], biz_opaque_callback_data="msg-7")
    wamid = response.json()["messages"][0]["id"]
    sink = webhook_sink.sink
    await _wait_for(lambda: len(sink.statuses()) == 3)
    assert [s["status"] for s in sink.statuses()] == ["sent", "delivered", "read"]
    assert {s["id"] for s in sink.statuses()} == {wamid}
    assert {s["biz_opaque_callback_data"] for s in sink.statuses()} == {"msg-7"}
    assert all(_signature_ok(r.body, r.headers["x-hub-signature-256"]) for r in sink.received)


async def test_closed_window_can_fail_after_a_200(
    webhook_sink: WebhookSinkServer,
) -> None:
    """In async mode, 131047 arrives as 200 + wamid, then a failed status webhook."""
    config = SandboxConfig(
        access_token=ACCESS_TOKEN,
        app_secret=APP_SECRET,
        status_delay_s=0.0,
        window_errors=WindowErrors.ASYNC,
        webhook_url=webhook_sink.hook_url,
    )
    with SandboxServer(config) as server:
        response = await _send(server, META_EXAMPLES["text"], biz_opaque_callback_data="late")
        assert response.status_code == 200
        sink = webhook_sink.sink
        await _wait_for(lambda: len(sink.statuses()) == 1)
    [status] = sink.statuses()
    assert status["status"] == "failed"
    assert status["errors"][0]["code"] == 131047
    assert status["biz_opaque_callback_data"] == "late"


async def test_duplicate_webhooks_can_be_injected(
    sandbox_server: SandboxServer, sandbox: SandboxClient, webhook_sink: WebhookSinkServer
) -> None:
    """With duplicate_webhook_ratio=1 every webhook arrives twice, as Meta's retries do."""
    await sandbox.set_faults(duplicate_webhook_ratio=1)
    await sandbox.set_webhook_url(webhook_sink.hook_url)
    await sandbox.inbound(CUSTOMER)
    assert len(webhook_sink.sink.received) == 2
    assert webhook_sink.sink.received[0].body == webhook_sink.sink.received[1].body


async def test_control_route_refuses_unknown_fault(
    sandbox_server: SandboxServer, sandbox: SandboxClient
) -> None:
    """A misspelt fault is a 400 naming it, not a silent no-op."""
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{sandbox_server.url}/_sandbox/faults", json={"drop_rate": 1})
    assert response.status_code == 400
    assert "drop_rate" in response.json()["detail"]


@pytest.mark.parametrize(
    "case",
    [
        (None, 400, 2500, "An active access token must be used to query information about the "
         "current user."),
        ("Bearer wrong", 401, 190, "Invalid OAuth access token - Cannot parse access token"),
        ("Basic abc", 400, 2500, "An active access token must be used to query information "
         "about the current user."),
    ],
)  # fmt: skip
async def test_requests_without_a_valid_token_get_metas_oauth_errors(
    sandbox_server: SandboxServer, sandbox: SandboxClient, case: tuple[str | None, int, int, str]
) -> None:
    """As Meta: no token is OAuthException 2500 (400), a bad one 190 (401), its plain text."""
    authorization, http_status, code, message = case
    headers = {"Authorization": authorization} if authorization else {}
    async with httpx.AsyncClient(base_url=sandbox_server.url) as client:
        response = await client.post(f"/v24.0/{PNID}/messages", json=body(), headers=headers)
    assert response.status_code == http_status
    error = response.json()["error"]
    assert (error["type"], error["code"], error["message"]) == ("OAuthException", code, message)
    assert error["fbtrace_id"]


async def test_an_expired_token_is_190_with_401(
    sandbox_server: SandboxServer, sandbox: SandboxClient
) -> None:
    await sandbox.expire_token(True)
    headers = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
    async with httpx.AsyncClient(base_url=sandbox_server.url) as client:
        response = await client.post(f"/v24.0/{PNID}/messages", json=body(), headers=headers)
    await sandbox.expire_token(False)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == 190
    assert "Session has expired" in response.json()["error"]["message"]
