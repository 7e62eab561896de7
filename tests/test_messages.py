"""Parsing at the edge: every malformed frame from Twilio or the model becomes a clear error."""

import json

import pytest

from gateway.realtime import events as rt
from gateway.twilio import media as tw

SID = "MZ" + "1" * 32
CALL = "CA" + "2" * 32
ACCOUNT = "AC" + "3" * 32


def media(**overrides):
    message = {"event": "media", "sequenceNumber": "3", "streamSid": SID,
               "media": {"track": "inbound", "chunk": "2", "timestamp": "40", "payload": "//8="}}
    message.update(overrides)
    return json.dumps(message)


def test_twilio_messages_parse_to_typed_events():
    assert tw.parse_twilio_message(media()) == tw.Media(SID, 40, b"\xff\xff")
    start = {"event": "start", "sequenceNumber": "1", "streamSid": SID,
             "start": {"accountSid": ACCOUNT, "streamSid": SID, "callSid": CALL, "tracks": ["inbound"],
                       "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                       "customParameters": {"From": "+15550001111"}}}
    parsed = tw.parse_twilio_message(json.dumps(start))
    assert parsed == tw.Start(SID, CALL, ACCOUNT, "audio/x-mulaw", 8000, {"From": "+15550001111"})
    assert tw.parse_twilio_message('{"event":"mark","streamSid":"%s","mark":{"name":"x"}}' % SID) == tw.MarkEcho(SID, "x")
    assert tw.parse_twilio_message(
        '{"event":"dtmf","streamSid":"%s","dtmf":{"track":"inbound_track","digit":"7"}}' % SID) == tw.Dtmf(SID, "7")
    assert tw.parse_twilio_message('{"event":"stop","streamSid":"%s","stop":{}}' % SID) == tw.Stop(SID)
    assert isinstance(tw.parse_twilio_message('{"event":"connected","protocol":"Call","version":"1.0.0"}'), tw.Connected)


@pytest.mark.parametrize(
    "frame, reason",
    [
        ("not json", "not JSON"),
        ("[1,2]", "not a JSON object"),
        ('{"event":"party"}', "unknown_event 'party'"),
        ('{"nothing":1}', "unknown_event 'None'"),
        (media(media={"timestamp": "0", "payload": "***"}), "base64"),
        (media(media={"timestamp": "soon", "payload": ""}), "timestamp"),
        (media(media={"timestamp": "-5", "payload": ""}), "negative"),
        (media(media="x"), "media must be an object"),
        (media(streamSid=None), "streamSid"),
        ('{"event":"mark","streamSid":"MZ1"}', "mark must be an object"),
        ('{"event":"dtmf","streamSid":"MZ1","dtmf":{"digit":"x"}}', "not a DTMF digit"),
        ('{"event":"start","start":{"streamSid":"MZ1"}}', "not a Twilio stream SID"),
        ('{"event":"start","start":{"streamSid":"MZ' + "1" * 32 + '"}}', "callSid"),
        ('{"event":"start","start":{"streamSid":"MZ' + "1" * 32 + '","callSid":"CA1\\nforged log line"}}',
         "not a Twilio call SID"),
        ("[" * 100000 + "]" * 100000, "not JSON"),
    ],
)
def test_twilio_garbage_is_a_clear_error(frame, reason):
    with pytest.raises(tw.MediaStreamError, match=reason):
        tw.parse_twilio_message(frame)


def test_model_events_parse_to_typed_events():
    parsed = rt.parse_model_event(json.dumps({"type": "response.output_audio.delta", "event_id": "e",
                                              "response_id": "r", "item_id": "i", "output_index": 0,
                                              "content_index": 0, "delta": "AAE="}))
    assert parsed == rt.AudioDelta("r", "i", b"\x00\x01")
    assert rt.parse_model_event('{"type":"input_audio_buffer.speech_started","audio_start_ms":5,"item_id":"u"}') == rt.SpeechStarted(5, "u")
    assert rt.parse_model_event('{"type":"response.done","response":{"id":"r","status":"cancelled"}}') == rt.ResponseDone("r", "cancelled", {})
    assert rt.parse_model_event('{"type":"error","error":{"code":"c","message":"m","type":"t"}}') == rt.ModelError("c", "m", "t")
    assert rt.parse_model_event('{"type":"rate_limits.updated","rate_limits":[]}') == rt.OtherEvent("rate_limits.updated")


@pytest.mark.parametrize(
    "frame",
    [
        "garbage",
        b"\xff\xfe",
        "[]",
        '{"type": 5}',
        '{"type":"response.brand_new_event"}',
        '{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"@@@"}',
        '{"type":"response.output_audio.delta","response_id":"r","delta":"AA=="}',
        '{"type":"input_audio_buffer.speech_started","audio_start_ms":"5","item_id":"u"}',
        '{"type":"response.created","response":"r"}',
    ],
)
def test_model_garbage_is_a_clear_error(frame):
    with pytest.raises(rt.ModelEventError):
        rt.parse_model_event(frame)


def test_builders_emit_ga_shapes():
    update = rt.session_update(model="gpt-realtime", instructions="hi", voice="marin", audio_format="pcmu",
                               turn_detection={"type": "server_vad"}, transcription_model="gpt-4o-mini-transcribe")
    session = update["session"]
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "marin"}
    assert session["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    assert rt.audio_format_object("pcm16") == {"type": "audio/pcm", "rate": 24000}
    assert tw.clear_message(SID) == {"event": "clear", "streamSid": SID}


def test_every_client_event_the_gateway_builds_matches_the_official_models():
    from openai.types.realtime import RealtimeClientEvent
    from pydantic import TypeAdapter

    adapter = TypeAdapter(RealtimeClientEvent)
    built = [
        rt.session_update(model="gpt-realtime", instructions="x", voice="marin", audio_format=fmt,
                          turn_detection=td, transcription_model="whisper-1")
        for fmt in ("pcm16", "pcmu")
        for td in (None, {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
                          "create_response": True, "interrupt_response": True},
                   {"type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": False})
    ]
    built += [rt.input_audio_append(b"\x00" * 10), rt.item_truncate("item_1", 120), rt.response_create(),
              rt.response_create("Greet the caller"), rt.response_cancel("resp_1")]
    for event in built:
        model = adapter.validate_python(event)
        assert model.type == event["type"]
