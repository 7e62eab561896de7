"""Unknown Twilio event names are one metric label, never a label each (issue 17): a stream sending 100 distinct
made-up names leaves the drop counter with the single reason ``unknown_event``; the names appear, escaped and
truncated, in the summarised drop log only. Over real sockets against a real gateway.
"""

from __future__ import annotations

import json
import logging

import pytest

from gateway.observe.droplog import DropCounter
from gateway.observe import metrics
from gateway.twilio import media as tw

from .conftest import GatewayUnderTest
from .test_bad_input import logged, settle, twilio_call


def twilio_reasons() -> set[str]:
    """The reason label values of gateway_dropped_frames_total for frames from Twilio."""
    return {sample.labels["reason"] for family in metrics.DROPPED.collect() for sample in family.samples
            if sample.labels.get("source") == "twilio"}


async def test_a_hundred_unknown_event_names_are_one_label_value(gateway: GatewayUnderTest,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    names = [f"made_up_{n:03d}" for n in range(99)] + ["evil\n\x1b[31mforged" + "x" * 200]
    before = twilio_reasons()
    async with twilio_call(gateway) as (client, session):
        for name in names:
            await client.send({"event": name, "streamSid": client.stream_sid})
        await settle(client, session)  # every frame above has been read
        assert client.open
    new = twilio_reasons() - before
    assert new <= {tw.UNKNOWN_EVENT} and tw.UNKNOWN_EVENT in twilio_reasons()
    assert not any(label.startswith(("made_up", "evil", "unknown event")) for label in twilio_reasons())
    lines = logged(caplog, "dropped", "frames from twilio")
    assert 1 <= len(lines) <= 3  # the first drop, then summaries (one at the end of the call)
    text = "\n".join(lines)
    assert "unknown_event 'made_up_000'" in text and "unknown_event x99" in text
    assert all("\n" not in line and "\x1b" not in line and len(line) < 600 for line in lines)


def test_only_twilios_documented_events_parse():
    assert tw.TWILIO_EVENTS == {"connected", "start", "media", "mark", "dtmf", "stop"}
    for event in ("clear", "transcription", "Media", "", None, 7, ["media"]):
        with pytest.raises(tw.MediaStreamError) as raised:
            tw.parse_twilio_message(json.dumps({"event": event}))
        assert raised.value.reason == tw.UNKNOWN_EVENT
        assert len(raised.value.detail) <= 44 and raised.value.detail.isascii()


def test_drop_details_are_examples_in_the_log_and_never_reasons(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    counted: list[str] = []
    now = [0.0]
    drops = DropCounter(logging.getLogger("gateway.test"), "frames", 1.0, clock=lambda: now[0],
                        counted=lambda reason, n: counted.append(reason))
    for n in range(100):
        now[0] = n * 0.05
        drops.drop(tw.UNKNOWN_EVENT, detail=f"'name_{n}'" + "y" * 100)
    drops.flush()
    assert set(counted) == {tw.UNKNOWN_EVENT} and dict(drops.totals) == {tw.UNKNOWN_EVENT: 100}
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) <= 7 and all(len(line) < 400 for line in lines)
    assert "(e.g. 'name_1'" in lines[1]


def test_a_models_unknown_or_malformed_events_are_fixed_reasons():
    """The model's side too: an event type per frame, or a bad field in each known type, is one reason each."""
    from gateway.realtime import events as rt

    reasons: set[str] = set()
    for n in range(100):
        for frame in ({"type": f"made.up_{n}"}, {"type": "response.created", "response": {"id": n}},
                      {"type": "input_audio_buffer.speech_started", "audio_start_ms": f"x{n}", "item_id": "i"}):
            with pytest.raises(rt.ModelEventError) as raised:
                rt.parse_model_event(json.dumps(frame))
            reasons.add(raised.value.reason)
            assert raised.value.detail.isascii() and len(raised.value.detail) <= 80
    assert reasons == {"unknown_event", "malformed event"}
    with pytest.raises(rt.ModelEventError) as raised:
        rt.parse_model_event(json.dumps({"type": "evil\n\x1b[31m" + "x" * 200}))
    assert "\n" not in raised.value.detail and "\x1b" not in raised.value.detail
