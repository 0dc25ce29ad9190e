"""The Graph client against the sandbox over real HTTP: answers, errors, timeouts, drops."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from sandbox import DEFAULT_PHONE_NUMBER_ID, SandboxClient, SandboxServer, free_port
from tests.support import ACCESS_TOKEN
from worker.error_table import Action, rule_for
from worker.errors import GraphConnectionError, GraphError, GraphTimeout
from worker.graph import GraphClient

CUSTOMER = "+16505551234"


def text_body(to: str = CUSTOMER, **extra: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": to,
        "type": "text",
        "text": {"body": "hi"},
        **extra,
    }


@pytest.fixture
async def graph(
    sandbox_server: SandboxServer, sandbox: SandboxClient
) -> AsyncIterator[GraphClient]:
    async with GraphClient(
        access_token=SecretStr(ACCESS_TOKEN), base_url=sandbox_server.url, timeout_s=0.5
    ) as client:
        yield client


async def test_send_returns_wamid_and_wa_id(graph: GraphClient, sandbox: SandboxClient) -> None:
    """An accepted send gives the wamid the sandbox put in its ledger, and the wa_id."""
    await sandbox.inbound(CUSTOMER)
    result = await graph.send(DEFAULT_PHONE_NUMBER_ID, text_body(biz_opaque_callback_data="m-1"))
    ledger = await sandbox.ledger()
    assert [e["wamid"] for e in ledger] == [result.wamid]
    assert result.wamid.startswith("wamid.")
    assert result.wa_id == "16505551234"
    assert ledger[0]["biz_opaque_callback_data"] == "m-1"


async def test_closed_window_is_permanent_131047(graph: GraphClient) -> None:
    """A free-form message to a customer who never wrote fails with 131047, a permanent error."""
    with pytest.raises(GraphError) as info:
        await graph.send(DEFAULT_PHONE_NUMBER_ID, text_body())
    error = info.value
    assert (error.meta_code, error.http_status, error.title) == (
        131047,
        400,
        "Re-engagement message",
    )
    assert error.details
    assert "24 hours" in error.details
    assert error.fbtrace_id
    assert rule_for(error.meta_code, http_status=error.http_status).action is Action.PERMANENT


async def test_unregistered_number_is_131026(graph: GraphClient, sandbox: SandboxClient) -> None:
    """A number the sandbox knows as unregistered fails with 131026."""
    await sandbox.inbound(CUSTOMER)
    await sandbox.set_recipient("16505551234", registered=False)
    with pytest.raises(GraphError) as info:
        await graph.send(DEFAULT_PHONE_NUMBER_ID, text_body())
    assert info.value.meta_code == 131026


async def test_throughput_limit_is_retryable_130429(
    graph: GraphClient, sandbox: SandboxClient
) -> None:
    """Above the number's mps the sandbox answers 130429 with HTTP 429: retry."""
    await sandbox.inbound(CUSTOMER)
    await sandbox.set_number(DEFAULT_PHONE_NUMBER_ID, mps=1)
    await graph.send(DEFAULT_PHONE_NUMBER_ID, text_body())
    with pytest.raises(GraphError) as info:
        await graph.send(DEFAULT_PHONE_NUMBER_ID, text_body())
    assert (info.value.meta_code, info.value.http_status) == (130429, 429)
    assert rule_for(130429, http_status=429).action is Action.RETRY


async def test_expired_token_pauses_190(graph: GraphClient, sandbox: SandboxClient) -> None:
    """An expired token is 190, HTTP 401: pause the number."""
    await sandbox.expire_token()
    with pytest.raises(GraphError) as info:
        await graph.send(DEFAULT_PHONE_NUMBER_ID, text_body())
    assert (info.value.meta_code, info.value.http_status) == (190, 401)
    assert rule_for(190, http_status=401).action is Action.PAUSE


