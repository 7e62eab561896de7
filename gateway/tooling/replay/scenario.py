'''Replay scenarios: a call written down in TOML (the caller's script and what must hold), loaded and run.

A scenario file, with every field (all optional but one of ``turns`` / ``recording``)::

    name = "barge-in"                       # default: the file name without .toml
    description = "The caller talks over the agent's answer."

    [call]
    custom_parameters = { From = "+15550100", To = "+15550200" }  # start.customParameters (strings)
    timeout_s = 40              # the phone hangs up (ended_by "timeout") at this point at the latest; default 60
    hangup_after_ms = 800       # with no hang-up turn: silence after the last turn (and its answer) before stop; 1000
    packet_loss = 0.05          # fraction of caller frames lost at random (timestamps jump); default 0
    drop_frames = [50, 51, 52]  # these caller frames (20 ms each, from 0) are lost
    seed = 7                    # seeds packet loss and noise: a scenario runs the same every time
    noise_snr_db = 18           # white line noise on everything the caller sends, 18 dB below its speech
    audio_format = "pcm16"      # the gateway mode the scenario is meant for ("pcm16" | "pcmu"); informational

    [[turns]]                   # the caller's script, in order; each turn does ONE thing:
    say = "caller_hello"        #   a bundled phrase (`gateway replay --list`), or a list of them back to back
    after_silence_ms = 300      # start rule: N ms after the agent stops being heard (default 800)
    name = "hello"              # for the report; default turn<index>

    [[turns]]
    wav = "audio/question.wav"  #   a WAV file (any rate, PCM or G.711), relative to this file
    after_agent_heard_ms = 600  # start rule: N ms after the agent starts being heard (a barge-in)

    [[turns]]
    dtmf = "1#"                 #   key presses (one per 200 ms); DTMF expects no spoken answer by default
    when_agent_stops = true     # start rule: as soon as the agent stops being heard

    [[turns]]
    pause_ms = 1500             #   silence the caller keeps before the next rule is evaluated

    [[turns]]
    hangup = true               #   hang up (stop) when the rule holds: here, while the agent talks
    after_agent_heard_ms = 700

    [expect]
    max_turn_latency_ms = 2500  # caller speech end -> first agent audio heard, every answered turn
    max_barge_in_stop_ms = 1000 # caller speech start -> agent audio stops, every barge-in
    no_violations = true        # default true: nothing the gateway sent would be refused by Twilio
    min_agent_heard_ms = 2000   # the caller heard at least this much agent audio (and max_agent_heard_ms)
    all_marks_echoed = true     # every mark the gateway sent came back
    max_underruns = 0           # holes inside an agent answer
    agent_says = ["order"]      # assistant transcripts (when the backend gives them) contain each, any case
    agent_never_says = ["sorry"]
    ended_by = "hangup"         # how the call ended: "hangup" | "timeout" | "gateway_closed"
    all_turns_played = true     # default true: every scripted turn was played (none waited in vain)

More turn options: ``wait_for_agent`` (with ``after_silence_ms``: first wait for an answer to the previous
turn; default true after speech, false after DTMF or on the first turn), ``expect_answer`` (whether a
say/wav/dtmf turn counts for ``max_turn_latency_ms`` and is waited for; default true for speech).

A recorded call (see :mod:`gateway.tooling.replay.recording`) replaces the turns: ``recording = "calls/CA123.jsonl"``
(relative to this file); with it, ``[call]`` takes only ``timeout_s`` / ``hangup_after_ms`` / ``audio_format``.

:func:`load_scenario` takes a path or the name of a bundled scenario; every problem is a
:class:`ScenarioError` naming the file, the field and what is wrong. :func:`run_scenario` plays one.
'''

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.audio.convert import AUDIO_FORMATS
from gateway.audio.wavio import WavError, load_sample, sample_names, to_mulaw_8k

from .dial import TwilioAccount
from .phone import CallerTurn, call_with, run_call
from .recording import RecordedPhone, Recording, RecordingError, load_recording
from .report import CallReport

ENDINGS = ("hangup", "timeout", "gateway_closed")
DTMF_DIGITS = set("0123456789*#")
MAX_PARAMETER_CHARS = 500  # Twilio: name and value under 500 characters each


