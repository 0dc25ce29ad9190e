"""``/v1/webhooks``: operators manage the webhook subscriptions that carry events out.

Admin keys only: a subscription decides where a deployment's events (customers' messages
among them) go. A secret is shown whole once, when it is made (or rotated); after that only
its last four characters.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from gateway.errors import Conflict, NotFound
from gateway.state import GatewayState, gateway_state, require_admin_key
from worker.subscriptions import (
    DeadEvent,
    OutboxStats,
    Subscription,
    SubscriptionSpec,
    SubscriptionState,
)

__all__ = ["SubscriptionOut", "subscriptions_router"]

subscriptions_router = APIRouter(
    prefix="/v1/webhooks", dependencies=[Depends(require_admin_key)], tags=["webhooks"]
)
State = Annotated[GatewayState, Depends(gateway_state)]


class SubscriptionOut(SubscriptionSpec):
    """A subscription as operators see it: its secret masked, its state and counters."""

    id: str
    secret: str = Field(description="Whole only in the answer that made it; else masked.")
    created_at: float
    state: SubscriptionState
    stats: OutboxStats
    recent_attempts: list[dict[str, Any]] = Field(default_factory=list)


class PauseIn(BaseModel):
    """Why an operator pauses it (shown with its state)."""

    reason: str = Field(default="paused by an operator", max_length=200)


def _masked(secret: str) -> str:
    return "whsec_…" + secret[-4:]


async def _out(
    state: GatewayState, subscription: Subscription, *, reveal: bool = False, attempts: int = 0
) -> SubscriptionOut:
    store = state.subscriptions
    secret = subscription.secret.get_secret_value()
    return SubscriptionOut(
        **subscription.model_dump(include=set(SubscriptionSpec.model_fields)),
        id=subscription.id,
        secret=secret if reveal else _masked(secret),
        created_at=subscription.created_at,
        state=await store.state(subscription.id),
        stats=await store.stats(subscription.id),
        recent_attempts=await store.log(subscription.id, attempts) if attempts else [],
    )


async def _found(state: GatewayState, subscription_id: str) -> Subscription:
    subscription = await state.subscriptions.get(subscription_id)
    if subscription is None:
        raise NotFound(f"no webhook subscription {subscription_id}", code="subscription_not_found")
    return subscription


@subscriptions_router.post("", status_code=201, summary="Subscribe a URL to events")
async def create(spec: SubscriptionSpec, state: State) -> SubscriptionOut:
    """It receives the events emitted from now on; the answer shows its secret, once."""
    subscription = await state.subscriptions.add(spec)
    return await _out(state, subscription, reveal=True)


@subscriptions_router.get("", summary="Every subscription")
async def list_all(state: State) -> list[SubscriptionOut]:
    """With each one's state and counters."""
    return [await _out(state, s) for s in await state.subscriptions.all()]


@subscriptions_router.get("/{subscription_id}", summary="One subscription and its last attempts")
async def show(
    subscription_id: str, state: State, attempts: Annotated[int, Query(ge=0, le=100)] = 20
) -> SubscriptionOut:
    """Its settings, state, counters and the last delivery attempts (newest first)."""
    return await _out(state, await _found(state, subscription_id), attempts=attempts)


@subscriptions_router.delete("/{subscription_id}", status_code=204, summary="Unsubscribe")
async def remove(subscription_id: str, state: State) -> Response:
    """Drops it with its outbox and dead letters."""
    if not await state.subscriptions.remove(subscription_id):
        raise NotFound(f"no webhook subscription {subscription_id}", code="subscription_not_found")
    return Response(status_code=204)


@subscriptions_router.post("/{subscription_id}/test", status_code=202, summary="Send a test event")
async def test(subscription_id: str, state: State) -> dict[str, str]:
    """A ``webhook.test`` event, delivered like any other (watch its attempt in the log)."""
    await _found(state, subscription_id)
    current = await state.subscriptions.state(subscription_id)
    if current.state != "active":
        raise Conflict(
            f"the subscription is {current.state} ({current.reason}); resume it first",
            code="subscription_inactive",
        )
    return {"event_id": await state.subscriptions.send_test(subscription_id)}


@subscriptions_router.post("/{subscription_id}/pause", summary="Stop delivering")
async def pause(subscription_id: str, body: PauseIn, state: State) -> SubscriptionOut:
    """New events wait in its dead letters until a replay."""
    subscription = await _found(state, subscription_id)
    await state.subscriptions.pause(subscription_id, body.reason)
    return await _out(state, subscription)


@subscriptions_router.post("/{subscription_id}/resume", summary="Deliver again")
async def resume(subscription_id: str, state: State) -> SubscriptionOut:
    """A paused or disabled subscription delivers again (its dead letters stay: replay them)."""
    subscription = await _found(state, subscription_id)
    await state.subscriptions.resume(subscription_id)
    return await _out(state, subscription)


@subscriptions_router.post("/{subscription_id}/replay", summary="Deliver its dead letters again")
async def replay(subscription_id: str, state: State) -> dict[str, int]:
    """Every dead letter goes back in line, oldest first; the subscription is resumed."""
    await _found(state, subscription_id)
    return {"replayed": await state.subscriptions.replay(subscription_id)}


@subscriptions_router.get("/{subscription_id}/dead-letters", summary="Events it gave up on")
async def dead_letters(
    subscription_id: str, state: State, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[DeadEvent]:
    """Oldest first, each with the reason and the receiver's last HTTP status."""
    await _found(state, subscription_id)
    return await state.subscriptions.dead(subscription_id, limit)


@subscriptions_router.post("/{subscription_id}/rotate-secret", summary="Rotate its secret")
async def rotate_secret(subscription_id: str, state: State) -> SubscriptionOut:
    """A new secret, shown once; the old one signs too for a day (two signatures)."""
    await _found(state, subscription_id)
    rotated = await state.subscriptions.rotate_secret(subscription_id)
    assert rotated is not None
    return await _out(state, rotated, reveal=True)