async def test_wrong_token_is_refused(
    sandbox_server: SandboxServer, sandbox: SandboxClient
) -> None:
    """A token the sandbox does not know is refused with 190, and the token is not echoed."""
    async with GraphClient(access_token=SecretStr("not-it"), base_url=sandbox_server.url) as client:
        with pytest.raises(GraphError) as info:
            await client.send(DEFAULT_PHONE_NUMBER_ID, text_body())
    assert info.value.meta_code == 190
    assert "not-it" not in str(info.value)
    assert "not-it" not in repr(info.value.as_dict())


async def test_unknown_phone_number_id_is_100_subcode_33(graph: GraphClient) -> None:
    """A phone_number_id the sandbox does not serve is Meta's 100/33, which pauses."""
    with pytest.raises(GraphError) as info:
        await graph.send("999", text_body())
    assert (info.value.meta_code, info.value.subcode) == (100, 33)
    assert rule_for(100, http_status=400, subcode=33).action is Action.PAUSE


async def test_server_error_is_retryable(graph: GraphClient, sandbox: SandboxClient) -> None:
    """An injected 5xx carries a retryable Meta code and accepts nothing."""
    await sandbox.inbound(CUSTOMER)
    await sandbox.set_faults(server_error_ratio=1)
    with pytest.raises(GraphError) as info:
        await graph.send(DEFAULT_PHONE_NUMBER_ID, text_body())
    assert info.value.http_status >= 500
    assert rule_for(info.value.meta_code, http_status=info.value.http_status).action is Action.RETRY
    assert await sandbox.ledger() == []


async def test_timeout_is_ambiguous(graph: GraphClient, sandbox: SandboxClient) -> None:
    """No answer within the timeout: the request left, so the outcome is ambiguous."""
    await sandbox.inbound(CUSTOMER)
    await sandbox.set_faults(hang_ratio=1, hang_s=2)
    with pytest.raises(GraphTimeout) as info:
        await graph.send(DEFAULT_PHONE_NUMBER_ID, text_body())
    assert info.value.ambiguous


async def test_dropped_connection_is_ambiguous_and_was_accepted(
    graph: GraphClient, sandbox: SandboxClient
) -> None:
    """A connection dropped after Meta accepted: ambiguous, and the ledger shows it went."""
    await sandbox.inbound(CUSTOMER)
    await sandbox.set_faults(drop_ratio=1)
    with pytest.raises(GraphConnectionError) as info:
        await graph.send(DEFAULT_PHONE_NUMBER_ID, text_body(biz_opaque_callback_data="m-drop"))
    assert info.value.ambiguous
    assert [e["biz_opaque_callback_data"] for e in await sandbox.ledger()] == ["m-drop"]


async def test_refused_connection_certainly_did_not_send() -> None:
    """Nothing listening: the request never left, so resending cannot duplicate."""
    url = f"http://127.0.0.1:{free_port()}"
    async with GraphClient(
        access_token=SecretStr("t"), base_url=url, connect_timeout_s=1
    ) as client:
        with pytest.raises(GraphConnectionError) as info:
            await client.send(DEFAULT_PHONE_NUMBER_ID, text_body())
    assert not info.value.ambiguous


async def test_phone_number_reads_health(graph: GraphClient, sandbox: SandboxClient) -> None:
    """Status, quality, throughput, messaging limit and health_status are read and typed."""
    info = await graph.phone_number(DEFAULT_PHONE_NUMBER_ID)
    assert info.status == "CONNECTED"
    assert info.quality_rating == "GREEN"
    assert info.throughput == {"level": "STANDARD"}
    assert info.whatsapp_business_manager_messaging_limit == "TIER_2K"
    assert info.health_status is not None
    assert info.health_status.can_send_message == "AVAILABLE"
    assert info.can_send
    await sandbox.set_number(DEFAULT_PHONE_NUMBER_ID, health="BLOCKED")
    blocked = await graph.phone_number(DEFAULT_PHONE_NUMBER_ID)
    assert not blocked.can_send
