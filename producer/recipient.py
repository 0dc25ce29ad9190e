"""Recipients as E.164 numbers.

Meta prepends the *business* number's country code to a number given without ``+``, which
sends to the wrong person when the caller meant an international number. waq therefore reads
every number as international (a ``wa_id`` such as ``16505551234`` already is) and parses it
with Google's phone-number metadata, refusing what cannot be a phone number.
"""

from __future__ import annotations

import re

import phonenumbers
from pydantic_core import PydanticCustomError

__all__ = ["normalize_recipient", "wa_id_of"]

_ALLOWED = re.compile(r"^\+?[0-9\s().\-]+$")  # ASCII digits: \d takes any script's


def normalize_recipient(raw: str) -> str:
    """Return ``raw`` as E.164 (``+16505551234``), or raise a validation error saying why."""
    text = raw.strip()
    if not text or not _ALLOWED.match(text):
        raise PydanticCustomError(
            "phone_number", "must be a phone number with country code, like +16505551234"
        )
    digits = re.sub(r"[^0-9]", "", text)
    try:
        number = phonenumbers.parse("+" + digits)
    except phonenumbers.NumberParseException:
        raise PydanticCustomError(
            "phone_number", "must be a phone number with country code, like +16505551234"
        ) from None
    if not phonenumbers.is_possible_number(number):
        raise PydanticCustomError(
            "phone_number", "{raw} cannot be a phone number in any country", {"raw": raw}
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def wa_id_of(e164: str) -> str:
    """The WhatsApp id Meta reports for a number: its E.164 digits without ``+``."""
    return e164.removeprefix("+")
