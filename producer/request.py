"""A send request: one message, who sends it, who gets it, and the caller's bookkeeping."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, Field, field_validator

from producer import limits
from producer._model import ContractModel
from producer.messages import Message
from producer.recipient import normalize_recipient, wa_id_of

__all__ = ["SendRequest", "graph_body_of", "message_id_of_callback"]


MetadataKey = Annotated[str, Field(min_length=1, max_length=limits.METADATA_KEY_MAX_CHARS)]
MetadataValue = Annotated[str, Field(max_length=limits.METADATA_VALUE_MAX_CHARS)]


class SendRequest(ContractModel):
    """What a producer enqueues; the worker turns it into exactly one Graph API call."""

    phone_number_id: str = Field(
        # [0-9], not \d: Python's \d also takes Arabic-Indic and other digits, which would
        # make one number look like several senders.
        pattern=r"^[0-9]{1,32}$",
        description="The sending business number's Graph id.",
    )
    to: Annotated[str, AfterValidator(normalize_recipient)] = Field(
        description="The recipient, normalised to E.164."
    )
    message: Message
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=limits.IDEMPOTENCY_KEY_MAX_CHARS,
        description="Repeat a request with the same key and it is enqueued only once; the "
        "same key with a different request is refused (idempotency_key_reused).",
    )
    biz_opaque_callback_data: str | None = Field(
        default=None,
        min_length=1,
        max_length=limits.CALLER_CALLBACK_DATA_MAX_CHARS,
        description="The caller's own tracking value, as in Meta's API. Meta echoes it in "
        "every status of the message; waq returns it with the message's status, and sends "
        "it after its own message id (`<id>:<yours>`), by which it finds the message.",
    )
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=limits.METADATA_MAX_KEYS,
        description=f"The caller's own tags, kept with the status and any dead letter: at "
        f"most {limits.METADATA_MAX_KEYS} keys of {limits.METADATA_KEY_MAX_CHARS} characters, "
        f"values of {limits.METADATA_VALUE_MAX_CHARS}.",
    )

    send_at: AwareDatetime | None = Field(
        default=None,
        description="Send at this time (ISO 8601 with a UTC offset), not before; at most 30 "
        "days ahead. A time in the past sends now. It can be cancelled until it leaves.",
    )
    priority: Literal["interactive", "bulk"] | None = Field(
        default=None,
        description="interactive (the default: replies, OTPs) goes ahead of bulk traffic "
        "from the same number; bulk keeps a share of the number's limit (WAQ_BULK_SHARE).",
    )

    @field_validator("send_at")
    @classmethod
    def _within_a_month(cls, send_at: datetime | None) -> datetime | None:
        if send_at is not None and send_at.timestamp() - time.time() > limits.SCHEDULE_MAX_AHEAD_S:
            raise ValueError("send_at is at most 30 days ahead")
        return send_at

    @property
    def send_at_s(self) -> float | None:
        """``send_at`` as a unix time, when it is still ahead (past: send now)."""
        if self.send_at is None:
            return None
        at = self.send_at.timestamp()
        return at if at > time.time() else None

    @property
    def wa_id(self) -> str:
        """The recipient as Meta's ``wa_id``, the key of the customer's service window."""
        return wa_id_of(self.to)

    def graph_body(self, *, callback_data: str | None = None) -> dict[str, Any]:
        """The JSON body of ``POST /{version}/{phone_number_id}/messages``.

        ``callback_data`` becomes ``biz_opaque_callback_data``, which Meta echoes in every
        status webhook for this message.
        """
        return graph_body_of(
            {"to": self.to, "message": self.message.graph_fields(),
             "biz_opaque_callback_data": self.biz_opaque_callback_data},
            callback_data=callback_data,
        )  # fmt: skip


def graph_body_of(request: dict[str, Any], *, callback_data: str | None = None) -> dict[str, Any]:
    """``SendRequest.graph_body`` from a request's JSON form, as the producer stored it.

    The worker sends what the producer validated without validating it again (a third of a
    message's CPU in a profile); a caller that cannot trust the JSON validates it first.
    """
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": request["to"],
        **request["message"],
    }
    if callback_data is not None:
        if callers := request.get("biz_opaque_callback_data"):
            callback_data = f"{callback_data}:{callers}"
        if len(callback_data) > limits.CALLBACK_DATA_MAX_CHARS:
            raise ValueError("biz_opaque_callback_data is limited to 512 characters")
        body["biz_opaque_callback_data"] = callback_data
    return body


def message_id_of_callback(callback_data: str) -> str:
    """waq's message id from the ``biz_opaque_callback_data`` Meta echoes (``graph_body_of``)."""
    return callback_data.partition(":")[0]
