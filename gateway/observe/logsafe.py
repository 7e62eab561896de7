"""Log lines a peer cannot forge: control characters escaped, every message bounded.

Much of what the gateway logs comes from the other side of a socket (CallSids, stream SIDs, tool names,
HTTP headers). A CallSid holding ``"\\n2025-01-01 12:00:00 ERROR ..."`` would forge a log line, one holding
``"\\x1b]0;..."`` would drive the operator's terminal, a megabyte one would flood the log. Two defences:

* :class:`SafeFormatter` (installed by ``gateway.cli``) escapes the control characters of every formatted
  message — C0 and C1 controls (``\\n``, ``\\r``, ``\\x1b``...), U+2028/U+2029 and the bidirectional
  overrides — and caps it at :data:`MAX_MESSAGE_CHARS`. The traceback the formatter appends after the
  message keeps its line breaks (its other control characters are escaped all the same).
* :func:`safe` renders one untrusted value for a log call, ``log.info("call %s", safe(call_sid))``:
  quoted and escaped like :func:`repr`, and short, so the line is readable even before the formatter.

One message is a traceback in disguise: uvicorn logs a failed application start-up (or shutdown) with the text
Starlette's lifespan made of it (``traceback.format_exc()``) as the message itself, not as ``exc_info``.
:func:`lifespan_traceback` recognises it (uvicorn's own logger, no arguments, a message that starts as Python's
tracebacks do: nothing a peer sends can be that), and both formatters show it as a traceback, on real lines.
"""

from __future__ import annotations

import logging
import re

__all__ = ["LIFESPAN_FAILED", "MAX_MESSAGE_CHARS", "SafeFormatter", "escape_controls", "lifespan_traceback", "safe"]

MAX_MESSAGE_CHARS = 4096
LIFESPAN_FAILED = "the application's start-up (or shutdown) failed:"
_TRACEBACK_HEAD = re.compile(r"(?:  \+ )?(?:Exception Group )?Traceback \(most recent call last\):\n")
# C0 controls, DEL, C1 controls (NEL included), line/paragraph separators, bidirectional controls.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``, ``\\u2028``).

    With ``keep_newlines``, ``\\n`` is kept (for a traceback); ``\\r`` and the others are still escaped.
    """
    if keep_newlines:
        return "\n".join(_CONTROLS.sub(_escape_one, line) for line in text.split("\n"))
    return _CONTROLS.sub(_escape_one, text)


def safe(value: object, limit: int = 64) -> str:
    """An untrusted value as it should appear in a log line: ``repr``-like, escaped, at most ~``limit`` chars.

    ``safe("CA\\n\\x1b[31m")`` -> ``'CA\\\\n\\\\x1b[31m'`` (quotes included); a longer value is cut and ends
    with ``…`` inside the quotes. Non-strings are rendered with :func:`str` first (``None`` -> ``'None'``).
    """
    text = value if isinstance(value, str) else str(value)
    limit = max(1, limit)
    if len(text) > limit:
        text = text[:limit]
        shown = repr(text)
        shown = shown[:-1] + "…" + shown[-1]
    else:
        shown = repr(text)
    # repr leaves printable non-ASCII alone, but U+2028/2029 and the bidi controls count as printable.
    return escape_controls(shown)


def lifespan_traceback(record: logging.LogRecord) -> str | None:
    """The traceback text of a failed start-up that uvicorn logs as a plain message (see the module docstring),
    escaped but for its line breaks; None for any other record."""
    message = record.msg
    if (record.name != "uvicorn.error" or record.args or not isinstance(message, str)
            or not _TRACEBACK_HEAD.match(message)):
        return None
    return escape_controls(message.rstrip("\n"), keep_newlines=True)


class SafeFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose message part (``fmt`` applied) cannot forge a line or run long.

    Everything ``fmt`` produces is escaped and cut at ``max_message_chars`` (then ``... [truncated, N
    characters]``); an exception's traceback and a stack trace, appended by :meth:`format`, keep their
    line breaks and have their other control characters escaped.
    """

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, style: str = "%",
                 validate: bool = True, *, max_message_chars: int = MAX_MESSAGE_CHARS, **kwargs: object) -> None:
        super().__init__(fmt, datefmt, style, validate, **kwargs)  # type: ignore[arg-type]
        self.max_message_chars = max_message_chars

    def format(self, record: logging.LogRecord) -> str:
        trace = lifespan_traceback(record)
        if trace is None:
            return super().format(record)
        # A copy: the record itself goes on to other handlers unchanged.
        shown = logging.makeLogRecord(record.__dict__)
        shown.msg, shown.args, shown.exc_info, shown.exc_text = LIFESPAN_FAILED, (), None, trace
        return super().format(shown)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        limit = self.max_message_chars
        # Cut before escaping (a huge message costs nothing), then again after (escapes are longer).
        escaped = escape_controls(text[:limit])
        if len(text) > limit or len(escaped) > limit:
            return f"{escaped[:limit]}... [truncated, {len(text)} characters]"
        return escaped

    def formatException(self, ei) -> str:  # type: ignore[no-untyped-def]
        return escape_controls(super().formatException(ei), keep_newlines=True)

    def formatStack(self, stack_info: str) -> str:
        return escape_controls(super().formatStack(stack_info), keep_newlines=True)
