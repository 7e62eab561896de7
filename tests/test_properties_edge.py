"""Property-based tests (hypothesis) of the parsers at the gateway's edge, and of the mark names the core makes.

* ``parse_twilio_message``: for any text, any JSON value, and well-formed Twilio frames with mutated fields
  (wrong types, huge numbers, NaN/Infinity literals, negative or huge timestamps, non-base64 payloads,
  10k-character strings, deep nesting, truncation), it returns one of the event dataclasses or raises
  ``MediaStreamError``, never anything else; every string field of what it returns is bounded; a well-formed
  frame round-trips to the right dataclass with the right fields.
* ``parse_model_event``: the same contract with ``ModelEventError``; valid server events parse to their type.
* ``parse_mark_name`` never raises; every mark name ``PlaybackTracker.chunk_sent`` makes, for any item id
  (empty, 10k characters, unicode, with ``:``), is unique, fits Twilio's 256 characters and parses back, so its
  echo is accounted (through the real Twilio parser and the call core too).

No sockets: pure functions only. ``database=None``: hypothesis writes nothing into the working tree.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.audio.convert import Base64Audio
from gateway.call import Call, CallConfig, Dropped, Send
from gateway.tooling.fuzz import Raw, dumps, key_paths  # JSON with verbatim tokens: the fuzzer's own writer
from gateway.call.playback import PlaybackTracker, mark_name, parse_mark_name
from gateway.realtime import events as rt
from gateway.twilio import media as tw

EDGE = settings(
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def edge(max_examples: int) -> settings:
    return settings(EDGE, max_examples=max_examples)


TWILIO_EVENTS = (tw.Connected, tw.Start, tw.Media, tw.MarkEcho, tw.Dtmf, tw.Stop)
MODEL_EVENTS = (
    rt.SessionUpdated,
    rt.SpeechStarted,
    rt.SpeechStopped,
    rt.ResponseCreated,
    rt.AudioDelta,
    rt.ResponseDone,
    rt.Transcript,
    rt.FunctionCallRequested,
    rt.ModelError,
    rt.OtherEvent,
)
DTMF_DIGITS = "0123456789*#ABCDabcdw"
TWILIO_MARK_NAME_LIMIT = 256  # what gateway.twilio.media accepts in an echoed mark's name


# ---------------------------------------------------------------------- building blocks


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def _long(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    """Long strings, cheaply: a short unicode piece repeated."""
    return st.builds(
        lambda piece, n: (piece * (n // len(piece) + 1))[:n],
        st.text(min_size=1, max_size=8),
        st.integers(min_size, max_size),
    )


def _nested(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


raw_tokens = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "-0", "1E400", "0.0000001", "-0.0"]),
    st.integers(4301, 6000).map(lambda n: "9" * n),  # past Python's int digit limit
    st.integers(1, 4300).map(lambda n: "9" * n),
    st.builds(_nested, st.integers(1, 3000), st.sampled_from(["list", "object"])),
).map(Raw)

hostile_values = st.one_of(
    json_values,
    raw_tokens,
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([-1, -(2**63), 2**63, 2**64, 10**18, -(10**18), 0, True, False, None, "", [], {}]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["!!not base64!!", "a", "AAA", "AA=A", "A A=", "=" * 8, "\u00ff\u00fe", "-1", "1e3", " 12 ", "0x10"]),
    _long(9_000, 11_000),
    st.text(max_size=300),
)


# ---------------------------------------------------------------------- well-formed Twilio frames


def twilio_sids(prefix: str) -> st.SearchStrategy[str]:
    """Twilio's SID shape: two letters and 32 hex digits."""
    return st.text(alphabet="0123456789abcdefABCDEF", min_size=32, max_size=32).map(lambda h: prefix + h)


stream_sids = twilio_sids("MZ")


