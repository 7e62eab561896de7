"""The pure call core, driven by event scripts: no sockets, no sleeps, explicit time."""

import base64

import pytest

from gateway.call import (
    BargeIn,
    Call,
    CallConfig,
    CallStarted,
    Dropped,
    DtmfReceived,
    EndCall,
    Peer,
    Send,
)
from gateway.realtime import events as rt
from gateway.twilio import media as tw

SID = "MZ" + "0" * 32
PCM_MS = 48  # bytes of 24 kHz PCM16 per ms


def make_call(**overrides) -> Call:
    config = dict(session_update={"type": "session.update", "session": {}}, audio_format="pcm16")
    config.update(overrides)
    call = Call(CallConfig(**config))
    call.twilio_event(tw.Start(SID, "CA1", "AC1", "audio/x-mulaw", 8000, {"k": "v"}), 0)
    call.model_connected(0)
    return call


def sends(outputs, peer=None):
    return [o.message for o in outputs if isinstance(o, Send) and (peer is None or o.to is peer)]


def of_type(outputs, kind):
    return [o for o in outputs if isinstance(o, kind)]


def delta(response="resp_1", item="item_1", ms=100):
    return rt.AudioDelta(response, item, b"\x00\x01" * (ms * PCM_MS // 2))


def test_start_then_media_goes_to_model_as_24k_pcm():
    call = Call(CallConfig(session_update={"type": "session.update"}))
    out = call.twilio_event(tw.Start(SID, "CA1", "AC1", "audio/x-mulaw", 8000, {"From": "+1"}), 0)
    assert of_type(out, CallStarted)[0].custom_parameters == {"From": "+1"}
    # Audio before the model is connected is held, then flushed after session.update.
    assert call.twilio_event(tw.Media(SID, 0, b"\xff" * 160), 0) == []
    out = call.model_connected(0)
    messages = sends(out, Peer.MODEL)
    assert messages[0]["type"] == "session.update"
    assert messages[1]["type"] == "input_audio_buffer.append"
    assert len(base64.b64decode(messages[1]["audio"])) == 960
    out = call.twilio_event(tw.Media(SID, 20, b"\xff" * 160), 20)
    assert [m["type"] for m in sends(out)] == ["input_audio_buffer.append"]


def test_timestamp_gap_is_filled_with_silence():
    call = make_call()
    call.twilio_event(tw.Media(SID, 0, b"\x00" * 160), 0)
    out = call.twilio_event(tw.Media(SID, 100, b"\x00" * 160), 100)  # 80 ms lost
    audio = base64.b64decode(sends(out)[0]["audio"])
    assert len(audio) == (80 + 20) * PCM_MS
    # Small jitter is not a gap.
    out = call.twilio_event(tw.Media(SID, 125, b"\x00" * 160), 125)
    assert len(base64.b64decode(sends(out)[0]["audio"])) == 20 * PCM_MS


def test_bad_order_and_foreign_streams_are_dropped():
    call = Call(CallConfig(session_update={}))
    assert of_type(call.twilio_event(tw.Media(SID, 0, b"\xff"), 0), Dropped)
    call.twilio_event(tw.Start(SID, "CA1", "AC1", "audio/x-mulaw", 8000, {}), 0)
    assert of_type(call.twilio_event(tw.Media("MZother", 0, b"\xff"), 0), Dropped)
    assert of_type(call.twilio_event(tw.MarkEcho(SID, "nonsense"), 0), Dropped)
    assert of_type(call.twilio_event(tw.Start(SID, "CA2", "AC1", "x", 8000, {}), 0), Dropped)


def test_agent_audio_goes_out_as_mulaw_with_a_mark_per_chunk():
    call = make_call(mark_interval_ms=100)
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    out = call.model_event(delta(ms=250), 0)
    messages = sends(out, Peer.TWILIO)
    assert [m["event"] for m in messages] == ["media", "mark"] * 3
    assert all(m["streamSid"] == SID for m in messages)
    sizes = [len(base64.b64decode(m["media"]["payload"])) for m in messages if m["event"] == "media"]
    assert sizes == [800, 800, 400]
    # Marks are an opaque per-call sequence: nothing from the model goes into a name.
    assert [m["mark"]["name"] for m in messages if m["event"] == "mark"] == ["m0", "m1", "m2"]


def test_barge_in_clears_and_truncates_at_what_was_heard():
    call = make_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(delta(ms=500), 0)  # 5 chunks queued at Twilio at t=0: marks m0..m4
    call.twilio_event(tw.MarkEcho(SID, "m0"), 100)
    call.twilio_event(tw.MarkEcho(SID, "m1"), 200)
    out = call.model_event(rt.SpeechStarted(1000, "item_user"), 230)
    assert sends(out)[0] == {"event": "clear", "streamSid": SID}  # clear goes first
    truncate = [m for m in sends(out, Peer.MODEL) if m["type"] == "conversation.item.truncate"]
    assert truncate == [{"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 230}]
    # The server cancels on its own (interrupt_response): the gateway does not.
    assert not [m for m in sends(out) if m.get("type") == "response.cancel"]
    assert of_type(out, BargeIn)[0].heard_ms == 230
    # Late deltas of the interrupted response are dropped.
    assert call.model_event(delta(ms=100), 240) == []
    # Marks echoed because of the clear are ignored: they say "cleared", not "played".
    assert call.twilio_event(tw.MarkEcho(SID, "m2"), 241) == []
    assert call.heard_ms("item_1") == 230


def test_heard_position_never_passes_the_next_mark_nor_what_was_sent():
    call = make_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(delta(ms=100), 0)
    # No echo for a long time (the caller's line stalled): heard stops at the chunk's end.
    out = call.model_event(rt.SpeechStarted(1000, "u"), 5000)
    truncate = [m for m in sends(out, Peer.MODEL) if m["type"] == "conversation.item.truncate"][0]
    assert truncate["audio_end_ms"] == 100


def test_chunk_sent_after_an_idle_gap_plays_from_its_arrival():
    call = make_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(delta(ms=100), 0)
    call.twilio_event(tw.MarkEcho(SID, "m0"), 100)
    call.model_event(delta(ms=100), 400)  # the model was slow: Twilio was idle 100..400
    out = call.model_event(rt.SpeechStarted(1000, "u"), 450)
    truncate = [m for m in sends(out, Peer.MODEL) if m["type"] == "conversation.item.truncate"][0]
    assert truncate["audio_end_ms"] == 150


def test_cancel_only_when_the_server_does_not():
    call = make_call(interrupt_response=False)
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(delta(ms=100), 0)
    out = call.model_event(rt.SpeechStarted(1000, "u"), 50)
    assert {"type": "response.cancel", "response_id": "resp_1"} in sends(out, Peer.MODEL)
    # After response.done, nothing is active: a later speech_started cancels nothing.
    call.model_event(rt.ResponseDone("resp_1", "cancelled", {}), 60)
    out = call.model_event(rt.SpeechStarted(2000, "u2"), 70)
    assert sends(out) == []


def test_nothing_is_cleared_or_truncated_when_nothing_is_playing():
    call = make_call()
    assert sends(call.model_event(rt.SpeechStarted(0, "u"), 0)) == []
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(delta(ms=100), 0)
    call.twilio_event(tw.MarkEcho(SID, "m0"), 100)
    call.model_event(rt.ResponseDone("resp_1", "completed", {}), 100)
    assert sends(call.model_event(rt.SpeechStarted(0, "u"), 500)) == []


def test_response_in_progress_without_audio_is_interrupted_without_clear():
    call = make_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    out = call.model_event(rt.SpeechStarted(0, "u"), 10)
    assert sends(out) == []
    assert call.model_event(delta(ms=100), 20) == []  # its audio never reaches the caller


def test_second_response_after_barge_in_plays_on_the_new_generation():
    call = make_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(delta(ms=200), 0)
    call.model_event(rt.SpeechStarted(0, "u"), 50)
    call.model_event(rt.ResponseDone("resp_1", "cancelled", {}), 60)
    call.model_event(rt.ResponseCreated("resp_2"), 1000)
    out = call.model_event(delta(response="resp_2", item="item_2", ms=100), 1000)
    marks = [m["mark"]["name"] for m in sends(out) if m["event"] == "mark"]
    assert marks == ["m2"]  # m0 and m1 were cleared
    call.twilio_event(tw.MarkEcho(SID, "m1"), 1050)  # a cleared echo, late: counts for nothing
    call.twilio_event(tw.MarkEcho(SID, "m2"), 1100)
    assert call.heard_ms("item_2") == 100


def test_agent_speaks_first_once_session_is_updated():
    call = make_call(agent_speaks_first=True, greeting_instructions="Greet the caller.")
    out = call.model_event(rt.SessionUpdated(), 0)
    assert sends(out) == [{"type": "response.create", "response": {"instructions": "Greet the caller."}}]
    assert sends(call.model_event(rt.SessionUpdated(), 0)) == []


def test_dtmf_stop_and_model_close_end_the_call():
    call = make_call()
    assert of_type(call.twilio_event(tw.Dtmf(SID, "5"), 0), DtmfReceived)[0].digit == "5"
    assert of_type(call.twilio_event(tw.Stop(SID), 0), EndCall)
    assert call.twilio_event(tw.Media(SID, 0, b"\xff"), 0) == []
    other = make_call()
    assert of_type(other.model_closed("1000", 0), EndCall)


def test_pcmu_pass_through_counts_8_bytes_per_ms():
    call = make_call(audio_format="pcmu")
    out = call.twilio_event(tw.Media(SID, 0, b"\x7f" * 160), 0)
    assert base64.b64decode(sends(out)[0]["audio"]) == b"\x7f" * 160
    call.model_event(rt.ResponseCreated("r"), 0)
    out = call.model_event(rt.AudioDelta("r", "i", b"\x10" * 1600), 0)  # 200 ms
    marks = [m["mark"]["name"] for m in sends(out) if m["event"] == "mark"]
    assert marks == ["m0", "m1"]
    call.twilio_event(tw.MarkEcho(SID, "m1"), 200)
    assert call.heard_ms("i") == 200


@pytest.mark.parametrize("name", ["", "m", "mx", "m-1", "m1.5", "m" + "9" * 16, "g0:100:item_1", "M1", " m1"])
def test_malformed_mark_names_are_dropped(name):
    call = make_call()
    assert of_type(call.twilio_event(tw.MarkEcho(SID, name), 0), Dropped)


def test_a_forged_mark_echo_credits_nothing():
    call = make_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(delta(ms=1000), 0)
    assert of_type(call.twilio_event(tw.MarkEcho(SID, "m99"), 10), Dropped)  # never sent
    assert of_type(call.twilio_event(tw.MarkEcho(SID, "m9"), 10), Dropped) == []
    assert of_type(call.twilio_event(tw.MarkEcho(SID, "m9"), 11), Dropped)  # echoed already
    # A real echo of the 10th chunk means all ten played: echoes come in order.
    assert call.heard_ms("item_1") == 1000


def truncates(outputs):
    return {m["item_id"]: m["audio_end_ms"] for m in sends(outputs, Peer.MODEL) if m["type"] == "conversation.item.truncate"}


def test_barge_in_truncates_every_item_in_twilios_queue():
    call = make_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(delta(item="item_a", ms=300), 0)
    call.model_event(rt.ResponseDone("resp_1", "completed", {}), 0)
    call.model_event(rt.ResponseCreated("resp_2"), 0)
    call.model_event(delta(response="resp_2", item="item_b", ms=500), 0)
    call.twilio_event(tw.MarkEcho(SID, "m0"), 100)  # item_a: m0..m2, item_b: m3..m7
    out = call.model_event(rt.SpeechStarted(0, "u"), 150)
    # item_a was half-way through its second chunk; item_b never started playing.
    assert truncates(out) == {"item_a": 150, "item_b": 0}
    assert [b.item_id for b in of_type(out, BargeIn)] == ["item_a", "item_b"]
    assert call.model_event(delta(response="resp_2", item="item_b", ms=100), 160) == []


def test_round_trip_to_twilio_is_measured_from_marks_and_compensated():
    call = make_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(delta(ms=500), 0)  # sent to an idle queue at t=0
    # One-way latency 50 ms: chunk 1 reaches Twilio at 50, plays until 150, its echo arrives at 200.
    call.twilio_event(tw.MarkEcho(SID, "m0"), 200)
    call.twilio_event(tw.MarkEcho(SID, "m1"), 300)
    # Speech detected at 330: our clear reaches Twilio at 380, when the caller has heard 380 - 50 = 330 ms.
    out = call.model_event(rt.SpeechStarted(0, "u"), 330)
    assert truncates(out) == {"item_1": 330}


def test_late_deltas_still_count_toward_the_items_length():
    call = make_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(delta(ms=200), 0)
    call.model_event(rt.SpeechStarted(0, "u"), 50)
    call.model_event(delta(ms=100), 60)  # generated before the server's cancel; dropped, but in the item
    call.model_event(rt.ResponseDone("resp_1", "cancelled", {}), 70)
    call.model_event(rt.ResponseCreated("resp_2"), 80)
    out = call.model_event(delta(response="resp_2", item="item_1", ms=100), 90)  # (an item id reused)
    marks = [m["mark"]["name"] for m in sends(out) if m["event"] == "mark"]
    assert marks == ["m2"]
    call.twilio_event(tw.MarkEcho(SID, "m2"), 200)
    assert call.heard_ms("item_1") == 400  # the new chunk is 300..400 of the item: the dropped deltas count


def test_a_bogus_timestamp_jump_does_not_disable_gap_filling():
    call = make_call()
    call.twilio_event(tw.Media(SID, 0, b"\x00" * 160), 0)
    call.twilio_event(tw.Media(SID, 10_000_000, b"\x00" * 160), 20)
    call.twilio_event(tw.Media(SID, 40, b"\x00" * 160), 40)  # the real clock again: resync, no fill
    out = call.twilio_event(tw.Media(SID, 260, b"\x00" * 160), 260)  # 200 ms lost
    assert len(base64.b64decode(sends(out)[0]["audio"])) == (200 + 20) * PCM_MS


def test_cancel_that_crossed_the_responses_end_is_not_an_error():
    call = make_call(interrupt_response=False)
    assert call.model_event(rt.ModelError("response_cancel_not_active", "no active response", "invalid_request_error"), 0) == []
    assert call.model_event(rt.ModelError("other", "boom", "server_error"), 0)


# ---- tools and call control --------------------------------------------------------------------

from gateway.call import HangUp, RunTool, ToolCalled, Transfer  # noqa: E402


def control_call(**overrides):
    return make_call(call_control_tools=frozenset({"end_call", "transfer_call"}), **overrides)


def test_user_tool_runs_off_the_audio_path_and_a_response_follows_its_output():
    call = make_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    out = call.model_event(rt.FunctionCallRequested("resp_1", "call_1", "check_order", '{"order_id":"A1"}'), 0)
    assert of_type(out, RunTool) == [RunTool("call_1", "check_order", '{"order_id":"A1"}')]
    assert of_type(out, ToolCalled)[0].name == "check_order"
    # Audio keeps flowing while the tool runs.
    assert sends(call.twilio_event(tw.Media(SID, 0, b"\xff" * 160), 0))[0]["type"] == "input_audio_buffer.append"
    out = call.model_event(rt.ResponseDone("resp_1", "completed", {}), 10)
    assert sends(out) == []  # nothing to ask for yet: the tool is still running
    out = call.tool_finished("call_1", '{"status":"shipped"}', 0)
    assert sends(out, Peer.MODEL) == [
        {"type": "conversation.item.create",
         "item": {"type": "function_call_output", "call_id": "call_1", "output": '{"status":"shipped"}'}},
        {"type": "response.create"},
    ]
    assert call.tool_finished("call_1", "again", 0) == []  # once only


def test_tool_output_waits_for_the_active_response_to_finish():
    call = make_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(rt.FunctionCallRequested("resp_1", "c1", "slow", "{}"), 0)
    out = call.tool_finished("c1", "{}", 0)
    assert [m["type"] for m in sends(out)] == ["conversation.item.create"]
    out = call.model_event(rt.ResponseDone("resp_1", "completed", {}), 5)
    assert [m["type"] for m in sends(out)] == ["response.create"]
    # Requested once: a second response.done of something else asks for nothing more.
    assert sends(call.model_event(rt.ResponseDone("resp_x", "completed", {}), 6)) == []


def test_end_call_hangs_up_only_once_the_goodbye_has_been_heard():
    call = control_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(delta(ms=200), 0)  # "Goodbye!"
    out = call.model_event(rt.FunctionCallRequested("resp_1", "c1", "end_call", "{}"), 0)
    assert [m["item"]["type"] for m in sends(out, Peer.MODEL)] == ["function_call_output"]
    assert not [m for m in sends(out, Peer.MODEL) if m["type"] == "response.create"]  # it already said goodbye
    assert of_type(call.model_event(rt.ResponseDone("resp_1", "completed", {}), 10), HangUp) == []
    assert of_type(call.twilio_event(tw.MarkEcho(SID, "m0"), 100), HangUp) == []
    assert of_type(call.twilio_event(tw.MarkEcho(SID, "m1"), 200), HangUp) == [HangUp("the agent ended the call")]
    assert of_type(call.twilio_event(tw.MarkEcho(SID, "m1"), 300), HangUp) == []


def test_end_call_before_any_goodbye_asks_for_one_first():
    call = control_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    out = call.model_event(rt.FunctionCallRequested("resp_1", "c1", "end_call", "{}"), 0)
    assert not [m for m in sends(out) if m["type"] == "response.create"]
    out = call.model_event(rt.ResponseDone("resp_1", "completed", {}), 10)
    assert {"type": "response.create", "response": {"instructions": "Say a brief, friendly goodbye to the caller now."}} in sends(out)
    assert of_type(out, HangUp) == []
    call.model_event(rt.ResponseCreated("resp_2"), 20)
    call.model_event(delta(response="resp_2", item="item_2", ms=100), 20)
    call.model_event(rt.ResponseDone("resp_2", "completed", {}), 30)
    assert of_type(call.twilio_event(tw.MarkEcho(SID, "m0"), 120), HangUp)


def test_transfer_waits_for_the_announcement():
    call = control_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(delta(ms=100), 0)
    call.model_event(rt.FunctionCallRequested("resp_1", "c1", "transfer_call", '{"reason":"billing"}'), 0)
    call.model_event(rt.ResponseDone("resp_1", "completed", {}), 10)
    assert of_type(call.twilio_event(tw.MarkEcho(SID, "m0"), 100), Transfer)


def test_call_control_names_are_user_tools_when_not_enabled():
    call = make_call()  # no call-control built-ins configured
    call.model_event(rt.ResponseCreated("r"), 0)
    out = call.model_event(rt.FunctionCallRequested("r", "c1", "end_call", "{}"), 0)
    assert of_type(out, RunTool)


def test_dtmf_reaches_the_model_as_a_conversation_item():
    call = make_call()
    out = call.twilio_event(tw.Dtmf(SID, "4"), 0)
    assert sends(out, Peer.MODEL) == [
        {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                     "content": [{"type": "input_text", "text": "The caller pressed 4 on the phone keypad."}]}},
        {"type": "response.create"},
    ]
    # A second digit while that response is pending adds the item; one response covers both.
    assert [m["type"] for m in sends(call.twilio_event(tw.Dtmf(SID, "2"), 1), Peer.MODEL)] == ["conversation.item.create"]


def test_per_call_settings_go_into_session_update_and_greeting():
    call = Call(CallConfig(session_update={"type": "session.update", "session": {"instructions": "base",
                                                                                  "audio": {"output": {"voice": "marin"}}}}))
    call.apply_call_settings(0, instructions="Remind Ann of her 3 pm appointment.", voice="cedar", greeting="Hi Ann!")
    call.twilio_event(tw.Start(SID, "CA1", "AC1", "audio/x-mulaw", 8000, {}), 0)
    update = sends(call.model_connected(0))[0]["session"]
    assert update["instructions"] == "Remind Ann of her 3 pm appointment."
    assert update["audio"]["output"]["voice"] == "cedar"
    out = call.model_event(rt.SessionUpdated(), 0)
    greeting = sends(out)[0]["response"]["instructions"]
    # A response's instructions replace the session's for that response: they must carry them.
    assert greeting.startswith("Remind Ann of her 3 pm appointment.") and "Hi Ann!" in greeting


def test_talking_over_the_goodbye_cancels_the_hang_up():
    call = control_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(delta(ms=500), 0)
    call.model_event(rt.FunctionCallRequested("resp_1", "c1", "end_call", "{}"), 0)
    call.model_event(rt.ResponseDone("resp_1", "completed", {}), 10)
    out = call.model_event(rt.SpeechStarted(0, "u"), 140)  # "wait, one more thing"
    assert of_type(out, HangUp) == []
    assert of_type(call.twilio_event(tw.MarkEcho(SID, "m4"), 150), HangUp) == []  # cleared echo
    assert of_type(call.model_event(rt.ResponseDone("resp_x", "cancelled", {}), 160), HangUp) == []


def test_a_refused_response_request_does_not_block_the_hang_up():
    call = control_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(rt.FunctionCallRequested("resp_1", "c1", "end_call", "{}"), 0)
    out = call.model_event(rt.ResponseDone("resp_1", "completed", {}), 10)  # asks for a goodbye
    assert [m["type"] for m in sends(out)] == ["response.create"]
    out = call.model_event(rt.ModelError("rate_limit_exceeded", "slow down", "server_error"), 20)
    assert of_type(out, HangUp)  # nothing more will be said: hang up rather than hold the line forever


def test_end_call_again_without_audio_does_not_loop():
    call = control_call()
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(rt.FunctionCallRequested("resp_1", "c1", "end_call", "{}"), 0)
    call.model_event(rt.ResponseDone("resp_1", "completed", {}), 10)
    call.model_event(rt.ResponseCreated("resp_2"), 20)
    out = call.model_event(rt.FunctionCallRequested("resp_2", "c2", "end_call", "{}"), 20)
    assert not [m for m in sends(out) if m.get("type") == "response.create"]
    assert of_type(call.model_event(rt.ResponseDone("resp_2", "completed", {}), 30), HangUp)


def test_a_failed_transfer_keeps_the_call_and_tells_the_agent():
    call = control_call()
    out = call.transfer_failed(0)
    assert "transfer to a colleague failed" in sends(out)[0]["response"]["instructions"]
    assert of_type(out, EndCall) == []


def test_a_start_from_another_twilio_account_is_refused():
    call = Call(CallConfig(session_update={}, account_sid="AC_mine"))
    out = call.twilio_event(tw.Start(SID, "CA_victim", "AC_other", "audio/x-mulaw", 8000, {}), 0)
    assert of_type(out, Dropped) and of_type(out, EndCall)


# ---- a replacement model session -----------------------------------------------------------------

from gateway.call import ModelSessionLost  # noqa: E402


def test_a_lost_model_session_is_replaced_with_the_conversation_carried_as_text():
    call = make_call()
    call.model_event(rt.Transcript("user", "u1", "Where is my order?"), 0)
    call.model_event(rt.Transcript("assistant", "a1", "It ships tomorrow."), 0)
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    call.model_event(delta(ms=300), 0)
    assert of_type(call.model_lost("code 1001", 0), ModelSessionLost)
    # While the new session connects, caller audio is held, not sent to a dead socket.
    assert call.twilio_event(tw.Media(SID, 0, b"\xff" * 160), 0) == []
    out = call.model_connected(0)
    messages = sends(out, Peer.MODEL)
    assert messages[0]["type"] == "session.update"
    assert [(m["item"]["role"], m["item"]["content"][0]["text"]) for m in messages[1:3]] == [
        ("user", "Where is my order?"), ("assistant", "It ships tomorrow.")]
    assert messages[3]["type"] == "input_audio_buffer.append"
    # A barge-in over audio of the old session clears Twilio, but truncates nothing the new session lacks.
    out = call.model_event(rt.SpeechStarted(0, "u2"), 50)
    assert sends(out, Peer.TWILIO) == [{"event": "clear", "streamSid": SID}]
    assert truncates(out) == {}


def test_keys_pressed_while_the_model_reconnects_reach_it_once_it_is_back():
    call = make_call()
    call.model_lost("code 1006", 0)
    assert sends(call.twilio_event(tw.Dtmf(SID, "7"), 0)) == []
    out = call.model_connected(0)
    texts = [m["item"]["content"][0]["text"] for m in sends(out, Peer.MODEL) if m["type"] == "conversation.item.create"]
    assert texts == ["The caller pressed 7 on the phone keypad."]
    assert sends(out, Peer.MODEL)[-1] == {"type": "response.create"}  # and the answer to it is asked for


# ---- bounds: real-time caller audio, time limit, idle media, tools per call, the credential's CallSid -----------

from gateway.call import CallTimeLimitReached  # noqa: E402


def appended_ms(outputs) -> int:
    return sum(len(base64.b64decode(m["audio"])) // PCM_MS for m in sends(outputs, Peer.MODEL)
               if m["type"] == "input_audio_buffer.append")


def test_caller_audio_faster_than_real_time_is_dropped_beyond_a_small_burst():
    call = make_call(caller_audio_burst_ms=200)
    accepted = dropped = 0
    # A flood: 100 frames (2 s of audio) within 100 ms of wall-clock time.
    for n in range(100):
        out = call.twilio_event(tw.Media(SID, n * 20, b"\xff" * 160), n)
        accepted += appended_ms(out)
        dropped += len([d for d in of_type(out, Dropped) if d.reason == "caller audio faster than real time"])
    assert accepted <= 100 + 200 + 20 and dropped >= 80  # real time plus the burst, no more
    # Real time goes on: a frame a little later is taken again.
    assert appended_ms(call.twilio_event(tw.Media(SID, 2000, b"\xff" * 160), 1000)) == 20


def test_real_time_audio_with_jitter_is_never_dropped():
    call = make_call(caller_audio_burst_ms=1000)
    # A 600 ms network stall, then the frames it held arrive together: all of them are taken.
    for n in range(200):
        arrival = n * 20 if not 50 <= n < 80 else 80 * 20
        out = call.twilio_event(tw.Media(SID, n * 20, b"\xff" * 160), arrival)
        assert not of_type(out, Dropped), n


def test_gap_fill_never_exceeds_the_wall_clock_time_that_passed():
    call = make_call()
    call.twilio_event(tw.Media(SID, 0, b"\x00" * 160), 0)
    # A forged jump of 2 s, 20 ms of wall-clock later: at most 20 ms of silence, not 2 s.
    out = call.twilio_event(tw.Media(SID, 2000, b"\x00" * 160), 20)
    assert appended_ms(out) <= 20 + 20


def test_a_start_for_another_call_than_the_credentials_is_refused():
    call = Call(CallConfig(session_update={}), expected_call_sid="CA" + "1" * 32)
    out = call.twilio_event(tw.Start(SID, "CA" + "2" * 32, "", "audio/x-mulaw", 8000, {}), 0)
    assert of_type(out, EndCall) == [EndCall("stream credential is for another call", refused=True)]
    assert not of_type(out, CallStarted)
    ok = Call(CallConfig(session_update={}), expected_call_sid="CA" + "1" * 32)
    assert of_type(ok.twilio_event(tw.Start(SID, "CA" + "1" * 32, "", "audio/x-mulaw", 8000, {}), 0), CallStarted)


def test_idle_media_ends_the_call():
    call = make_call(media_idle_timeout_ms=10_000)
    call.twilio_event(tw.Media(SID, 0, b"\xff" * 160), 1_000)
    assert call.tick(10_999) == []
    assert of_type(call.tick(11_000), EndCall)[0].reason == "no media from Twilio for 10 s"


def test_the_time_limit_asks_for_a_goodbye_then_hangs_up_once_it_is_heard():
    call = make_call(max_call_duration_ms=60_000, wrap_up_grace_ms=20_000)
    assert call.tick(59_999) == []
    out = call.tick(60_000)
    assert of_type(out, CallTimeLimitReached) == [CallTimeLimitReached(60_000)]
    [create] = [m for m in sends(out, Peer.MODEL) if m["type"] == "response.create"]
    assert "time limit" in create["response"]["instructions"]
    assert call.tick(61_000) == []  # asked once
    call.model_event(rt.ResponseCreated("resp_bye"), 61_000)
    out = call.model_event(delta("resp_bye", "item_bye", ms=100), 61_100)
    mark = sends(out, Peer.TWILIO)[-1]["mark"]["name"]
    assert not of_type(call.model_event(rt.ResponseDone("resp_bye", "completed", {}), 61_200), HangUp)
    assert of_type(call.twilio_event(tw.MarkEcho(SID, mark), 61_300), HangUp)  # heard: hang up
    # Whatever the agent does, the call ends after the grace period.
    assert of_type(call.tick(80_000), EndCall)[0].reason == "the call reached its time limit"


def test_tools_of_one_call_run_one_at_a_time_and_queue_boundedly():
    call = make_call(max_tools_per_call=1)
    call.model_event(rt.ResponseCreated("resp_1"), 0)
    first = call.model_event(rt.FunctionCallRequested("resp_1", "c1", "lookup", "{}"), 0)
    second = call.model_event(rt.FunctionCallRequested("resp_1", "c2", "lookup", "{}"), 0)
    assert of_type(first, RunTool) and not of_type(second, RunTool)  # waits for a free slot
    out = call.tool_finished("c1", "{}", 0)
    assert of_type(out, RunTool) == [RunTool("c2", "lookup", "{}")]
    for n in range(3, 20):  # a model asking for tool after tool: the queue is bounded, the rest fail at once
        out = call.model_event(rt.FunctionCallRequested("resp_1", f"c{n}", "lookup", "{}"), 0)
    refused = [m for m in sends(out, Peer.MODEL) if m["type"] == "conversation.item.create"]
    assert refused and "too many tool calls" in refused[0]["item"]["output"]


def test_key_presses_faster_than_a_keypad_are_dropped():
    call = make_call()
    reached = [bool(sends(call.twilio_event(tw.Dtmf(SID, "5"), n), Peer.MODEL)) for n in range(100)]  # 100 in 0.1 s
    assert sum(reached) == 20  # the burst, then nothing
    assert sends(call.twilio_event(tw.Dtmf(SID, "5"), 1_000), Peer.MODEL)  # a keypad's pace again


def test_items_are_keyed_per_session_so_a_replacement_may_reuse_item_ids():
    call = make_call()
    call.model_event(rt.ResponseCreated("r1"), 0)
    call.model_event(delta("r1", "item_1", ms=300), 0)  # m0..m2
    call.twilio_event(tw.MarkEcho(SID, "m2"), 300)
    call.model_event(rt.ResponseDone("r1", "completed", {}), 300)
    call.model_lost("socket dropped", 0)
    call.model_connected(0)  # a server that numbers its items per session starts at item_1 again
    call.model_event(rt.ResponseCreated("r2"), 400)
    call.model_event(delta("r2", "item_1", ms=200), 400)  # m3, m4: a new item, from 0
    out = call.model_event(rt.SpeechStarted(0, "u"), 450)
    assert truncates(out) == {"item_1": 50}  # not 350: the old session's item_1 is another item


def test_item_accounting_stays_bounded_over_a_long_call():
    from gateway.call.core import MAX_TRACKED_ITEMS

    call = make_call()
    for n in range(500):
        call.model_event(rt.ResponseCreated(f"r{n}"), n * 1000)
        out = call.model_event(delta(f"r{n}", f"item_{n}", ms=100), n * 1000)
        call.twilio_event(tw.MarkEcho(SID, sends(out, Peer.TWILIO)[-1]["mark"]["name"]), n * 1000 + 100)
        call.model_event(rt.ResponseDone(f"r{n}", "completed", {}), n * 1000 + 100)
    assert len(call._items) <= MAX_TRACKED_ITEMS and len(call._playback._heard) <= MAX_TRACKED_ITEMS
    assert call.heard_ms("item_499") == 100


def test_the_model_session_is_asked_for_explicitly_and_only_for_a_valid_start():
    from gateway.call import ConnectModel

    call = Call(CallConfig(session_update={}), expected_call_sid="CA" + "1" * 32)
    assert of_type(call.twilio_event(tw.Media(SID, 0, b"\xff" * 160), 0), ConnectModel) == []
    assert of_type(call.twilio_event(tw.Start(SID, "CA" + "1" * 32, "", "x", 8000, {}), 0), ConnectModel) == [ConnectModel()]
    assert of_type(call.twilio_event(tw.Start(SID, "CA" + "1" * 32, "", "x", 8000, {}), 0), ConnectModel) == []  # once
    refused = Call(CallConfig(session_update={}), expected_call_sid="CA" + "1" * 32)
    assert of_type(refused.twilio_event(tw.Start(SID, "CA" + "2" * 32, "", "x", 8000, {}), 0), ConnectModel) == []


# ---- the greeting is not lost ---------------------------------------------------------------------------------


def greeting_call():
    call = make_call(agent_speaks_first=True, greeting_instructions="Greet the caller.")
    assert creates(call.model_event(rt.SessionUpdated(), 0)) == 1
    return call


def creates(outputs) -> int:
    return len([m for m in sends(outputs, Peer.MODEL) if m["type"] == "response.create"])


def test_a_greeting_lost_with_its_session_is_asked_of_the_next_one():
    call = greeting_call()
    call.model_event(rt.ResponseCreated("r1"), 10)
    call.model_event(delta("r1", "item_1", ms=100), 20)  # the first words, then the session dies
    call.model_lost("socket dropped", 0)
    assert creates(call.model_connected(0)) == 0  # not before the new session is configured
    assert creates(call.model_event(rt.SessionUpdated(), 100)) == 1
    call.model_event(rt.ResponseCreated("r2"), 110)
    call.model_event(delta("r2", "item_1", ms=300), 120)
    call.model_event(rt.ResponseDone("r2", "completed", {}), 130)
    call.model_lost("expired", 0)
    call.model_connected(0)
    assert creates(call.model_event(rt.SessionUpdated(), 200)) == 0  # it was all sent: never twice


def test_a_failed_greeting_is_asked_again_a_bounded_number_of_times():
    call = greeting_call()
    asked = 1
    for n in range(5):
        call.model_event(rt.ResponseCreated(f"r{n}"), n)
        asked += creates(call.model_event(rt.ResponseDone(f"r{n}", "failed", {}), n))
    assert asked == 3


def test_a_callee_who_speaks_first_gets_an_answer_not_a_late_greeting():
    call = make_call(agent_speaks_first=True, greeting_instructions="Greet the caller.")
    call.model_event(rt.ResponseCreated("auto"), 0)  # "Hello?" started a response before the session was updated
    assert creates(call.model_event(rt.SessionUpdated(), 5)) == 0  # waits for the active response
    call.model_event(rt.SpeechStarted(0, "u"), 10)  # the callee talks
    assert creates(call.model_event(rt.ResponseDone("auto", "cancelled", {}), 20)) == 0


def test_a_response_is_not_asked_for_while_the_caller_is_mid_sentence():
    call = make_call()
    call.model_event(rt.ResponseCreated("r1"), 0)
    call.model_event(rt.FunctionCallRequested("r1", "c1", "lookup", "{}"), 0)
    call.model_event(rt.ResponseDone("r1", "completed", {}), 10)
    call.model_event(rt.SpeechStarted(100, "u1"), 100)  # the caller starts talking while the tool runs
    out = call.tool_finished("c1", '{"ok": true}', 0)
    assert [m["type"] for m in sends(out, Peer.MODEL)] == ["conversation.item.create"]  # the result, no response yet
    out = call.twilio_event(tw.Dtmf(SID, "3"), 200)  # a key pressed mid-sentence: the item, still no response
    assert [m["type"] for m in sends(out, Peer.MODEL)] == ["conversation.item.create"]
    out = call.model_event(rt.SpeechStopped(900, "u1"), 900)
    assert [m["type"] for m in sends(out, Peer.MODEL)] == ["response.create"]  # once they stopped, once


# ---- what a replacement session is told ---------------------------------------------------------------------


def carried(outputs) -> list[tuple[str, str]]:
    return [(m["item"]["role"], m["item"]["content"][0]["text"]) for m in sends(outputs, Peer.MODEL)
            if m["type"] == "conversation.item.create" and m["item"]["type"] == "message"]


def test_the_carried_conversation_is_in_order_truncated_to_what_was_heard_and_has_the_tools():
    call = make_call()
    call.model_event(rt.SpeechStarted(0, "u1"), 0)  # the caller's item begins ...
    call.model_event(rt.ResponseCreated("r1"), 600)
    call.model_event(delta("r1", "a1", ms=1000), 600)
    call.model_event(rt.Transcript("assistant", "a1", "Your order shipped on Monday and arrives on Thursday."), 700)
    call.model_event(rt.Transcript("user", "u1", "Where is my order?"), 800)  # ... its text lands after the reply
    call.model_event(rt.SpeechStarted(0, "u2"), 1100)  # the caller talks over the answer 500 ms into 1000 ms
    call.model_event(rt.ResponseDone("r1", "cancelled", {}), 1110)
    call.model_event(rt.Transcript("user", "u2", "Can you check order 42?"), 1500)
    call.model_event(rt.ResponseCreated("r2"), 1600)
    call.model_event(rt.FunctionCallRequested("r2", "c1", "check_order", '{"order_id": "42"}'), 1600)
    call.tool_finished("c1", '{"status": "shipped"}', 0)
    call.model_lost("socket dropped", 0)
    items = carried(call.model_connected(0))
    assert [role for role, _ in items] == ["user", "assistant", "user", "assistant"]
    assert items[0][1] == "Where is my order?"
    heard = items[1][1]  # about half of the answer, cut on a word, and marked as interrupted
    assert heard.startswith("Your order shipped") and "Thursday" not in heard and "interrupted" in heard
    assert "check_order" in items[3][1] and '"42"' in items[3][1] and "shipped" in items[3][1]


def test_an_answer_cut_by_a_lost_session_is_resumed_in_the_new_one():
    call = make_call()
    call.model_event(rt.ResponseCreated("r1"), 0)
    call.model_event(delta("r1", "a1", ms=300), 0)  # mid-answer, the socket dies
    call.model_lost("socket dropped", 0)
    out = call.model_connected(0)
    [create] = [m for m in sends(out, Peer.MODEL) if m["type"] == "response.create"]
    assert "cut off" in create["response"]["instructions"]
    # An answer the caller had interrupted is not resumed.
    other = make_call()
    other.model_event(rt.ResponseCreated("r1"), 0)
    other.model_event(delta("r1", "a1", ms=300), 0)
    other.model_event(rt.SpeechStarted(0, "u"), 100)
    other.model_lost("socket dropped", 0)
    assert not [m for m in sends(other.model_connected(0), Peer.MODEL) if m["type"] == "response.create"]


def test_a_tool_result_after_a_reconnect_reaches_the_new_session_and_the_agent_goes_on():
    call = make_call()
    call.model_event(rt.ResponseCreated("r1"), 0)
    call.model_event(rt.FunctionCallRequested("r1", "c1", "check_order", '{"order_id": "42"}'), 0)
    call.model_lost("socket dropped", 0)
    call.model_connected(0)
    call.model_event(rt.SessionUpdated(), 10)
    out = call.tool_finished("c1", '{"status": "shipped"}', 0)
    messages = sends(out, Peer.MODEL)
    assert [m["type"] for m in messages] == ["conversation.item.create", "response.create"]
    assert "shipped" in messages[0]["item"]["content"][0]["text"]  # as a note: c1 means nothing to this session


def test_a_goodbye_heard_before_the_loss_still_hangs_up():
    call = control_call()
    call.model_event(rt.ResponseCreated("r1"), 0)
    out = call.model_event(delta("r1", "a1", ms=100), 0)
    call.model_event(rt.FunctionCallRequested("r1", "c1", "end_call", "{}"), 0)
    mark = sends(out, Peer.TWILIO)[-1]["mark"]["name"]
    assert not of_type(call.twilio_event(tw.MarkEcho(SID, mark), 100), HangUp)  # heard, but the response is open
    assert of_type(call.model_lost("socket dropped", 0), HangUp)  # the session died before response.done: act now


def test_comfort_noise_while_a_replacement_session_takes_long_and_none_after():
    call = make_call()
    call.model_connected(8_000)
    call.model_lost("socket dropped", 10_000)
    assert sends(call.tick(10_499), Peer.TWILIO) == []  # a quick reconnect is not worth a sound
    noise = sends(call.tick(10_500), Peer.TWILIO)
    assert [m["event"] for m in noise] == ["media", "media"]  # kept 1.5 s ahead of its playback, a second a piece
    assert all(len(base64.b64decode(m["media"]["payload"])) == 8000 for m in noise)
    assert len(sends(call.tick(11_500), Peer.TWILIO)) == 1  # a second at a time while it lasts
    assert sends(call.model_connected(12_000), Peer.TWILIO) == []  # what is queued plays on while the model starts
    assert sends(call.tick(13_000), Peer.TWILIO) == []
    call.model_event(rt.ResponseCreated("r1"), 13_100)
    out = sends(call.model_event(delta("r1", "a1"), 13_200), Peer.TWILIO)
    assert out[0] == {"event": "clear", "streamSid": SID}  # what is left of it goes before the agent's words
    assert out[1]["event"] == "media"


def rollover_call():
    call = Call(CallConfig(session_update={"type": "session.update", "session": {}}, session_limit_ms=60_000,
                           rollover_margin_ms=10_000))
    call.twilio_event(tw.Start(SID, "CA1", "AC1", "audio/x-mulaw", 8000, {}), 0)
    call.model_connected(0)
    return call


def test_a_rollover_is_prepared_before_the_session_limit_only_at_a_quiet_point():
    from gateway.call import ModelRolledOver, PrepareRollover, SwitchModel

    call = rollover_call()
    assert not of_type(call.tick(49_000), PrepareRollover)  # not yet within the margin
    call.model_event(rt.SpeechStarted(audio_start_ms=0, item_id="item_u1"), 50_000)
    assert not of_type(call.tick(50_000), PrepareRollover)  # the caller is speaking
    call.model_event(rt.SpeechStopped(audio_end_ms=0, item_id="item_u1"), 51_000)
    call.model_event(rt.Transcript("user", "item_u1", "what time is it"), 51_000)
    call.model_event(rt.ResponseCreated("resp_1"), 51_100)
    assert not of_type(call.tick(51_200), PrepareRollover)  # the agent is answering
    call.model_event(delta(ms=200), 51_300)
    call.model_event(rt.Transcript("assistant", "item_1", "it is noon"), 51_300)
    call.model_event(rt.ResponseDone("resp_1", "completed", {}), 51_400)
    assert not of_type(call.tick(51_500), PrepareRollover)  # its audio is still playing at Twilio
    call.twilio_event(tw.MarkEcho(SID, "m1"), 51_600)
    call.twilio_event(tw.MarkEcho(SID, "m2"), 51_700)
    prepare = of_type(call.tick(52_000), PrepareRollover)
    assert prepare and not of_type(call.tick(53_000), PrepareRollover)  # once
    setup = sends(call.rollover_setup(52_100), Peer.NEXT_MODEL)  # to the session being prepared, not the current
    assert [m["type"] for m in setup] == ["session.update", "conversation.item.create", "conversation.item.create"]
    assert [m["item"]["role"] for m in setup[1:]] == ["user", "assistant"]
    out = call.rollover_ready(53_500)
    assert of_type(out, SwitchModel) and of_type(out, ModelRolledOver)[0].session_age_ms == 53_500
    # The new session numbers items afresh: its item_1 is a new item, not the old one's.
    out = call.model_event(delta(response="resp_9", item="item_1", ms=100), 54_000)
    assert [m["event"] for m in sends(out, Peer.TWILIO)] == ["media", "mark"]


def test_a_rollover_is_abandoned_when_the_caller_speaks_while_it_is_prepared():
    from gateway.call import PrepareRollover, SwitchModel

    call = rollover_call()
    assert of_type(call.tick(55_000), PrepareRollover)
    call.model_event(rt.SpeechStarted(audio_start_ms=0, item_id="item_u1"), 55_200)
    assert call.rollover_ready(55_400) == []  # the shell drops the prepared session
    call.model_event(rt.SpeechStopped(audio_end_ms=0, item_id="item_u1"), 56_000)
    assert not of_type(call.tick(56_500), PrepareRollover)  # not again at once
    assert of_type(call.tick(57_500), PrepareRollover)
    call.rollover_failed("timed out", 57_600)  # could not be prepared: the current session goes on, tried again later
    assert not of_type(call.tick(58_000), PrepareRollover)
    assert of_type(call.tick(59_700), PrepareRollover)
    assert of_type(call.rollover_ready(59_800), SwitchModel)


def test_caller_audio_can_be_batched_to_the_model_and_a_partial_batch_survives_a_loss():
    call = make_call(caller_audio_batch_ms=60)
    sent = []
    for n in range(5):
        sent += sends(call.twilio_event(tw.Media(SID, n * 20, b"\xff" * 160), n * 20), Peer.MODEL)
    assert len(sent) == 1 and len(base64.b64decode(sent[0]["audio"])) == 60 * PCM_MS  # three frames in one
    call.model_lost("cut", 100)  # two frames gathered, not sent: held for the next session, not lost
    out = sends(call.model_connected(200), Peer.MODEL)
    appended = [m for m in out if m["type"] == "input_audio_buffer.append"]
    assert len(appended) == 1 and len(base64.b64decode(appended[0]["audio"])) == 40 * PCM_MS
