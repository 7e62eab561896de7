"""The scripted agent of the local Realtime server: replies and function calls from a TOML file.

``LocalRealtimeServer(agent="scripted:/path/to/script.toml")`` (or ``"scripted:NAME"`` for
``gateway/local/scripts/NAME.toml``) gives every session a fresh :class:`ScriptedAgent` that answers
each response (``response.create``, manual or VAD-triggered) with the next reply of the script::

    on_exhausted = "silence"      # when the replies run out: "silence" (default), "repeat" or "echo"

    [[replies]]                   # one per response, consumed in order
    say = "Hello! This is Acme calling about your appointment."
    expect_instructions_contain = "Acme"   # optional: see below

    [[replies]]
    sample = "greeting"           # a bundled sample (gateway/samples/NAME.wav) as the audio
    say = "Hi there!"             # the transcript (with a sample: optional, default "")

    [[replies]]
    echo = true                   # say the caller's latest utterance back, like the echo agent

    [[replies]]
    say = "Let me book that."
    function_call = { name = "book", arguments = { day = "Tuesday" } }

    [[replies]]
    when_function_output = true   # answers the response that follows a function_call_output
    say = "Done, I booked it."

    [[replies]]
    say = "Goodbye!"
    function_call = { name = "end_call", arguments = {} }

Fields of a reply (at least one of ``say``, ``sample``, ``echo``, ``function_call``):

* ``say``: the transcript. Without ``sample`` or ``echo`` the audio is a speech-like signal of
  ``max(600, 65 * len(say))`` ms (``audio_ms`` overrides the duration); ``say = ""`` says nothing.
* ``sample``: a bundled sample as the audio. ``echo = true``: the caller's latest utterance (or text)
  as the audio (the transcript is ``say`` if given, else the echo agent's). At most one of the two.
* ``function_call``: ``{name, arguments}``, ``arguments`` a table (sent as JSON text) or a string of
  JSON. With audio, the response holds the audio message first, then the call item; without, just
  the call.
* ``when_function_output = true``: reserved for responses whose conversation ends with a
  ``function_call_output`` (the tool result). Such a response takes the next unused reply marked so;
  every other response takes the next unused unmarked reply. When no marked reply is left, a
  response after a tool result takes the next unmarked one, so a script without marks is a plain
  sequence.
* ``expect_instructions_contain = "..."``: when the instructions of the response (the session's, or
  ``response.create``'s override) do not contain the text, the reply is replaced by a spoken
  ``"INSTRUCTIONS MISMATCH: ..."`` transcript (no function call), and the mismatch is kept in
  :attr:`ScriptedAgent.mismatches`: an end-to-end test can prove the per-call instructions reached
  the model.

When the replies run out: ``silence`` answers with an empty audio message; ``repeat`` says the last
reply again, without its function call (a script must not loop on a tool); ``echo`` answers like the
echo agent. A bad script raises :class:`ScriptError` (a ``ValueError``) naming the file and the
field, when the server is created.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from gateway.audio.wavio import WavError, sample_names

from .agents import CallerTurn, EchoAgent, FunctionCall, Reply, sample_audio, speech_like

MS_PER_CHARACTER = 65
MIN_SAY_MS = 600
MAX_AUDIO_MS = 120_000
EXHAUSTED_MODES = ("silence", "repeat", "echo")
MISMATCH = "INSTRUCTIONS MISMATCH"
REPLY_FIELDS = ("say", "sample", "echo", "audio_ms", "function_call", "when_function_output", "expect_instructions_contain")
TOP_FIELDS = ("replies", "on_exhausted")
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ScriptError(ValueError):
    """A script that cannot be used; the message names the file and the field."""


@dataclass(slots=True, frozen=True)
class ScriptedReply:
    index: int  # position in the script's replies
    say: str | None = None
    sample: str | None = None
    echo: bool = False
    audio_ms: int | None = None
    function_call: FunctionCall | None = None
    when_function_output: bool = False
    expect_instructions_contain: str | None = None


@dataclass(slots=True, frozen=True)
class Script:
    path: str
    replies: tuple[ScriptedReply, ...]
    on_exhausted: str = "silence"


def bundled_scripts() -> list[str]:
    """The scripts bundled in ``gateway/local/scripts`` (names without ``.toml``)."""
    folder = resources.files("gateway").joinpath("local", "scripts")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def resolve_script(spec: str) -> Path:
    """``scripted:`` value -> file: a bare name (no ``/``, no ``.toml``) is a bundled script."""
    if not spec:
        raise ScriptError("the scripted agent needs a script: 'scripted:/path/to/script.toml' or 'scripted:NAME'")
    if "/" not in spec and "\\" not in spec and not spec.endswith(".toml"):
        resource = resources.files("gateway").joinpath("local", "scripts", f"{spec}.toml")
        if not resource.is_file():
            raise ScriptError(f"no bundled script {spec!r}; have {bundled_scripts()} (or give a path to a .toml file)")
        return Path(str(resource))
    return Path(spec).expanduser()


def load_script(spec: str | Path) -> Script:
    """Read and check a script (``spec``: a path, or a bundled script's name). Parsed once per file version."""
    path = resolve_script(str(spec))
    try:
        stat = path.stat()
    except OSError as exc:
        raise ScriptError(f"{path}: cannot read the script: {exc.strerror or exc}") from None
    return _load(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=32)
def _load(path: str, mtime_ns: int, size: int) -> Script:
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ScriptError(f"{path}: cannot read the script: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScriptError(f"{path}: invalid TOML: {exc}") from None
    return parse_script(data, path)


def parse_script(data: dict[str, Any], path: str = "<script>") -> Script:
    """A parsed TOML document -> :class:`Script` (or :class:`ScriptError` naming ``path`` and the field)."""

    def fail(where: str, message: str) -> ScriptError:
        return ScriptError(f"{path}: {where}: {message}")

    unknown = sorted(set(data) - set(TOP_FIELDS))
    if unknown:
        raise fail(unknown[0], f"unknown field; expected {', '.join(TOP_FIELDS)}")
    on_exhausted = data.get("on_exhausted", "silence")
    if on_exhausted not in EXHAUSTED_MODES:
        raise fail("on_exhausted", f"must be one of {', '.join(repr(m) for m in EXHAUSTED_MODES)}, not {on_exhausted!r}")
    if "replies" not in data:
        raise fail("replies", "missing: add at least one [[replies]] table")
    raw = data["replies"]
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise fail("replies", "must be an array of tables ([[replies]])")
    return Script(path, tuple(_parse_reply(r, i, fail) for i, r in enumerate(raw)), on_exhausted)


def _parse_reply(raw: dict[str, Any], index: int, fail: Any) -> ScriptedReply:
    where = f"replies[{index}]"

    def get(name: str, kind: type | tuple[type, ...], what: str) -> Any:
        value = raw.get(name)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise fail(f"{where}.{name}", f"must be {what}, not {type(value).__name__}")
        return value

    unknown = sorted(set(raw) - set(REPLY_FIELDS))
    if unknown:
        raise fail(f"{where}.{unknown[0]}", f"unknown field; expected one of {', '.join(REPLY_FIELDS)}")
    say = get("say", str, "a string")
    sample = get("sample", str, "a string (a bundled sample's name)")
    echo = bool(get("echo", bool, "true or false"))
    audio_ms = get("audio_ms", int, "an integer (milliseconds)")
    when = bool(get("when_function_output", bool, "true or false"))
    expect = get("expect_instructions_contain", str, "a string")
    if say is None and sample is None and not echo and raw.get("function_call") is None:
        raise fail(where, "says nothing: give at least one of say, sample, echo, function_call")
    if sample is not None and echo:
        raise fail(f"{where}.sample", "a reply takes its audio from sample or echo, not both")
    if audio_ms is not None:
        if sample is not None or echo:
            raise fail(f"{where}.audio_ms", "only for generated audio (not with sample or echo)")
        if not 0 <= audio_ms <= MAX_AUDIO_MS:
            raise fail(f"{where}.audio_ms", f"must be between 0 and {MAX_AUDIO_MS}")
    if sample is not None:
        try:
            sample_audio(sample)
        except FileNotFoundError:
            raise fail(f"{where}.sample", f"no bundled sample {sample!r}; have {sample_names()}") from None
        except (OSError, WavError) as exc:
            raise fail(f"{where}.sample", f"cannot read sample {sample!r}: {exc}") from None
    return ScriptedReply(
        index=index,
        say=say,
        sample=sample,
        echo=echo,
        audio_ms=audio_ms,
        function_call=_parse_call(raw.get("function_call"), f"{where}.function_call", fail),
        when_function_output=when,
        expect_instructions_contain=expect,
    )


def _parse_call(raw: Any, where: str, fail: Any) -> FunctionCall | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise fail(where, "must be a table: { name = \"...\", arguments = { ... } }")
    unknown = sorted(set(raw) - {"name", "arguments"})
    if unknown:
        raise fail(f"{where}.{unknown[0]}", "unknown field; expected name, arguments")
    name = raw.get("name")
    if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
        raise fail(f"{where}.name", "must be a function name (1-64 letters, digits, _ or -)")
    arguments = raw.get("arguments", {})
    if isinstance(arguments, dict):
        text = json.dumps(arguments, default=str)  # TOML dates and times become strings
    elif isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError as exc:
            raise fail(f"{where}.arguments", f"is not JSON text: {exc}") from None
        if not isinstance(parsed, dict):
            raise fail(f"{where}.arguments", "must be a JSON object")
        text = arguments
    else:
        raise fail(f"{where}.arguments", f"must be a table or a string of JSON, not {type(arguments).__name__}")
    return FunctionCall(name, text)




@lru_cache(maxsize=64)
def _speech(ms: int) -> np.ndarray:
    return speech_like(ms)


def say_ms(text: str) -> int:
    """The duration of generated audio for a transcript: 65 ms a character, at least 0.6 s; none for ""."""
    return max(MIN_SAY_MS, MS_PER_CHARACTER * len(text)) if text else 0


@dataclass(slots=True)
class ScriptedAgent:
    """Plays one :class:`Script` for one session (see the module docstring)."""

    script: Script
    used: list[int] = field(default_factory=list)  # index of the reply behind each response (-1: fallback)
    mismatches: list[tuple[int, str, str]] = field(default_factory=list)  # (reply index, expected, instructions)
    _next: int = 0  # first reply not yet considered, unmarked ones
    _next_marked: int = 0  # same, for when_function_output ones
    _last: ScriptedReply | None = None
    _echo: EchoAgent = field(default_factory=EchoAgent)

    def reply(self, turn: CallerTurn) -> Reply:
        after_tool = bool(turn.items) and turn.items[-1].get("type") == "function_call_output"
        chosen = self._take(marked=True) if after_tool else None
        if chosen is None:
            chosen = self._take(marked=False)
        if chosen is None:
            self.used.append(-1)
            return self._exhausted(turn)
        self.used.append(chosen.index)
        self._last = chosen
        expect = chosen.expect_instructions_contain
        if expect is not None and expect not in turn.instructions:
            self.mismatches.append((chosen.index, expect, turn.instructions))
            transcript = f"{MISMATCH}: expected {expect!r} in the instructions"
            return Reply(_speech(say_ms(MISMATCH)).copy(), transcript)
        return self._render(chosen, turn, with_call=True)

    def _take(self, marked: bool) -> ScriptedReply | None:
        replies = self.script.replies
        position = self._next_marked if marked else self._next
        while position < len(replies) and replies[position].when_function_output != marked:
            position += 1
        chosen = replies[position] if position < len(replies) else None
        if marked:
            self._next_marked = position + 1
        else:
            self._next = position + 1
        return chosen

    def _exhausted(self, turn: CallerTurn) -> Reply:
        mode = self.script.on_exhausted
        if mode == "echo":
            return self._echo.reply(turn)
        if mode == "repeat" and self._last is not None:
            return self._render(self._last, turn, with_call=False)
        return Reply(np.zeros(0, np.int16), "")

    def _render(self, chosen: ScriptedReply, turn: CallerTurn, with_call: bool) -> Reply:
        call = chosen.function_call if with_call else None
        if chosen.echo:
            echoed = self._echo.reply(turn)
            return Reply(echoed.audio, echoed.transcript if chosen.say is None else chosen.say, call)
        transcript = chosen.say or ""
        if chosen.sample is not None:
            audio = sample_audio(chosen.sample).copy()
        else:
            ms = chosen.audio_ms if chosen.audio_ms is not None else say_ms(transcript)
            audio = _speech(ms).copy() if ms else np.zeros(0, np.int16)
        return Reply(audio, transcript, call)