@st.composite
def twilio_frames(draw: st.DrawFn) -> tuple[dict[str, Any], tw.TwilioEvent]:
    """A well-formed Media Streams frame (with Twilio's extra fields) and the event it must parse to."""
    kind = draw(st.sampled_from(["media", "mark", "start", "dtmf", "stop", "connected"]))
    sid = draw(stream_sids)
    seq = {"sequenceNumber": str(draw(st.integers(0, 10**6)))}
    if kind == "media":
        ts = draw(st.integers(0, 10**12))  # 30 years of ms; the parser takes up to 16 digits
        payload = draw(st.binary(max_size=400))
        frame = {
            "event": "media",
            **seq,
            "media": {
                "track": "inbound",
                "chunk": "2",
                "timestamp": draw(st.sampled_from([str(ts), ts])),  # Twilio sends a string; a number is fine
                "payload": base64.b64encode(payload).decode(),
            },
            "streamSid": sid,
        }
        return frame, tw.Media(sid, ts, payload)
    if kind == "mark":
        name = draw(st.text(min_size=1, max_size=TWILIO_MARK_NAME_LIMIT))
        return {"event": "mark", **seq, "streamSid": sid, "mark": {"name": name}}, tw.MarkEcho(sid, name)
    if kind == "start":
        call_sid, account_sid = draw(twilio_sids("CA")), draw(twilio_sids("AC"))
        encoding = draw(st.sampled_from(["audio/x-mulaw"]) | st.text(max_size=40))
        rate = draw(st.integers(1, 48_000))
        params = draw(st.dictionaries(st.text(max_size=500), st.text(max_size=500), max_size=8))
        start = {
            "accountSid": account_sid,
            "streamSid": sid,
            "callSid": call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": encoding, "sampleRate": rate, "channels": 1},
            "customParameters": params,
        }
        frame = {"event": "start", **seq, "start": start}
        if draw(st.booleans()):
            frame["streamSid"] = sid
        return frame, tw.Start(sid, call_sid, account_sid, encoding, rate, params)
    if kind == "dtmf":
        digit = draw(st.text(alphabet=DTMF_DIGITS, min_size=1, max_size=8))
        return {"event": "dtmf", **seq, "streamSid": sid, "dtmf": {"track": "inbound_track", "digit": digit}}, tw.Dtmf(sid, digit)
    if kind == "stop":
        stop = {"accountSid": "AC1", "callSid": "CA1"}
        return {"event": "stop", **seq, "streamSid": sid, "stop": stop}, tw.Stop(sid)
    protocol = draw(st.sampled_from(["Call"]) | st.text(max_size=20))
    return {"event": "connected", "protocol": protocol, "version": "1.0.0"}, tw.Connected(protocol)


def _set(root: Any, path: tuple, value: Any, delete: bool = False) -> None:
    parent = root
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


@st.composite
def mutated_twilio_texts(draw: st.DrawFn) -> str:
    """A well-formed frame, then one to three mutations: a field replaced by a hostile value, deleted,
    wrapped in deep nesting, garbage keys added, the whole text truncated or wrapped."""
    frame, _ = draw(twilio_frames())
    frame = json.loads(json.dumps(frame))  # a private copy
    for _ in range(draw(st.integers(1, 3))):
        paths = key_paths(frame)
        how = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "nest"]))
        if how == "add" or not paths:
            target = draw(st.sampled_from([()] + [p for p in paths if isinstance(_get(frame, p), dict)]))
            _set_key(frame, target, draw(st.text(max_size=20)), draw(hostile_values))
            continue
        path = draw(st.sampled_from(paths))
        if how == "delete":
            _set(frame, path, None, delete=True)
        elif how == "nest":
            _set(frame, path, Raw(_nested(draw(st.integers(1, 2000)), draw(st.sampled_from(["list", "object"])))))
        else:
            _set(frame, path, draw(hostile_values))
    text = dumps(frame)
    finish = draw(st.sampled_from(["as is", "as is", "truncated", "wrapped", "duplicated key"]))
    if finish == "truncated":
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    elif finish == "wrapped":
        text = draw(st.sampled_from(["[{}]", '{{"event": {}}}', '{{"media": {}}}', " {} "])).format(text)
    elif finish == "duplicated key" and text.startswith("{") and text != "{}":
        text = '{"event":' + dumps(draw(hostile_values)) + "," + text[1:]
    return text


