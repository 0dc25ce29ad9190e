"""Meta's error codes, as data: what waq does with each, and what to tell the operator.

Every decision is made on ``error.code`` (and, for one row, ``error_subcode``), never on
text in the body, as Meta advises. Codes not in the table fall back on the HTTP status.
Source: ../shared/reference/whatsapp-cloud-api.md, section 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = ["ERROR_TABLE", "Action", "ErrorRule", "Schedule", "Suggestion", "Throttle", "rule_for"]


class Action(StrEnum):
    """What the worker does after an error."""

    RETRY = "retry"
    """Transient: try the same body again after a backoff, a bounded number of times."""
    PERMANENT = "permanent"
    """This message cannot go as it is: dead-letter it with a hint."""
    PAUSE = "pause"
    """The token, account or number is broken: stop sending for the number, alert, wait."""


class Suggestion(StrEnum):
    """The operator's next step, shown with every dead letter."""

    SEND_TEMPLATE = "send_template"
    """Outside the 24-hour window: send an approved template instead."""
    FIX_RECIPIENT = "fix_recipient"
    """The recipient cannot receive this: check the number or the user's settings."""
    FIX_REQUEST = "fix_request"
    """The body broke a rule Meta checks: fix the parameters, media or template."""
    CHECK_ACCOUNT = "check_account"
    """Token, permissions, payment or account health: fix it in Meta's Business Manager."""
    RETRY_LATER = "retry_later"
    """Nothing is wrong with the message; Meta asked for time. Requeue it later."""
    CONTACT_SUPPORT = "contact_support"
    """An error Meta does not explain; check metastatus.com, then ask Meta's support."""


class Schedule(StrEnum):
    """How the delay between retries grows."""

    EXPONENTIAL = "exponential"
    """Full-jitter exponential backoff with a cap (waq's default)."""
    PAIR = "pair"
    """Meta's published 4^x seconds for the pair rate limit (131056): 1, 4, 16, 64 s..."""


class Throttle(StrEnum):
    """What Meta throttled, and so what waq slows down."""

    NUMBER = "number"
    """The business number's throughput (130429)."""
    PAIR = "pair"
    """One number-to-customer pair (131056)."""
    APP = "app"
    """The app or the business account: every number (4, 80007)."""


@dataclass(frozen=True, slots=True)
class ErrorRule:
    """One row of the table."""

    action: Action
    suggestion: Suggestion
    hint: str
    schedule: Schedule = Schedule.EXPONENTIAL
    min_delay_s: float = 0.0
    throttle: Throttle | None = None
    """Meta throttled: slow this scope down; the call is not counted as a failed attempt."""


def _retry(
    hint: str,
    *,
    schedule: Schedule = Schedule.EXPONENTIAL,
    min_delay_s: float = 0,
    throttle: Throttle | None = None,
) -> ErrorRule:
    return ErrorRule(Action.RETRY, Suggestion.RETRY_LATER, hint, schedule, min_delay_s, throttle)


def _permanent(suggestion: Suggestion, hint: str) -> ErrorRule:
    return ErrorRule(Action.PERMANENT, suggestion, hint)


def _pause(hint: str) -> ErrorRule:
    return ErrorRule(Action.PAUSE, Suggestion.CHECK_ACCOUNT, hint)


_TEMPLATE = Suggestion.SEND_TEMPLATE
_RECIPIENT = Suggestion.FIX_RECIPIENT
_REQUEST = Suggestion.FIX_REQUEST
_ACCOUNT = Suggestion.CHECK_ACCOUNT
_LATER = Suggestion.RETRY_LATER

