"""Log lines for operators: JSON objects (``LOG_FORMAT=json``, production) or readable text (development).

Every line logged while a call is handled carries its ``call_sid`` and ``stream_sid``: the media-stream shell
binds them with :func:`bind_call` in a context variable that every task of the call inherits, and
:class:`CallContextFilter` adds them to each record. Lines are escaped and bounded as :mod:`gateway.observe.logsafe` does;
phone numbers (E.164) are masked unless ``LOG_FULL_NUMBERS``; a media-stream URL's credential is never printed
(uvicorn logs each WebSocket's path).
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
from typing import Any, Callable, TypeVar

import orjson

from gateway.observe.logsafe import (
    LIFESPAN_FAILED, MAX_MESSAGE_CHARS, SafeFormatter, escape_controls, lifespan_traceback,
)

_E164 = re.compile(r"(?:\+|%2[Bb])\d{6,15}")  # as written, or URL-encoded in a query string
_STREAM_CREDENTIAL = re.compile(r"(/media-stream/)[^\s\"']+")

T = TypeVar("T")

_call: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("gateway_call", default=None)


def bind_call() -> dict[str, str]:
    """Start a call's log context (in the task that handles the stream, before it starts others); fill the
    returned dict's ``call_sid`` and ``stream_sid`` once known."""
    context = {"call_sid": "", "stream_sid": ""}
    _call.set(context)
    return context


def in_call_context(context: dict[str, str], handle: Callable[[T], None], item: T) -> None:
    """``handle(item)`` with the call's log context, for work a call does outside its own tasks: frames handed over
    by callback run in the event loop's context, where the call's SIDs would be missing from log lines."""
    token = _call.set(context)
    try:
        handle(item)
    finally:
        _call.reset(token)


def mask_number(number: str, full: bool = False) -> str:
    """``+14155550123`` -> ``+1415*****23``: enough to tell calls apart, not enough to dial (``full``: as is)."""
    if full:
        return number
    if len(number) < 7:
        return "*" * len(number)
    head = 7 if number[:3].upper() == "%2B" else 5  # keep the country and area code, encoded or not
    return number[:head] + "*" * (len(number) - head - 2) + number[-2:]


def redact(text: str, full_numbers: bool = False) -> str:
    text = _STREAM_CREDENTIAL.sub(r"\1<credential>", text)
    return text if full_numbers else _E164.sub(lambda match: mask_number(match.group()), text)


class CallContextFilter(logging.Filter):
    """Adds ``call_sid`` and ``stream_sid`` (empty outside a call) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _call.get()
        record.call_sid = context["call_sid"] if context else ""
        record.stream_sid = context["stream_sid"] if context else ""
        return True


class TextFormatter(SafeFormatter):
    """``time LEVEL logger: message [call_sid=.. stream_sid=..]``, escaped, numbers masked."""

    def __init__(self, full_numbers: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.full_numbers = full_numbers

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = redact(super().formatMessage(record), self.full_numbers)
        call_sid = getattr(record, "call_sid", "")
        if call_sid and call_sid not in text:
            text += f" [call_sid={call_sid} stream_sid={getattr(record, 'stream_sid', '')}]"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, ``call_sid``, ``stream_sid``, ``exc``."""

    def __init__(self, full_numbers: bool = False) -> None:
        super().__init__()
        self.full_numbers = full_numbers

    def format(self, record: logging.LogRecord) -> str:
        trace = lifespan_traceback(record)  # a failed start-up's traceback, as uvicorn logs it: shown as "exc"
        message = LIFESPAN_FAILED if trace else redact(record.getMessage()[:MAX_MESSAGE_CHARS], self.full_numbers)
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
        }
        call_sid = getattr(record, "call_sid", "")
        if call_sid:
            line["call_sid"] = call_sid
            line["stream_sid"] = getattr(record, "stream_sid", "")
        if record.exc_info:
            line["exc"] = escape_controls(self.formatException(record.exc_info), keep_newlines=True)
        elif trace:
            line["exc"] = trace
        return orjson.dumps(line).decode()  # JSON escapes every control character: no line can be forged


def configure_logging(level: str, log_format: str = "text", *, full_numbers: bool = False) -> None:
    """Log to stderr in ``log_format``; uvicorn's own lines (``log_config=None``) go the same way."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(full_numbers) if log_format == "json" else TextFormatter(full_numbers))
    handler.addFilter(CallContextFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler])  # a no-op where logging is set up (pytest)