class ScenarioError(ValueError):
    """A scenario that cannot be run: ``<file>: <field>: <what is wrong>``."""


@dataclass(frozen=True, slots=True)
class CallOptions:
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0
    hangup_after_ms: float = 1000.0
    packet_loss: float = 0.0
    drop_frames: tuple[int, ...] = ()
    seed: int | None = None
    noise_snr_db: float | None = None
    audio_format: str | None = None


@dataclass(frozen=True, slots=True)
class Expectations:
    max_turn_latency_ms: float | None = None
    max_barge_in_stop_ms: float | None = None
    no_violations: bool = True
    min_agent_heard_ms: float | None = None
    max_agent_heard_ms: float | None = None
    all_marks_echoed: bool = False
    max_underruns: int | None = None
    agent_says: tuple[str, ...] = ()
    agent_never_says: tuple[str, ...] = ()
    ended_by: str | None = None
    all_turns_played: bool = True


@dataclass(slots=True)
class Scenario:
    name: str
    description: str = ""
    path: Path | None = None
    call: CallOptions = field(default_factory=CallOptions)
    turns: list[CallerTurn] = field(default_factory=list)
    expect: Expectations = field(default_factory=Expectations)
    recording: Recording | None = None


# ---------------------------------------------------------------------- bundled scenarios


def bundled_dir() -> Path:
    return Path(str(resources.files("gateway.tooling.replay").joinpath("scenarios")))


def bundled_names() -> list[str]:
    return sorted(p.stem for p in bundled_dir().glob("*.toml"))


def resolve_scenario(ref: str | Path) -> Path:
    """A scenario file: ``ref`` itself if it is a file, else the bundled scenario of that name."""
    path = Path(ref)
    if path.is_file():
        return path
    bundled = bundled_dir() / f"{path.name.removesuffix('.toml')}.toml"
    if path.parent == Path(".") and bundled.is_file():
        return bundled
    raise ScenarioError(f"{ref}: no such scenario file, and no bundled scenario of that name "
                        f"(bundled: {', '.join(bundled_names())})")


def load_scenario(ref: str | Path) -> Scenario:
    """Load and validate a scenario file (a path, or a bundled scenario's name)."""
    path = resolve_scenario(ref)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    return parse_scenario(text, source=str(path), base_dir=path.parent, default_name=path.stem, path=path)


# ---------------------------------------------------------------------- parsing and validation


