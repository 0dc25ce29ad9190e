"""The fake Meta's state and rules: windows, registrations, rate limits, ledger, statuses.

Pure logic with an injectable clock, so its rules are tested without HTTP; ``sandbox.app``
puts it behind Meta's routes.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.config import NumberConfig, SandboxConfig, WindowErrors
from sandbox.faults import Faults
from sandbox.meta_error import MetaError, no_token, token_refused
from sandbox.rules import check_body, media_extension_ok, template_body_parameter_count

__all__ = ["FakeMeta", "LedgerEntry", "PendingStatus"]


@dataclass(slots=True)
class LedgerEntry:
    """One message Meta accepted (HTTP 200 with a wamid)."""

    wamid: str
    phone_number_id: str
    to: str
    wa_id: str
    type: str
    body: dict[str, Any]
    callback_data: str | None
    accepted_at: float
    statuses: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form served by ``GET /_sandbox/ledger``."""
        return {
            "wamid": self.wamid,
            "phone_number_id": self.phone_number_id,
            "to": self.to,
            "wa_id": self.wa_id,
            "type": self.type,
            "body": self.body,
            "biz_opaque_callback_data": self.callback_data,
            "accepted_at": self.accepted_at,
            "statuses": self.statuses,
            "errors": self.errors,
        }


@dataclass(frozen=True, slots=True)
class PendingStatus:
    """A status webhook to post after an accepted send: ``failure`` set means ``failed``."""

    entry: LedgerEntry
    failure: MetaError | None = None


@dataclass(slots=True)
class _PairBucket:
    """Meta's pair limit as a token bucket: ``burst`` tokens, one back every interval."""

    tokens: float
    updated: float


def _wa_id(to: str) -> str:
    return "".join(ch for ch in to if ch.isdigit())


