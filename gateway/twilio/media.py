"""Twilio Media Streams messages: parse what Twilio sends (once, at the edge) and build what we send.

Parsing turns one text frame into a typed event or raises :class:`MediaStreamError` with a reason
that is safe to log. The call core only ever sees these dataclasses.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Union

import orjson

from gateway.audio.convert import AudioBytes, Base64Audio, audio_base64
from gateway.twilio.sids import is_account_sid, is_call_sid, is_stream_sid


class MediaStreamError(ValueError):
    """A frame from Twilio that is not a valid Media Streams message; the message says why.

    ``reason`` is a fixed text chosen by the gateway (a metric label, a drop counter's key); ``detail`` is what
    the peer sent that explains it, escaped and truncated, for the summarised drop log only (never a label).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# The events Twilio documents for a bidirectional Media Stream (what Twilio sends us; parse_twilio_message handles
# exactly these). Any other name is dropped as one fixed reason: a stream sending a new name per frame must not grow
# the metrics' label values.
TWILIO_EVENTS = frozenset({"connected", "start", "media", "mark", "dtmf", "stop"})
UNKNOWN_EVENT = "unknown_event"


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    encoding: str
    sample_rate: int
    custom_parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Media:
    stream_sid: str
    timestamp_ms: int
    payload: AudioBytes  # mu-law 8 kHz: a Base64Audio as parsed (decoded only if something needs the samples)


@dataclass(frozen=True, slots=True)
class MarkEcho:
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    stream_sid: str
    digit: str


@dataclass(frozen=True, slots=True)
class Stop:
    stream_sid: str


TwilioEvent = Union[Connected, Start, Media, MarkEcho, Dtmf, Stop]

_MAX_PARAMETERS = 64
_MAX_SID = 64
# Twilio's SIDs: two letters and 32 hex digits. A start naming anything else is not Twilio's, and a strict shape
# keeps hostile text (newlines, escapes) out of every log line and file name that carries a SID.
_TIMESTAMP = re.compile(r"[0-9]{1,16}")  # ms since the stream started: 16 digits is 300 000 years
_DTMF_DIGITS = frozenset("0123456789*#ABCDabcdw")


def _str(container: dict, key: str, where: str, max_len: int = 1024) -> str:
    value = container.get(key)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise MediaStreamError(f"{where + '.' if where else ''}{key} must be a non-empty string")
    return value


def _obj(container: dict, key: str) -> dict:
    value = container.get(key)
    if not isinstance(value, dict):
        raise MediaStreamError(f"{key} must be an object")
    return value


def parse_twilio_message(text: str | bytes) -> TwilioEvent:
    """Parse one text frame from Twilio (str, or its UTF-8 bytes). Raises :class:`MediaStreamError` on anything
    malformed (bytes that are not UTF-8 included)."""
    try:
        message = orjson.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError (NaN, Infinity and nesting past 1024 included)
        raise MediaStreamError("frame is not JSON") from None
    if not isinstance(message, dict):
        raise MediaStreamError("frame is not a JSON object")
    event = message.get("event")
    if event == "media":
        media = _obj(message, "media")
        payload = media.get("payload")
        if not isinstance(payload, str):
            raise MediaStreamError("media.payload must be a string")
        try:
            audio = Base64Audio.parse(payload)  # checked, not decoded: pass-through sends the same text on
        except ValueError:
            raise MediaStreamError("media.payload is not valid base64") from None
        timestamp = media.get("timestamp")
        # Twilio sends a string of digits; a JSON integer is tolerated. Nothing else (true, 1e300, "1_000", " 12 ").
        if isinstance(timestamp, str) and _TIMESTAMP.fullmatch(timestamp):
            timestamp_ms = int(timestamp)
        elif isinstance(timestamp, int) and not isinstance(timestamp, bool) and 0 <= timestamp < 10**16:
            timestamp_ms = timestamp
        elif isinstance(timestamp, (str, int)) and str(timestamp).strip().startswith("-"):
            raise MediaStreamError("media.timestamp must not be negative")
        else:
            raise MediaStreamError("media.timestamp must be a whole number of ms")
        return Media(_str(message, "streamSid", "", _MAX_SID), timestamp_ms, audio)
    if event == "mark":
        mark = _obj(message, "mark")
        return MarkEcho(_str(message, "streamSid", "", _MAX_SID), _str(mark, "name", "mark", 256))
    if event == "start":
        start = _obj(message, "start")
        media_format = start.get("mediaFormat") or {}
        if not isinstance(media_format, dict):
            raise MediaStreamError("start.mediaFormat must be an object")
        raw_params = start.get("customParameters") or {}
        if not isinstance(raw_params, dict) or len(raw_params) > _MAX_PARAMETERS:
            raise MediaStreamError("start.customParameters must be an object of at most 64 entries")
        params = {str(k)[:500]: str(v)[:500] for k, v in raw_params.items()}
        stream_sid = _str(start, "streamSid", "start", _MAX_SID)
        if not is_stream_sid(stream_sid):
            raise MediaStreamError("start.streamSid is not a Twilio stream SID")
        top_sid = message.get("streamSid")
        if top_sid is not None and top_sid != stream_sid:
            raise MediaStreamError("start.streamSid differs from streamSid")
        call_sid = _str(start, "callSid", "start", _MAX_SID)
        if not is_call_sid(call_sid):
            raise MediaStreamError("start.callSid is not a Twilio call SID")
        account_sid = start.get("accountSid", "")
        rate = media_format.get("sampleRate", 8000)
        if isinstance(rate, bool) or not isinstance(rate, int) or not 0 < rate <= 192_000:
            rate = 8000
        return Start(
            stream_sid=stream_sid,
            call_sid=call_sid,
            # Not a secret (it is in every webhook) and only compared: anything but an account SID counts as none.
            account_sid=account_sid if is_account_sid(account_sid) else "",
            encoding=str(media_format.get("encoding", "audio/x-mulaw"))[:64],
            sample_rate=rate if isinstance(rate, int) else 8000,
            custom_parameters=params,
        )
    if event == "dtmf":
        dtmf = _obj(message, "dtmf")
        digit = _str(dtmf, "digit", "dtmf", 8)
        if not all(ch in _DTMF_DIGITS for ch in digit):
            raise MediaStreamError("dtmf.digit is not a DTMF digit")
        return Dtmf(_str(message, "streamSid", "", _MAX_SID), digit)
    if event == "stop":
        return Stop(_str(message, "streamSid", "", _MAX_SID))
    if event == "connected":
        protocol = message.get("protocol", "")
        return Connected(protocol[:64] if isinstance(protocol, str) else "")
    # ascii(): no newline, escape or bidi control of the peer's reaches a log line; 40 characters are enough.
    raise MediaStreamError(UNKNOWN_EVENT, ascii(str(event)[:40]))


def accepted_message(event: TwilioEvent) -> dict[str, Any]:
    """The Twilio message ``event`` was parsed from, rebuilt from what the parser kept: what the gateway accepted,
    without any field it ignored (a recording holds this, never the raw frame a peer sent)."""
    if isinstance(event, Media):
        return {"event": "media", "streamSid": event.stream_sid,
                "media": {"track": "inbound", "timestamp": str(event.timestamp_ms), "payload": audio_base64(event.payload)}}
    if isinstance(event, MarkEcho):
        return mark_message(event.stream_sid, event.name)
    if isinstance(event, Start):
        start = {"streamSid": event.stream_sid, "callSid": event.call_sid, "accountSid": event.account_sid,
                 "tracks": ["inbound"], "customParameters": dict(event.custom_parameters),
                 "mediaFormat": {"encoding": event.encoding, "sampleRate": event.sample_rate, "channels": 1}}
        return {"event": "start", "streamSid": event.stream_sid, "start": start}
    if isinstance(event, Dtmf):
        return {"event": "dtmf", "streamSid": event.stream_sid, "dtmf": {"track": "inbound_track", "digit": event.digit}}
    if isinstance(event, Stop):
        return {"event": "stop", "streamSid": event.stream_sid}
    return {"event": "connected", "protocol": event.protocol}


def media_message(stream_sid: str, mulaw: AudioBytes) -> dict:
    """Audio for Twilio to queue and play (mu-law 8 kHz, any length; a Base64Audio goes as its own text)."""
    return {"event": "media", "streamSid": stream_sid, "media": {"payload": audio_base64(mulaw)}}


def mark_message(stream_sid: str, name: str) -> dict:
    """A mark Twilio echoes once everything queued before it has played (or been cleared)."""
    return {"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}


def clear_message(stream_sid: str) -> dict:
    """Drop everything Twilio has queued for playback; it echoes every pending mark at once."""
    return {"event": "clear", "streamSid": stream_sid}


_fallback_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode_json(message: dict[str, Any]) -> bytes:
    """One message (to Twilio or to the model) as compact JSON, UTF-8 bytes, with orjson (several times faster than
    the json module on every 20 ms frame); anything orjson refuses (an integer past 64 bits) goes through json."""
    try:
        return orjson.dumps(message)
    except TypeError:  # orjson.JSONEncodeError
        return _fallback_encode(message).encode("utf-8")


def encode_message(message: dict[str, Any]) -> str:
    """:func:`encode_json` as text (an ASGI text frame is a str)."""
    return encode_json(message).decode("utf-8")
