"""Log lines a peer cannot forge: gateway.observe.logsafe's formatter and safe()."""

import io
import logging
import sys

from hypothesis import given, settings as hypothesis_settings, strategies as st

from gateway.observe.logsafe import MAX_MESSAGE_CHARS, SafeFormatter, escape_controls, safe

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SUFFIX_MAX = 40  # "... [truncated, N characters]"


def _record(msg: object, *args: object, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("gateway.test", logging.INFO, __file__, 1, msg, args or None, exc_info)


def test_control_characters_are_escaped():
    line = SafeFormatter(FORMAT).format(_record("call %s ended", "CA1\r\n2025-01-01 ERROR forged\x1b[31m\x85\u2028\u2029\x00\x7f\u202e"))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    for char in "\x85\u2028\u2029\x00\x7f\u202e":
        assert char not in line
    assert line.endswith(r"call CA1\r\n2025-01-01 ERROR forged\x1b[31m\x85\u2028\u2029\x00\x7f\u202e ended")
    # Ordinary text, non-ASCII letters included, is left alone.
    assert SafeFormatter("%(message)s").format(_record("café 📞 \"quoted\" back\\slash")) == "café 📞 \"quoted\" back\\slash"


def test_a_traceback_keeps_its_newlines_but_its_message_line_cannot_hide_escapes():
    try:
        raise ValueError("bad sid \x1b[2J\r")
    except ValueError:
        record = _record("tool %s failed", "x\ny", exc_info=sys.exc_info())
    text = SafeFormatter(FORMAT).format(record)
    first, *rest = text.split("\n")
    assert first.endswith(r"tool x\ny failed")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == r"ValueError: bad sid \x1b[2J\r"
    assert "\x1b" not in text and "\r" not in text


def test_a_long_message_is_capped():
    line = SafeFormatter("%(message)s").format(_record("x" * 100_000))
    assert line.startswith("x" * MAX_MESSAGE_CHARS) and len(line) <= MAX_MESSAGE_CHARS + SUFFIX_MAX
    assert line.endswith("... [truncated, 100000 characters]")
    # Escapes count: a message of separators (6 characters each once escaped) is capped too.
    line = SafeFormatter("%(message)s", max_message_chars=100).format(_record("\u2028" * 90))
    assert len(line) <= 100 + SUFFIX_MAX and "\u2028" not in line
    assert SafeFormatter("%(message)s").format(_record("short")) == "short"


def test_installed_by_the_cli(monkeypatch):
    from gateway import cli

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []
    try:
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        cli._configure_logging("info")
        assert isinstance(root.handlers[0].formatter, SafeFormatter)
        logging.getLogger("gateway.test").warning("call %s", "CA1\nforged")
        assert stream.getvalue().count("\n") == 1 and r"CA1\nforged" in stream.getvalue()
    finally:
        root.handlers, level = saved
        root.setLevel(level)


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.text(max_size=6000), st.lists(st.text(max_size=200), max_size=3))
def test_no_formatted_line_can_break_or_run_long(message, args):
    formatter = SafeFormatter(FORMAT)
    record = _record(message.replace("%", "%%") + " %s" * len(args), *args)
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "\u2028" not in line and "\u2029" not in line and "\x85" not in line
    assert len(line) <= MAX_MESSAGE_CHARS + SUFFIX_MAX


def test_safe_renders_an_untrusted_value():
    assert safe("CA123") == "'CA123'"
    assert safe("CA\n\x1b[31m\u2028") == r"'CA\n\x1b[31m\u2028'"
    assert safe("x" * 100) == "'" + "x" * 64 + "…'"
    assert safe("abcdef", limit=3) == "'abc…'"
    assert safe(None) == "'None'" and safe(42) == "'42'"


@given(st.text(), st.integers(min_value=1, max_value=200))
def test_safe_is_one_short_line(value, limit):
    shown = safe(value, limit)
    assert "\n" not in shown and "\r" not in shown and "\x1b" not in shown and "\u2028" not in shown
    assert escape_controls(shown) == shown
    assert len(shown) <= 4 + 10 * limit  # each character is at most \U0001xxxx once escaped


def test_escape_controls_can_keep_newlines():
    assert escape_controls("a\nb\r\x1b") == r"a\nb\r\x1b"
    assert escape_controls("a\nb\r\x1b", keep_newlines=True) == "a\nb\\r\\x1b"