class FakeMeta:
    """Decides every send the way Meta would, and remembers what it accepted."""

    def __init__(self, config: SandboxConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.faults = Faults()
        self.rng = random.Random(config.seed)
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        """Forget windows, registrations, limits, the ledger and faults; keep the config."""
        self.rng.seed(self.config.seed)
        self.faults = Faults()
        self.access_token = self.config.access_token
        self.token_expired = False
        self.numbers: dict[str, NumberConfig] = {
            k: NumberConfig(**{f: getattr(v, f) for f in v.__slots__})  # copy: mutable per run
            for k, v in self.config.numbers.items()
        }
        self.windows: dict[tuple[str, str], float] = {}
        self.unregistered: set[str] = set()
        self.async_failures: dict[str, int] = {}
        self.ledger: list[LedgerEntry] = []
        self.by_wamid: dict[str, LedgerEntry] = {}
        self._requests_seen: dict[str, int] = {}
        self.inbound: list[dict[str, Any]] = []
        self.read_receipts: list[dict[str, Any]] = []
        self.outcomes: dict[str, int] = {}
        self._recent: dict[str, deque[float]] = {}
        self._pairs: dict[tuple[str, str], _PairBucket] = {}
        self._peak_per_second: dict[str, int] = {}

    def request_rng(self, body: Any) -> random.Random:
        """The generator that draws one send request's faults.

        Seeded by the configured seed, the request (less ``biz_opaque_callback_data``, a
        fresh id each run) and how often that request was seen: the same message meets the
        same faults on every run, whatever order concurrent workers send in. One generator
        shared by every request would hand out its draws in arrival order instead.
        """
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k != "biz_opaque_callback_data"}
        key = json.dumps(body, sort_keys=True, default=str)
        seen = self._requests_seen[key] = self._requests_seen.get(key, 0) + 1
        return random.Random(f"{self.config.seed}|{key}|{seen}")

    # -- Meta's send rules -------------------------------------------------------------

    def authorize(self, authorization: str | None) -> None:
        """Check the bearer token as Meta does before anything else."""
        if not authorization or not authorization.startswith("Bearer "):
            raise no_token()
        if authorization.removeprefix("Bearer ") != self.access_token:
            raise token_refused("Invalid OAuth access token - Cannot parse access token")
        if self.token_expired:
            raise token_refused("Error validating access token: Session has expired")

    def number(self, phone_number_id: str) -> NumberConfig:
        """The number, or Meta's 100/33 for an id that does not exist."""
        number = self.numbers.get(phone_number_id)
        if number is None:
            raise MetaError(
                100,
                "Invalid parameter",
                f"Unsupported post request. Object with ID '{phone_number_id}' does not exist, "
                "cannot be loaded due to missing permissions, or does not support this operation",
                subcode=33,
            )
        return number

    def send(self, phone_number_id: str, body: Any) -> tuple[dict[str, Any], PendingStatus]:
        """Accept a message (Meta's success body plus the status to post) or raise MetaError."""
        try:
            return self._send(phone_number_id, body)
        except MetaError as exc:
            self._count(str(exc.code))
            raise

    def _send(self, phone_number_id: str, body: Any) -> tuple[dict[str, Any], PendingStatus]:
        number = self.number(phone_number_id)
        if number.send_error_code is not None:
            raise _account_error(number.send_error_code)
        now = self._clock()
        self._throughput(phone_number_id, number.mps, now)
        check_body(body)
        to: str = body["to"]
        wa_id = _wa_id(to)
        kind: str = body.get("type", "text")
        if wa_id in self.unregistered:
            raise MetaError(
                131026,
                "Message undeliverable",
                "Unable to deliver message. Reasons can include: the recipient phone number is "
                "not a WhatsApp phone number; the recipient has not accepted our new Terms of "
                "Service and Privacy Policy; the recipient is using an old WhatsApp version.",
            )
        if kind == "template":
            self._template(body["template"])
        self._pair(phone_number_id, wa_id, now)
        failure = self._async_failure(phone_number_id, wa_id, kind, body, now)
        entry = LedgerEntry(
            wamid=_wamid(),
            phone_number_id=phone_number_id,
            to=to,
            wa_id=wa_id,
            type=kind,
            body=body,
            callback_data=body.get("biz_opaque_callback_data"),
            accepted_at=now,
            statuses=["accepted"],
        )
        self.ledger.append(entry)
        self.by_wamid[entry.wamid] = entry
        self._count("accepted")
        answer: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": wa_id}],
            "messages": [{"id": entry.wamid}],
        }
        if kind == "template":
            answer["messages"][0]["message_status"] = "accepted"
        return answer, PendingStatus(entry, failure)

    def _throughput(self, phone_number_id: str, mps: int, now: float) -> None:
        recent = self._recent.setdefault(phone_number_id, deque())
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        if len(recent) >= mps:
            raise MetaError(
                130429, "Rate limit hit", "Cloud API message throughput has been reached.",
                http_status=429, subcode=2494055,
            )  # fmt: skip
        recent.append(now)
        peak = self._peak_per_second.get(phone_number_id, 0)
        self._peak_per_second[phone_number_id] = max(peak, len(recent))

    def _pair(self, phone_number_id: str, wa_id: str, now: float) -> None:
        burst, interval = self.config.pair_burst, self.config.pair_interval_s
        bucket = self._pairs.setdefault((phone_number_id, wa_id), _PairBucket(burst, now))
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) / interval)
        bucket.updated = now
        if bucket.tokens < 1:
            raise MetaError(
                131056,
                "(Business Account, Consumer Account) pair rate limit hit",
                "Message failed to send because there were too many messages sent from this "
                "phone number to the same phone number in a short period of time.",
            )
        bucket.tokens -= 1

    def _template(self, template: dict[str, Any]) -> None:
        name, language = template["name"], template["language"]["code"]
        spec = self.config.templates.get(name)
        if spec is None or language not in spec.languages:
            raise MetaError(
                132001,
                "Template name does not exist in the translation",
                f"template name ({name}) does not exist in {language}",
                http_status=404,
            )
        if spec.status == "PAUSED":
            raise MetaError(132015, "Template is paused", f"template {name} is paused")
        if spec.status != "APPROVED":
            raise MetaError(132016, "Template is disabled", f"template {name} is {spec.status}")
        given = template_body_parameter_count(template)
        if given != spec.body_parameters:
            raise MetaError(
                132000,
                "Number of parameters does not match the expected number of params",
                f"body: number of localizable_params ({given}) does not match the expected "
                f"number of params ({spec.body_parameters})",
            )

    def _async_failure(
        self, phone_number_id: str, wa_id: str, kind: str, body: dict[str, Any], now: float
    ) -> MetaError | None:
        if kind != "template" and not self.window_open(phone_number_id, wa_id, now):
            mode = self.config.window_errors
            if mode is WindowErrors.SYNC or (
                mode is WindowErrors.MIXED and self.rng.random() < 0.5
            ):
                raise _reengagement()
            return _reengagement()
        media = body.get(kind) if kind in ("image", "video", "audio", "sticker") else None
        if media and "link" in media and not media_extension_ok(kind, media["link"]):
            return MetaError(
                131053,
                "Media upload error",
                f"Downloading media from the link failed: unsupported {kind} type.",
            )
        code = self.async_failures.get(wa_id)
        return _account_error(code) if code is not None else None

    # -- windows and inbound messages ----------------------------------------------------

    def window_open(self, phone_number_id: str, wa_id: str, now: float | None = None) -> bool:
        """True when the customer wrote to this number less than 24 hours ago."""
        last = self.windows.get((phone_number_id, wa_id))
        return last is not None and (now or self._clock()) - last < self.config.window_s

    def receive(
        self, phone_number_id: str, from_: str, text: str, timestamp: float | None
    ) -> dict[str, Any]:
        """Record an inbound customer message (opening the window); return it as Meta shapes it."""
        self.number(phone_number_id)
        wa_id = _wa_id(from_)
        sent_at = self._clock() if timestamp is None else timestamp
        self.windows[(phone_number_id, wa_id)] = max(
            sent_at, self.windows.get((phone_number_id, wa_id), 0)
        )
        message = {
            "from": wa_id,
            "id": _wamid(),
            "timestamp": str(int(sent_at)),
            "type": "text",
            "text": {"body": text},
        }
        self.inbound.append({"phone_number_id": phone_number_id, **message})
        return message

    def message_templates(self) -> dict[str, Any]:
        """``GET /{version}/{waba_id}/message_templates``: every template, in Meta's shape."""
        data = [
            {
                "id": str(int(hashlib.sha256(f"{name}:{language}".encode()).hexdigest()[:12], 16)),
                "name": name,
                "language": language,
                "status": spec.status,
                "category": "UTILITY",
                "components": [
                    {
                        "type": "BODY",
                        "text": "Hello"
                        + "".join(f" {{{{{i}}}}}" for i in range(1, spec.body_parameters + 1)),
                    }
                ],
            }
            for name, spec in sorted(self.config.templates.items())
            for language in sorted(spec.languages)
        ]
        return {"data": data, "paging": {"cursors": {"before": "", "after": ""}}}

    def mark_read(self, phone_number_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Meta's read receipt for an inbound message (optionally with the typing indicator).

        Meta answers ``{"success": true}``; a message id it does not know for this number is
        100. Each receipt is kept in ``read_receipts`` for tests to count.
        """
        self.number(phone_number_id)
        message_id = body.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise MetaError(131008, "Required parameter is missing", "message_id is required.")
        known = {m["id"] for m in self.inbound if m["phone_number_id"] == phone_number_id}
        if message_id not in known:
            raise MetaError(100, "Invalid parameter", f"Unknown message_id {message_id}")
        typing = body.get("typing_indicator")
        if typing is not None and typing != {"type": "text"}:
            raise MetaError(100, "Invalid parameter", "typing_indicator.type must be text")
        self.read_receipts.append(
            {"phone_number_id": phone_number_id, "message_id": message_id, "typing": bool(typing)}
        )
        return {"success": True}

    # -- reading -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Outcome counts, the busiest one-second window per number, the read receipts."""
        return {
            "outcomes": dict(self.outcomes),
            "peak_per_second": dict(self._peak_per_second),
            "read_receipts": list(self.read_receipts),
        }

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def _wamid() -> str:
    return "wamid.HBgL" + secrets.token_urlsafe(24)


def _reengagement() -> MetaError:
    return MetaError(
        131047,
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number.",
    )


_ACCOUNT_ERRORS: dict[int, tuple[str, int]] = {
    131031: ("Business Account locked", 403),
    368: ("Temporarily blocked for policies violations", 403),
    131042: ("Business eligibility payment issue", 400),
    131048: ("Spam rate limit hit", 429),
    131050: ("Unable to deliver the message: user stopped marketing messages", 400),
    131049: ("This message was not delivered to maintain healthy ecosystem engagement.", 400),
    130472: ("User's number is part of an experiment", 400),
}


def _account_error(code: int) -> MetaError:
    title, status = _ACCOUNT_ERRORS.get(code, ("Error", 400))
    return MetaError(code, title, f"Sandbox: configured error {code}.", http_status=status)