class _Table:
    """Typed reads from one TOML table, each error naming the field; :meth:`done` refuses unknown fields."""

    def __init__(self, source: str, where: str, table: Any) -> None:
        self.source, self.where = source, where
        if not isinstance(table, dict):
            raise ScenarioError(f"{source}: {where}: must be a table")
        self.table = table
        self.known: list[str] = []

    def error(self, key: str | None, problem: str) -> ScenarioError:
        name = ".".join(p for p in (self.where, key) if p)
        return ScenarioError(f"{self.source}: {name or '(top level)'}: {problem}")

    def get(self, key: str) -> Any:
        self.known.append(key)
        return self.table.get(key)

    def number(self, key: str, default: float | None = None, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, integer: bool = False) -> Any:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
            raise self.error(key, f"must be {'a whole number' if integer else 'a number'}, got {value!r}")
        if not math.isfinite(value):
            raise self.error(key, f"must be a finite number, got {value!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise self.error(key, f"must be {'>' if low_open else '>='} {low}, got {value!r}")
        if high is not None and (value >= high if high_open else value > high):
            raise self.error(key, f"must be {'<' if high_open else '<='} {high}, got {value!r}")
        return value

    def boolean(self, key: str, default: bool | None = None) -> bool | None:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def string(self, key: str, default: str | None = None, choices: tuple[str, ...] = ()) -> str | None:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {value!r}")
        if choices and value not in choices:
            raise self.error(key, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise self.error(key, f"must be a non-empty string or list of non-empty strings, got {value!r}")
        return tuple(value)

    def done(self) -> None:
        unknown = [k for k in self.table if k not in self.known]
        if unknown:
            raise self.error(unknown[0], f"unknown field (known here: {', '.join(sorted(set(self.known)))})")


def parse_scenario(text: str, *, source: str = "<scenario>", base_dir: Path | None = None,
                   default_name: str = "scenario", path: Path | None = None) -> Scenario:
    """Parse and validate scenario TOML text; files it names are resolved against ``base_dir``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    base = base_dir or Path.cwd()
    top = _Table(source, "", data)
    name = top.string("name", default_name) or ""
    if not name.strip():
        raise top.error("name", "must not be empty")
    description = top.string("description", "") or ""
    recording_ref = top.string("recording")
    raw_turns = top.get("turns")
    raw_call, raw_expect = top.get("call"), top.get("expect")
    top.done()

    recording = None
    if recording_ref is not None:
        if raw_turns is not None:
            raise top.error("recording", "a scenario has turns or a recording, not both")
        try:
            recording = load_recording(_resolve(base, recording_ref))
        except RecordingError as exc:
            raise top.error("recording", str(exc)) from None
    elif raw_turns is None:
        raise top.error("turns", "no [[turns]] and no recording: nothing to play")

    call = _call_options(_Table(source, "call", raw_call or {}), recording is not None)
    turns = [] if recording is not None else _turns(source, raw_turns, base)
    expect = _expectations(_Table(source, "expect", raw_expect or {}))
    return Scenario(name, description, path, call, turns, expect, recording)


def _resolve(base: Path, ref: str) -> Path:
    path = Path(ref).expanduser()
    return path if path.is_absolute() else base / path


def _call_options(t: _Table, recorded: bool) -> CallOptions:
    params = t.get("custom_parameters")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise t.error("custom_parameters", "must be a table of strings")
    for key, value in params.items():
        if not isinstance(value, str):
            raise t.error(f"custom_parameters.{key}", f"must be a string (Twilio sends strings), got {value!r}")
        if len(key) >= MAX_PARAMETER_CHARS or len(value) >= MAX_PARAMETER_CHARS:
            raise t.error(f"custom_parameters.{key}", "name and value must be under 500 characters each (Twilio)")
    drop = t.get("drop_frames")
    drop = [] if drop is None else drop
    if not isinstance(drop, list) or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in drop):
        raise t.error("drop_frames", f"must be a list of frame indexes >= 0, got {drop!r}")
    options = CallOptions(
        custom_parameters=dict(params),
        timeout_s=t.number("timeout_s", 60.0, low=0, low_open=True),
        hangup_after_ms=t.number("hangup_after_ms", 1000.0, low=0),
        packet_loss=t.number("packet_loss", 0.0, low=0, high=1, high_open=True),
        drop_frames=tuple(drop),
        seed=t.number("seed", None, integer=True),
        noise_snr_db=t.number("noise_snr_db", None, low=-20, high=100),
        audio_format=t.string("audio_format", None, AUDIO_FORMATS),
    )
    t.done()
    if recorded:
        for key in ("custom_parameters", "packet_loss", "drop_frames", "seed", "noise_snr_db"):
            if t.table.get(key) is not None:
                raise t.error(key, "not with a recording: it replays the recorded frames exactly")
    return options


def _turns(source: str, raw: Any, base: Path) -> list[CallerTurn]:
    if not isinstance(raw, list) or not raw:
        raise ScenarioError(f"{source}: turns: must be a non-empty array of tables ([[turns]])")
    turns: list[CallerTurn] = []
    for i, item in enumerate(raw):
        turn = _turn(_Table(source, f"turns[{i}]", item), base, i)
        if turns and turns[-1].hangup:
            raise ScenarioError(f"{source}: turns[{i}]: comes after a hang-up turn and would never be played")
        turns.append(turn)
    return turns


def _turn(t: _Table, base: Path, index: int) -> CallerTurn:
    say, wav, dtmf = t.strings("say"), t.string("wav"), t.string("dtmf")
    pause_ms = t.number("pause_ms", None, low=0, low_open=True)
    hangup = bool(t.boolean("hangup", False))
    after_silence = t.number("after_silence_ms", None, low=0)
    after_heard = t.number("after_agent_heard_ms", None, low=0)
    when_stops = bool(t.boolean("when_agent_stops", False))
    wait = t.boolean("wait_for_agent")
    expect_answer = t.boolean("expect_answer")
    name = t.string("name", "") or ""
    t.done()
    actions = [k for k, v in (("say", say), ("wav", wav), ("dtmf", dtmf), ("pause_ms", pause_ms), ("hangup", hangup)) if v]
    if len(actions) != 1:
        got = f"got {', '.join(actions)}" if actions else "got none"
        raise t.error(None, f"a turn does exactly one of say, wav, dtmf, pause_ms, hangup = true ({got})")
    rules = [k for k, v in (("after_silence_ms", after_silence is not None), ("after_agent_heard_ms", after_heard is not None),
                            ("when_agent_stops", when_stops)) if v]
    if len(rules) > 1:
        raise t.error(None, f"give at most one start rule, got {', '.join(rules)}")
    if wait is not None and after_silence is None:
        raise t.error("wait_for_agent", "applies to an after_silence_ms rule only")
    if expect_answer is not None and (pause_ms or hangup):
        raise t.error("expect_answer", "applies to say, wav and dtmf turns only")
    if when_stops:
        after_silence, wait = 0.0, True

    audio = b""
    if say:
        known = sample_names()
        for phrase in say:
            if phrase.removesuffix(".wav") not in known:
                raise t.error("say", f"no bundled phrase {phrase!r} (bundled: {', '.join(known)})")
        audio = b"".join(load_sample(p) for p in say)
    elif wav:
        path = _resolve(base, wav)
        if not path.is_file():
            raise t.error("wav", f"no such file: {path}")
        try:
            audio = to_mulaw_8k(path)
        except (WavError, ValueError, OSError) as exc:
            raise t.error("wav", f"cannot read {path} as audio: {exc}") from None
        if not audio:
            raise t.error("wav", f"{path} holds no audio")
    elif dtmf:
        bad = sorted(set(dtmf) - DTMF_DIGITS)
        if bad:
            raise t.error("dtmf", f"not DTMF keys: {''.join(bad)!r} (use 0-9, * and #)")
    return CallerTurn(audio, after_silence_ms=after_silence, after_agent_heard_ms=after_heard, wait_for_agent=wait,
                      dtmf=dtmf or "", name=name or f"turn{index}", pause_ms=float(pause_ms or 0.0), hangup=hangup,
                      expect_answer=expect_answer)


def _expectations(t: _Table) -> Expectations:
    expect = Expectations(
        max_turn_latency_ms=t.number("max_turn_latency_ms", None, low=0, low_open=True),
        max_barge_in_stop_ms=t.number("max_barge_in_stop_ms", None, low=0, low_open=True),
        no_violations=bool(t.boolean("no_violations", True)),
        min_agent_heard_ms=t.number("min_agent_heard_ms", None, low=0),
        max_agent_heard_ms=t.number("max_agent_heard_ms", None, low=0),
        all_marks_echoed=bool(t.boolean("all_marks_echoed", False)),
        max_underruns=t.number("max_underruns", None, low=0, integer=True),
        agent_says=t.strings("agent_says"),
        agent_never_says=t.strings("agent_never_says"),
        ended_by=t.string("ended_by", None, ENDINGS),
        all_turns_played=bool(t.boolean("all_turns_played", True)),
    )
    t.done()
    return expect


# ---------------------------------------------------------------------- running


async def run_scenario(scenario: Scenario, url: str, *, extra_headers: Mapping[str, str] | None = None,
                       fresh_sids: bool = False, twilio: TwilioAccount | None = None) -> CallReport:
    """Play ``scenario`` against the Media Stream at ``url`` (``ws://host:port/media-stream``); the report.

    ``fresh_sids``: a recording is replayed with new streamSid/callSid (for many copies at once).
    """
    call = scenario.call
    if scenario.recording is not None:
        phone = RecordedPhone(scenario.recording, fresh_sids=fresh_sids, hangup_after_ms=call.hangup_after_ms,
                              timeout_ms=call.timeout_s * 1000.0)
        return await call_with(phone, url, extra_headers=extra_headers, twilio=twilio)
    return await run_call(
        url,
        scenario.turns,
        custom_parameters=call.custom_parameters,
        hangup_after_ms=call.hangup_after_ms,
        timeout_s=call.timeout_s,
        extra_headers=extra_headers,
        packet_loss=call.packet_loss,
        drop_frames=call.drop_frames,
        seed=call.seed,
        noise_snr_db=call.noise_snr_db,
        twilio=twilio,
    )
