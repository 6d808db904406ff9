"""Phone numbers: everything inside the program is E.164 (`+5511999990001`)."""

from __future__ import annotations

import functools

import phonenumbers

from whatsap2p.errors import InvalidPhoneNumber

__all__ = ["DEFAULT_REGION", "looks_like_phone", "normalise_phone"]

DEFAULT_REGION = "BR"


@functools.lru_cache(maxsize=4096)  # parsing is slow (Python), and senders repeat numbers
def normalise_phone(text: str, region: str = DEFAULT_REGION) -> str:
    """Return `text` as an E.164 number, or raise InvalidPhoneNumber saying why."""
    candidate = text.strip()
    if not candidate or len(candidate) > 32:
        raise InvalidPhoneNumber(f"invalid phone number {text!r}")
    try:
        parsed = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(f"invalid phone number {text!r}: {exc._msg}") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhoneNumber(f"invalid phone number {text!r}")
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


@functools.lru_cache(maxsize=4096)
def looks_like_phone(text: str) -> bool:
    """True when `text` is written like a number (digits, spaces, + - ( ) .), not like a name."""
    stripped = text.strip()
    return (
        bool(stripped)
        and any(c.isdigit() for c in stripped)
        and all(c.isdigit() or c in "+-(). " for c in stripped)
    )