def _get(root: Any, path: tuple) -> Any:
    for key in path:
        root = root[key]
    return root


def _set_key(root: Any, path: tuple, key: str, value: Any) -> None:
    _get(root, path)[key] = value


# ---------------------------------------------------------------------- the Twilio contract


# Fields gateway/twilio/media.py does not bound (none: Connected.protocol is cut at 64 characters too).
UNBOUNDED_TODAY: set[tuple[type, str]] = set()
FIELD_LIMITS = {
    "stream_sid": 64,
    "call_sid": 64,
    "account_sid": 64,
    "name": TWILIO_MARK_NAME_LIMIT,
    "digit": 8,
}
ANY_STRING_LIMIT = 1024  # the parser's default bound for a string field


def assert_twilio_event_bounded(event: Any, skip: set[tuple[type, str]] = UNBOUNDED_TODAY) -> None:
    for f in dataclasses.fields(event):
        if (type(event), f.name) in skip:
            continue
        value = getattr(event, f.name)
        if isinstance(value, str):
            assert len(value) <= FIELD_LIMITS.get(f.name, ANY_STRING_LIMIT), (type(event).__name__, f.name, len(value))
        elif isinstance(value, dict):  # Start.custom_parameters
            assert len(value) <= 64
            for k, v in value.items():
                assert isinstance(k, str) and isinstance(v, str)
                assert len(k) <= 500 and len(v) <= 500
        elif isinstance(value, (bytes, Base64Audio)):
            pass  # the payload: bounded by the frame size the shell accepts
        else:
            assert isinstance(value, int), (f.name, value)
    if isinstance(event, tw.Media):
        assert event.timestamp_ms >= 0
    if isinstance(event, tw.Dtmf):
        assert event.digit and all(ch in DTMF_DIGITS for ch in event.digit)


def twilio_contract(text: str) -> tw.TwilioEvent | None:
    """The contract: an event (with bounded string fields) or MediaStreamError; any other exception fails."""
    try:
        event = tw.parse_twilio_message(text)
    except tw.MediaStreamError as error:
        assert str(error)  # a reason that can be logged, of bounded length
        assert len(str(error)) < 1024
        return None
    assert isinstance(event, TWILIO_EVENTS), type(event)
    assert_twilio_event_bounded(event)
    return event


@edge(200)
@given(st.text(max_size=500) | st.text(alphabet='{}[]":,0123456789.eE+-truefalsnulINaify \\', max_size=200))
def test_twilio_parser_on_arbitrary_text(text: str) -> None:
    twilio_contract(text)


@edge(150)
@given(json_values)
def test_twilio_parser_on_arbitrary_json(value: Any) -> None:
    twilio_contract(json.dumps(value))


@edge(120)
@given(
    st.fixed_dictionaries(
        {"event": st.sampled_from(["media", "mark", "start", "dtmf", "stop", "connected", "clear"]) | json_values},
        optional={
            "streamSid": hostile_values,
            "media": json_values | st.dictionaries(st.sampled_from(["timestamp", "payload", "track"]), hostile_values),
            "mark": json_values | st.dictionaries(st.sampled_from(["name"]), hostile_values),
            "start": json_values
            | st.dictionaries(
                st.sampled_from(["streamSid", "callSid", "accountSid", "mediaFormat", "customParameters"]), hostile_values
            ),
            "dtmf": json_values | st.dictionaries(st.sampled_from(["digit"]), hostile_values),
            "protocol": hostile_values,
        },
    )
)
def test_twilio_parser_on_json_shaped_like_twilio(frame: dict[str, Any]) -> None:
    twilio_contract(dumps(frame))


@edge(200)
@given(mutated_twilio_texts())
def test_twilio_parser_on_mutated_frames(text: str) -> None:
    twilio_contract(text)


@edge(200)
@given(twilio_frames())
def test_well_formed_twilio_frames_round_trip(case: tuple[dict[str, Any], tw.TwilioEvent]) -> None:
    frame, expected = case
    event = twilio_contract(json.dumps(frame))
    assert event == expected
    assert type(event) is type(expected)


