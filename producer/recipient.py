"""Recipients as E.164 numbers.

Meta prepends the *business* number's country code to a number given without ``+``, which
sends to the wrong person when the caller meant an international number. waq therefore reads
every number as international (a ``wa_id`` such as ``16505551234`` already is) and parses it
with Google's phone-number metadata, refusing what cannot be a phone number.
"""

from __future__ import annotations

import functools
import re

import phonenumbers
from pydantic_core import PydanticCustomError

__all__ = ["normalize_recipient", "wa_id_of"]

_ALLOWED = re.compile(r"^\+?[0-9\s().\-]+$")  # ASCII digits: \d takes any script's
_NOT_A_NUMBER = "must be a phone number with country code, like +16505551234"


def normalize_recipient(raw: str) -> str:
    """Return ``raw`` as E.164 (``+16505551234``), or raise a validation error saying why.

    Parsing with Google's metadata costs ~35 µs, a third of validating a message; services
    write to the same customers again and again, so answers are remembered (an LRU of 65,536
    numbers, a few MB).
    """
    # Only short inputs are remembered: a hostile megabyte "number" must not be kept.
    e164, error = _remembered(raw) if len(raw) <= 40 else _normalize(raw)
    if error is not None:
        raise PydanticCustomError("phone_number", error, {"raw": raw})
    return e164


def _normalize(raw: str) -> tuple[str, str | None]:
    """(E.164, None), or ("", why not): the error is rebuilt per call, never shared."""
    text = raw.strip()
    if not text or not _ALLOWED.match(text):
        return "", _NOT_A_NUMBER
    digits = re.sub(r"[^0-9]", "", text)
    try:
        number = phonenumbers.parse("+" + digits)
    except phonenumbers.NumberParseException:
        return "", _NOT_A_NUMBER
    if not phonenumbers.is_possible_number(number):
        return "", "{raw} cannot be a phone number in any country"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), None


_remembered = functools.lru_cache(maxsize=65536)(_normalize)


def wa_id_of(e164: str) -> str:
    """The WhatsApp id Meta reports for a number: its E.164 digits without ``+``."""
    return e164.removeprefix("+")
