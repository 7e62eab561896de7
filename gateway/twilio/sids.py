"""Twilio's identifiers: two letters naming the kind, then 32 hex digits (CA call, MZ stream, AC account).

Every SID that comes from outside is checked against its shape before it is used, logged or put in a file name,
so hostile text (newlines, escapes, paths) never travels as a SID.
"""

from __future__ import annotations

import re

_SID = {kind: re.compile(kind + r"[0-9a-fA-F]{32}") for kind in ("CA", "MZ", "AC")}


def is_sid(kind: str, value: object) -> bool:
    """True when ``value`` is a SID of ``kind`` ("CA", "MZ" or "AC")."""
    return isinstance(value, str) and _SID[kind].fullmatch(value) is not None


def is_call_sid(value: object) -> bool:
    return is_sid("CA", value)


def is_stream_sid(value: object) -> bool:
    return is_sid("MZ", value)


def is_account_sid(value: object) -> bool:
    return is_sid("AC", value)