ERROR_TABLE: Final[dict[int, ErrorRule]] = {
    0: _pause("access token could not be authenticated: refresh WAQ_ACCESS_TOKEN"),
    1: _retry("invalid request or a Meta server error: check metastatus.com if it persists"),
    2: _retry("Meta is temporarily down or overloaded"),
    3: _pause("the app lacks a capability or permission: check the app's permissions"),
    4: _retry(
        "the app hit its Graph API call rate limit: slow every sender down", throttle=Throttle.APP
    ),
    10: _pause("permission not granted or removed: re-grant whatsapp_business_messaging"),
    33: _pause("this business phone number was deleted"),
    100: _permanent(_REQUEST, "unsupported or misspelt parameter, or a value too long"),
    190: _pause("access token expired: refresh it"),
    368: _pause("the WhatsApp Business Account is restricted for a policy violation"),
    470: _permanent(_TEMPLATE, "outside the 24-hour window: send an approved template instead"),
    2500: _pause("no access token was sent: set WAQ_ACCESS_TOKEN"),
    80007: _retry(
        "the WhatsApp Business Account hit its rate limit: slow down", throttle=Throttle.APP
    ),
    130403: _permanent(_RECIPIENT, "the business has blocked this user: do not retry"),
    130429: _retry(
        "Cloud API throughput reached for this number: slow the number down",
        throttle=Throttle.NUMBER,
    ),
    130472: _permanent(_LATER, "the user is part of a marketing experiment; not sent, not billed"),
    130497: _permanent(_ACCOUNT, "the account may not message users in this country"),
    131000: _retry("Meta reported an unknown error"),
    131005: _pause("permission not granted or removed"),
    131008: _permanent(_REQUEST, "a required parameter is missing"),
    131009: _permanent(
        _REQUEST, "a parameter value is invalid (or a reaction targets an old message)"
    ),
    131016: _retry("Meta's service is temporarily unavailable"),
    131021: _permanent(_RECIPIENT, "the sender and the recipient are the same number"),
    131026: _permanent(
        _RECIPIENT, "not a WhatsApp number, or the user must accept the terms or update the app"
    ),
    131030: _permanent(_RECIPIENT, "recipient not in the test number's allowed list (max 5)"),
    131031: _pause("the account is locked: check the number's health_status"),
    131037: _pause("the number has no approved display name"),
    131042: _pause("payment problem (payment method, credit line, currency or time zone)"),
    131045: _pause("phone number registration error: register the number"),
    131047: _permanent(_TEMPLATE, "outside the 24-hour window: send an approved template instead"),
    131048: _pause("spam rate limit: too many messages were blocked or flagged; fix quality first"),
    131049: _permanent(_LATER, "Meta limited marketing to this user: wait at least 24 h"),
    131050: _permanent(_RECIPIENT, "the user stopped marketing messages from you: do not retry"),
    131051: _permanent(_REQUEST, "unsupported message type"),
    131052: _permanent(_REQUEST, "media sent by the user could not be downloaded"),
    131053: _permanent(_REQUEST, "media could not be uploaded: check its type, size and URL"),
    131056: _retry(
        "pair rate limit: back off 4^x seconds for this recipient only",
        schedule=Schedule.PAIR,
        throttle=Throttle.PAIR,
    ),
    131057: _retry("account in maintenance mode (throughput upgrade)", min_delay_s=60),
    131062: _permanent(_RECIPIENT, "business-scoped user ids are not supported for this message"),
    131063: _pause("marketing templates are disabled on the Cloud API for this account"),
    131064: _pause("messaging limit reached after template classification violations"),
    132000: _permanent(_REQUEST, "template parameter count does not match the template"),
    132001: _permanent(_REQUEST, "template does not exist in this language or is not approved"),
    132005: _permanent(_REQUEST, "template text too long once filled in"),
    132007: _permanent(_REQUEST, "template content violates a WhatsApp policy"),
    132012: _permanent(_REQUEST, "template parameters formatted incorrectly"),
    132015: _permanent(_REQUEST, "template paused for low quality"),
    132016: _permanent(_REQUEST, "template permanently disabled: create a new one"),
    132018: _permanent(_REQUEST, "template validation error"),
    132068: _permanent(_REQUEST, "the flow is blocked"),
    132069: _permanent(_LATER, "the flow is throttled: retry in about an hour"),
    133000: _pause("a previous deregistration failed: re-register the number"),
    133004: _retry("Meta's server is temporarily unavailable"),
    133005: _pause("two-step verification PIN incorrect"),
    133006: _pause("the number needs verification before registering"),
    133008: _pause("too many two-step verification PIN guesses"),
    133009: _retry("two-step verification PIN entered too quickly"),
    133010: _pause("the phone number is not registered on the Cloud API"),
    133015: _retry("the number was recently deleted; deletion is not complete", min_delay_s=300),
    133016: _pause("register/deregister attempt limit reached for this number"),
    134011: _pause("WhatsApp Payments terms of service not accepted"),
    135000: _permanent(_REQUEST, "unknown error in the request parameters"),
    137000: _permanent(_RECIPIENT, "the user's identity changed: re-verify the user"),
}

# Codes 200-299 are all "permission not granted or removed".
_PERMISSION_RANGE: Final = range(200, 300)
_PERMISSION_RULE: Final = _pause("permission not granted or removed (or no access token)")

# Code 100 with subcode 33: the phone_number_id does not exist or the token cannot reach
# it. Every message to that number would fail the same way, so stop the number.
_UNKNOWN_OBJECT_SUBCODE: Final = 33
_UNKNOWN_OBJECT_RULE: Final = _pause(
    "the phone_number_id does not exist or the token cannot use it"
)

_UNKNOWN_TRANSIENT: Final = _retry("Meta answered with an unknown transient error")
_UNKNOWN_AUTH: Final = _pause("Meta refused the credentials (unknown code, HTTP 401/403)")
_UNKNOWN_PERMANENT: Final = _permanent(
    Suggestion.CONTACT_SUPPORT, "Meta refused the request with an unknown error code"
)


def rule_for(meta_code: int, *, http_status: int, subcode: int | None = None) -> ErrorRule:
    """The rule for an error; unknown codes fall back on the HTTP status."""
    if meta_code == 100 and subcode == _UNKNOWN_OBJECT_SUBCODE:
        return _UNKNOWN_OBJECT_RULE
    if (rule := ERROR_TABLE.get(meta_code)) is not None:
        return rule
    if meta_code in _PERMISSION_RANGE:
        return _PERMISSION_RULE
    if http_status in (401, 403):
        return _UNKNOWN_AUTH
    if http_status == 429 or http_status >= 500:
        return _UNKNOWN_TRANSIENT
    if 400 <= http_status < 500:
        return _UNKNOWN_PERMANENT
    return _UNKNOWN_TRANSIENT