@pytest.mark.parametrize(
    "text",
    [
        '{"event":"media","streamSid":"MZ1","media":{"timestamp":Infinity,"payload":""}}',
        '{"event":"media","streamSid":"MZ1","media":{"timestamp":-Infinity,"payload":""}}',
        '{"event":"media","streamSid":"MZ1","media":{"timestamp":NaN,"payload":""}}',
        '{"event":"media","streamSid":"MZ1","media":{"timestamp":"-20","payload":""}}',
        '{"event":"media","streamSid":"MZ1","media":{"timestamp":"' + "9" * 5000 + '","payload":""}}',
        '{"event":"media","streamSid":"MZ1","media":{"timestamp":' + "9" * 5000 + ',"payload":""}}',
        '{"event":"media","streamSid":"MZ1","media":{"timestamp":"0","payload":"!!not base64!!"}}',
        '{"event":"media","streamSid":"MZ1","media":{"timestamp":"0","payload":"\u00ff\u00fe"}}',
        '{"event":"media","streamSid":"' + "M" * 65 + '","media":{"timestamp":"0","payload":""}}',
        '{"event":"mark","streamSid":"MZ1","mark":{"name":"' + "n" * 257 + '"}}',
        '{"event":"start","start":{"streamSid":"MZ1","callSid":"CA1","customParameters":{'
        + ",".join(f'"k{i}":"v"' for i in range(65))
        + "}}}",
        '{"event":"start","streamSid":"MZ' + "2" * 32 + '","start":{"streamSid":"MZ' + "1" * 32 + '","callSid":"CA'
        + "1" * 32 + '"}}',
        '{"event":"dtmf","streamSid":"MZ1","dtmf":{"digit":"x"}}',
        "[" * 100_000,
        '{"a":' * 20_000,
    ],
)
def test_hostile_twilio_examples_are_refused(text: str) -> None:
    with pytest.raises(tw.MediaStreamError):
        tw.parse_twilio_message(text)


def test_connected_protocol_is_bounded() -> None:
    event = tw.parse_twilio_message('{"event":"connected","protocol":"' + "x" * 10_000 + '"}')
    assert_twilio_event_bounded(event, skip=set())


# ---------------------------------------------------------------------- the model contract


def model_contract(frame: str | bytes) -> rt.ModelEvent | None:
    try:
        event = rt.parse_model_event(frame)
    except rt.ModelEventError as error:
        assert str(error) and len(str(error)) < 1024
        return None
    assert isinstance(event, MODEL_EVENTS), type(event)
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if f.name in ("audio_start_ms", "audio_end_ms"):
            assert isinstance(value, int) and not isinstance(value, bool)
        elif f.name == "audio":
            assert isinstance(value, (bytes, Base64Audio))
        elif f.name == "usage":
            assert isinstance(value, dict)
        else:
            assert isinstance(value, str), (f.name, value)
    return event


ids = st.text(max_size=40) | _long(1000, 11_000)
ms_values = st.integers(min_value=-(2**63), max_value=2**63)


