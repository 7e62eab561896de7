"""Pass-through (``pcmu``) never decodes or re-encodes the audio; :class:`Base64Audio` stands in for its bytes.

The base64 text of Twilio's ``media`` event is what goes into ``input_audio_buffer.append``, and the text of the
model's ``response.output_audio.delta`` is what goes into Twilio's ``media`` message: the same string object, never
decoded. Whatever needs the samples (pcm16's resamplers, a gap filled with silence) decodes them, once.
"""

from __future__ import annotations

import base64
import json
import os

import pytest

from gateway.audio.convert import Base64Audio, join_audio
from gateway.call import Call, CallConfig, Peer, Send
from gateway.realtime import events as rt
from gateway.twilio import media as tw

SID = "MZ" + "0" * 32


def make_call(audio_format: str, **overrides) -> Call:
    call = Call(CallConfig(session_update={"type": "session.update", "session": {}}, audio_format=audio_format, **overrides))
    call.twilio_event(tw.Start(SID, "CA" + "0" * 32, "AC" + "0" * 32, "audio/x-mulaw", 8000, {}), 0)
    call.model_connected(0)
    return call


def sends(outputs, peer):
    return [o.message for o in outputs if isinstance(o, Send) and o.to is peer]


def twilio_media(payload: str, timestamp: int = 0) -> str:
    return json.dumps({"event": "media", "streamSid": SID, "media": {"timestamp": str(timestamp), "payload": payload}})


def model_delta(text: str) -> str:
    return json.dumps({"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "delta": text})


def test_caller_audio_goes_to_the_model_as_the_text_twilio_sent():
    call = make_call("pcmu")
    text = base64.b64encode(os.urandom(160)).decode()
    event = tw.parse_twilio_message(twilio_media(text))
    assert isinstance(event.payload, Base64Audio) and len(event.payload) == 160
    [append] = sends(call.twilio_event(event, 0), Peer.MODEL)
    assert append["type"] == "input_audio_buffer.append"
    assert append["audio"] == text and append["audio"] is event.payload.text  # the parsed string itself
    assert event.payload._bytes is None, "pass-through decoded the caller's audio"


def test_agent_audio_goes_to_twilio_as_the_text_the_model_sent():
    call = make_call("pcmu", mark_interval_ms=100)
    call.model_event(rt.ResponseCreated("r"), 0)
    text = base64.b64encode(os.urandom(800)).decode()  # one 100 ms delta, as the model streams them
    event = rt.parse_model_event(model_delta(text))
    out = sends(call.model_event(event, 0), Peer.TWILIO)
    assert [m["event"] for m in out] == ["media", "mark"]
    assert out[0]["media"]["payload"] == text and out[0]["media"]["payload"] is event.audio.text
    assert event.audio._bytes is None, "pass-through decoded the agent's audio"


@pytest.mark.parametrize("size", [1600, 2400, 2401, 799, 1])
def test_a_delta_cut_into_mark_chunks_is_the_same_audio(size):
    """A delta longer than a mark interval is cut; on 3-byte boundaries the text is cut, elsewhere it is decoded."""
    call = make_call("pcmu", mark_interval_ms=100)
    call.model_event(rt.ResponseCreated("r"), 0)
    audio = os.urandom(size)
    out = sends(call.model_event(rt.parse_model_event(model_delta(base64.b64encode(audio).decode())), 0), Peer.TWILIO)
    payloads = [base64.b64decode(m["media"]["payload"], validate=True) for m in out if m["event"] == "media"]
    assert b"".join(payloads) == audio
    assert [len(p) for p in payloads] == [min(800, size - i) for i in range(0, size, 800)]


def test_pcm16_decodes_where_it_needs_the_samples():
    parsed, plain = make_call("pcm16"), make_call("pcm16")
    for n in range(5):
        audio = os.urandom(160)
        event = tw.parse_twilio_message(twilio_media(base64.b64encode(audio).decode(), 20 * n))
        got = sends(parsed.twilio_event(event, 20 * n), Peer.MODEL)
        want = sends(plain.twilio_event(tw.Media(SID, 20 * n, audio), 20 * n), Peer.MODEL)
        assert got == want
    for call in (parsed, plain):
        call.model_event(rt.ResponseCreated("r"), 0)
    pcm = os.urandom(4800 * 2 + 7)
    got = sends(parsed.model_event(rt.parse_model_event(model_delta(base64.b64encode(pcm).decode())), 0), Peer.TWILIO)
    want = sends(plain.model_event(rt.AudioDelta("r", "i", pcm), 0), Peer.TWILIO)
    assert got == want


def test_a_gap_is_filled_with_silence_before_undecoded_audio():
    call = make_call("pcmu")
    call.twilio_event(tw.parse_twilio_message(twilio_media(base64.b64encode(b"\x10" * 160).decode(), 0)), 0)
    later = tw.parse_twilio_message(twilio_media(base64.b64encode(b"\x20" * 160).decode(), 100))  # 80 ms lost
    [append] = sends(call.twilio_event(later, 100), Peer.MODEL)
    assert base64.b64decode(append["audio"]) == b"\xff" * 640 + b"\x20" * 160


def test_base64_audio_behaves_as_its_bytes():
    data = os.urandom(1001)
    audio = Base64Audio.parse(base64.b64encode(data).decode())
    assert len(audio) == 1001 and bool(audio) and not Base64Audio.parse("")
    assert audio == data and bytes(audio) == data and audio == Base64Audio.of(data)
    assert b"x" + audio == b"x" + data and audio + b"x" == data + b"x"
    assert audio[0:1001] is audio and audio[:] is audio
    aligned = audio[300:900]
    assert isinstance(aligned, Base64Audio) and aligned == data[300:900]
    for start, stop in ((1, 5), (0, 800), (800, 1001), (999, 2000), (5, 3)):
        assert audio[start:stop] == data[start:stop]
    assert audio[7] == data[7]
    assert join_audio([audio, b"y", Base64Audio.of(b"zz")]) == data + b"yzz"
    assert tw.media_message(SID, audio)["media"]["payload"] is audio.text
    assert rt.input_audio_append(audio)["audio"] is audio.text


@pytest.mark.parametrize("text", ["!!!not base64!!!", "a", "AAA", "AA=A", "A A=", "=" * 8, "\u00ff\u00fe", "A===", "=AAA"])
def test_what_is_not_base64_is_refused(text):
    with pytest.raises(ValueError):
        Base64Audio.parse(text)
    with pytest.raises(ValueError):
        Base64Audio.parse("QUJD" * 300 + text)  # past 1 kB the check takes another path: the same answer
    with pytest.raises(tw.MediaStreamError, match="not valid base64"):
        tw.parse_twilio_message(twilio_media(text))
    with pytest.raises(rt.ModelEventError, match="not base64"):
        rt.parse_model_event(model_delta(text))


def test_encode_message_is_compact_json():
    message = tw.media_message(SID, b"\x00\x01")
    text = tw.encode_message(message)
    assert json.loads(text) == message and ", " not in text and ": " not in text
    assert json.loads(tw.encode_message({"type": "x", "n": 2**70, "s": "h\u00e9"})) == {"type": "x", "n": 2**70, "s": "h\u00e9"}
