"""Protocol checks: every message the gateway sends, validated as Twilio would before acting on it.

Twilio accepts three events from a Media Streams server, each with exactly its fields: ``media``
(``media.payload``, base64 mu-law), ``mark`` (``mark.name``, a string) and ``clear``; each carries the
stream's ``streamSid``. A message Twilio would refuse (a binary frame, not JSON, an unknown event, a
missing or extra field, the wrong stream, a payload that is not base64, anything before ``start``) is
counted as a :class:`~gateway.tooling.replay.report.Violation` and ignored, as Twilio ignores it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from ..report import (
    BAD_FIELD,
    BEFORE_START,
    BINARY_FRAME,
    EXTRA_FIELD,
    INVALID_BASE64,
    INVALID_JSON,
    MISSING_FIELD,
    UNKNOWN_EVENT,
    WRONG_STREAM_SID,
    Violation,
)

# The gateway's messages as Twilio accepts them: event -> (top-level fields, fields of the nested object).
SERVER_EVENTS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "media": (frozenset({"event", "streamSid", "media"}), frozenset({"payload"})),
    "mark": (frozenset({"event", "streamSid", "mark"}), frozenset({"name"})),
    "clear": (frozenset({"event", "streamSid"}), frozenset()),
}


@dataclass(slots=True)
class Validated:
    """A message that passed: its event, the parsed body, and (for ``media``) the decoded audio."""

    event: str
    body: dict[str, Any] = field(default_factory=dict)
    audio: bytes = b""


class ProtocolChecker:
    """Validates the gateway's messages for one stream; what it refused is in :attr:`violations`."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []

    def _violation(self, now_ms: float, kind: str, reason: str) -> None:
        self.violations.append(Violation(now_ms, kind, reason))

    def _exact_fields(self, now_ms: float, event: str, obj: dict[str, Any], wanted: frozenset[str], prefix: str) -> bool:
        """Twilio refuses a message with a field missing or one it does not know (31951): count either."""
        missing = wanted - obj.keys()
        if missing:
            self._violation(now_ms, MISSING_FIELD, f"{event}: missing {sorted(prefix + m for m in missing)}")
            return False
        extra = obj.keys() - wanted
        if extra:
            self._violation(now_ms, EXTRA_FIELD, f"{event}: extra {sorted(prefix + e for e in extra)}")
            return False
        return True

    def check(self, message: str | bytes, now_ms: float, *, started: bool, stream_sid: str) -> Validated | None:
        """Parse one message at the edge; a message Twilio would refuse is counted and None returned."""
        if isinstance(message, bytes | bytearray | memoryview):
            self._violation(now_ms, BINARY_FRAME, f"binary frame of {len(message)} bytes")
            return None
        if not started:
            self._violation(now_ms, BEFORE_START, "message before the stream started")
            return None
        try:
            msg = json.loads(message)
        except ValueError as exc:
            self._violation(now_ms, INVALID_JSON, f"not JSON: {exc}")
            return None
        if not isinstance(msg, dict):
            self._violation(now_ms, INVALID_JSON, f"a JSON {type(msg).__name__}, not an object")
            return None
        event = msg.get("event")
        if event is None:
            self._violation(now_ms, MISSING_FIELD, "no 'event'")
            return None
        if event not in SERVER_EVENTS:
            self._violation(now_ms, UNKNOWN_EVENT, f"unknown event {event!r}")
            return None
        fields, inner_fields = SERVER_EVENTS[event]
        if not self._exact_fields(now_ms, event, msg, fields, ""):
            return None
        if msg["streamSid"] != stream_sid:
            self._violation(now_ms, WRONG_STREAM_SID, f"{event}: streamSid {msg['streamSid']!r} is not this stream's")
            return None
        if not inner_fields:
            return Validated(event, msg)
        inner = msg[event]
        if not isinstance(inner, dict):
            self._violation(now_ms, BAD_FIELD, f"{event}: '{event}' is not an object")
            return None
        if not self._exact_fields(now_ms, event, inner, inner_fields, f"{event}."):
            return None
        if event == "mark":
            if not isinstance(inner["name"], str):
                self._violation(now_ms, BAD_FIELD, "mark: 'mark.name' is not a string")
                return None
            return Validated(event, msg)
        payload = inner["payload"]
        if not isinstance(payload, str):
            self._violation(now_ms, BAD_FIELD, "media: 'media.payload' is not a string")
            return None
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            self._violation(now_ms, INVALID_BASE64, f"media: payload is not base64: {exc}")
            return None
        return Validated(event, msg, audio)


__all__ = ["SERVER_EVENTS", "ProtocolChecker", "Validated"]