@st.composite
def model_frames(draw: st.DrawFn) -> tuple[dict[str, Any], rt.ModelEvent]:
    """A valid server event (with the extra fields the GA API sends) and what it must parse to."""
    kind = draw(
        st.sampled_from(
            [
                "response.output_audio.delta",
                "input_audio_buffer.speech_started",
                "input_audio_buffer.speech_stopped",
                "response.created",
                "response.done",
                "response.output_audio_transcript.done",
                "conversation.item.input_audio_transcription.completed",
                "response.function_call_arguments.done",
                "session.updated",
                "error",
                "other",
            ]
        )
    )
    base = {"event_id": draw(st.text(max_size=20))}
    if kind == "response.output_audio.delta":
        rid, iid, audio = draw(ids), draw(ids), draw(st.binary(max_size=2000))
        frame = {**base, "type": kind, "response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0,
                 "delta": base64.b64encode(audio).decode()}
        return frame, rt.AudioDelta(rid, iid, audio)
    if kind == "input_audio_buffer.speech_started":
        ms, iid = draw(ms_values), draw(ids)
        return {**base, "type": kind, "audio_start_ms": ms, "item_id": iid}, rt.SpeechStarted(ms, iid)
    if kind == "input_audio_buffer.speech_stopped":
        ms, iid = draw(ms_values), draw(ids)
        return {**base, "type": kind, "audio_end_ms": ms, "item_id": iid}, rt.SpeechStopped(ms, iid)
    if kind == "response.created":
        rid = draw(ids)
        return {**base, "type": kind, "response": {"id": rid, "status": "in_progress"}}, rt.ResponseCreated(rid)
    if kind == "response.done":
        rid, status = draw(ids), draw(st.sampled_from(["completed", "cancelled", "failed", "incomplete"]))
        usage = draw(st.none() | st.dictionaries(st.text(max_size=15), st.integers(0, 10**6), max_size=4))
        response: dict[str, Any] = {"id": rid, "status": status}
        if usage is not None:
            response["usage"] = usage
        return {**base, "type": kind, "response": response}, rt.ResponseDone(rid, status, usage or {})
    if kind in ("response.output_audio_transcript.done", "conversation.item.input_audio_transcription.completed"):
        iid, text = draw(ids), draw(st.text(max_size=200))
        role = "assistant" if kind.startswith("response.") else "user"
        return {**base, "type": kind, "item_id": iid, "transcript": text}, rt.Transcript(role, iid, text)
    if kind == "response.function_call_arguments.done":
        rid, cid, name, args = draw(ids), draw(ids), draw(st.text(max_size=30)), draw(st.text(max_size=200))
        frame = {**base, "type": kind, "response_id": rid, "call_id": cid, "name": name, "arguments": args}
        return frame, rt.FunctionCallRequested(rid, cid, name, args)
    if kind == "session.updated":
        return {**base, "type": kind, "session": draw(json_values)}, rt.SessionUpdated()
    if kind == "error":
        code, message, etype = draw(st.text(max_size=30)), draw(st.text(max_size=100)), draw(st.text(max_size=30))
        return {**base, "type": kind, "error": {"code": code, "message": message, "type": etype}}, rt.ModelError(code, message, etype)
    other = draw(st.sampled_from(sorted(rt.KNOWN_SERVER_EVENTS - {
        "response.output_audio.delta", "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
        "response.created", "response.done", "response.output_audio_transcript.done",
        "conversation.item.input_audio_transcription.completed", "response.function_call_arguments.done",
        "session.updated", "error",
    })))
    return {**base, "type": other, "whatever": draw(json_values)}, rt.OtherEvent(other)


@st.composite
def mutated_model_texts(draw: st.DrawFn) -> str | bytes:
    frame, _ = draw(model_frames())
    frame = json.loads(json.dumps(frame))
    for _ in range(draw(st.integers(1, 3))):
        paths = key_paths(frame)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        if draw(st.integers(0, 4)) == 0:
            _set(frame, path, None, delete=True)
        else:
            _set(frame, path, draw(hostile_values))
    text = dumps(frame)
    if draw(st.integers(0, 4)) == 0:
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    return text.encode("utf-8", "surrogatepass") if draw(st.booleans()) else text


@edge(300)
@given(st.text(max_size=500) | st.binary(max_size=500))
def test_model_parser_on_arbitrary_text_and_bytes(frame: str | bytes) -> None:
    model_contract(frame)


@edge(150)
@given(json_values | st.dictionaries(st.just("type"), hostile_values) | st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(rt.KNOWN_SERVER_EVENTS)) | st.text(max_size=80)},
    optional={k: hostile_values for k in ("response", "response_id", "item_id", "delta", "audio_start_ms",
                                          "audio_end_ms", "transcript", "error", "call_id", "name", "arguments")},
))
def test_model_parser_on_arbitrary_json(value: Any) -> None:
    model_contract(dumps(value))


@edge(150)
@given(mutated_model_texts())
def test_model_parser_on_mutated_events(frame: str | bytes) -> None:
    model_contract(frame)


@edge(200)
@given(model_frames(), st.booleans())
def test_valid_model_events_parse_to_their_type(case: tuple[dict[str, Any], rt.ModelEvent], as_bytes: bool) -> None:
    frame, expected = case
    try:  # a valid event is standard JSON: NaN and Infinity are not (the parser refuses them, as it must)
        text = json.dumps(frame, allow_nan=False)
    except ValueError:
        assume(False)
    event = model_contract(text.encode() if as_bytes else text)
    assert event == expected
    assert type(event) is type(expected)


# ---------------------------------------------------------------------- mark names


@edge(300)
@given(st.text(max_size=300) | st.integers().map(lambda n: f"m{n}") | st.just("m" + "9" * 5000))
def test_parse_mark_name_never_raises(name: str) -> None:
    seq = parse_mark_name(name)
    assert seq is None or (type(seq) is int and seq >= 0 and name == mark_name(seq))


item_ids = st.one_of(
    st.just(""),
    st.text(max_size=40),
    _long(10_000, 10_000),
    st.lists(st.text(max_size=10), min_size=2, max_size=6).map(":".join),  # ':' inside
    st.text(alphabet="é漢🙂\u200b\x00:#g", max_size=50),
)


@edge(200)
@given(st.lists(st.tuples(item_ids, st.integers(1, 1000)), min_size=1, max_size=8), st.integers(0, 5))
def test_every_mark_name_fits_twilio_and_its_echo_is_accounted(chunks: list[tuple[str, int]], clears: int) -> None:
    tracker = PlaybackTracker()
    for _ in range(clears):
        tracker.chunk_sent("old", 0, 10, now_ms=0.0)
        tracker.clear({})
    names, ends = [], {}
    for item_id, length in chunks:
        start = ends.get(item_id, 0)
        ends[item_id] = start + length
        names.append(tracker.chunk_sent(item_id, start, start + length, now_ms=0.0))
    assert len(set(names)) == len(names)  # unique within the call, whatever the item ids
    for name in names:
        assert len(name) <= TWILIO_MARK_NAME_LIMIT and parse_mark_name(name) is not None
    # Twilio echoes the last one (through the real edge parser): everything before it has played too.
    echo = tw.parse_twilio_message(json.dumps({"event": "mark", "streamSid": "MZ1", "mark": {"name": names[-1]}}))
    assert echo == tw.MarkEcho("MZ1", names[-1])
    assert tracker.mark_echoed(parse_mark_name(echo.name), now_ms=10.0)
    assert all(tracker.heard_ms(item_id) == end for item_id, end in ends.items())
    assert not tracker.awaiting_echoes
    assert not tracker.mark_echoed(parse_mark_name(names[-1]), now_ms=11.0)  # echoed already


@edge(100)
@given(item_ids, st.integers(1, 400))
def test_the_core_accounts_echoes_of_its_own_marks_for_any_item_id(item_id: str, ms: int) -> None:
    """Through the call core: model audio with this item id -> media + marks to Twilio; Twilio's echoes (JSON,
    through the edge parser) are all accounted: nothing dropped, nothing left playing."""
    sid = "MZ" + "0" * 32
    call = Call(CallConfig(session_update={"type": "session.update", "session": {}}, audio_format="pcm16"))
    call.twilio_event(tw.Start(sid, "CA1", "AC1", "audio/x-mulaw", 8000, {}), 0)
    call.model_connected(0)
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    out = call.model_event(rt.AudioDelta("resp_1", item_id, b"\x00\x01" * (ms * 24)), 0)
    marks = [o.message for o in out if isinstance(o, Send) and o.message.get("event") == "mark"]
    assert marks
    for i, mark in enumerate(marks):
        echo = tw.parse_twilio_message(json.dumps(mark))
        assert isinstance(echo, tw.MarkEcho)
        result = call.twilio_event(echo, 100.0 * (i + 1))
        assert not [o for o in result if isinstance(o, Dropped)], result
    assert call.heard_ms(item_id) == ms
    assert not call._playback.awaiting_echoes


def test_dumps_splices_raw_tokens() -> None:
    assert dumps({"a": Raw("NaN"), "b": [Raw("[[]]")]}) == '{"a": NaN, "b": [[[]]]}'
    assert math.isnan(json.loads(dumps([Raw("NaN")]))[0])
