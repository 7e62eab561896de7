"""The call core's contract: every action it decides is an output (rollover set-up and failure, the reconnect
give-up, the budget stop, a lease refused, Twilio's backlog overflowing), ``now_ms`` is required on every event
method, the end is recorded once (``Call.ending``), and the shell refuses an output it does not know. Event scripts in
milliseconds, no sockets, no sleeps (the dispatcher's test builds the shell without serving a call)."""

from __future__ import annotations

import inspect
import typing
from dataclasses import replace

import pytest

from gateway.call import (
    BudgetReached,
    Call,
    CallConfig,
    EndCall,
    HangUp,
    LeaseRefused,
    ModelGaveUp,
    Output,
    Peer,
    PrepareRollover,
    RolloverFailed,
    Send,
    SwitchModel,
    TwilioBacklogOverflowed,
)
from gateway.call.limits import BUDGET_INSTRUCTIONS, MODEL_DOWN_LIMIT_MS, ROLLOVER_RETRY_MS
from gateway.config import Settings
from gateway.realtime import events as rt
from gateway.twilio import media as tw

SID = "MZ" + "0" * 32
PCM_MS = 48
BUDGET_REASON = "the call budget was reached"


def started(**config: typing.Any) -> Call:
    call = Call(CallConfig(session_update={"type": "session.update", "session": {"instructions": "Be kind."}},
                           **config))
    call.twilio_event(tw.Start(SID, "CA1", "AC1", "audio/x-mulaw", 8000, {}), 0)
    call.model_connected(10)
    return call


def of_type(outputs: list[Output], kind: type) -> list[typing.Any]:
    return [o for o in outputs if isinstance(o, kind)]


def sends(outputs: list[Output], peer: Peer) -> list[dict[str, typing.Any]]:
    return [o.message for o in outputs if isinstance(o, Send) and o.to is peer]


def delta(response: str, item: str, ms: int) -> rt.AudioDelta:
    return rt.AudioDelta(response, item, b"\x00\x01" * (ms * PCM_MS // 2))


# ---- now_ms is required everywhere ------------------------------------------------------------------------------

EVENT_METHODS = [name for name, member in inspect.getmembers(Call, inspect.isfunction)
                 if not name.startswith("_") and name not in {"heard_ms", "transfer_refusal"}]


def test_every_event_method_of_the_core_takes_a_required_now_ms() -> None:
    assert len(EVENT_METHODS) >= 20, EVENT_METHODS
    hints_missing = []
    for name in EVENT_METHODS:
        parameter = inspect.signature(getattr(Call, name)).parameters.get("now_ms")
        if parameter is None or parameter.default is not inspect.Parameter.empty:
            hints_missing.append(name)
        elif "None" in str(parameter.annotation) or "Optional" in str(parameter.annotation):
            hints_missing.append(name)
    assert hints_missing == [], hints_missing


def test_every_event_method_returns_outputs() -> None:
    wrong = [name for name in EVENT_METHODS
             if "list[Output]" not in str(inspect.signature(getattr(Call, name)).return_annotation)]
    assert wrong == [], wrong


# ---- the end, recorded once --------------------------------------------------------------------------------------

def test_the_end_is_recorded_once_and_nothing_follows_it() -> None:
    call = started()
    assert call.ending is None and not call.ended
    out = call.lease_refused("global_limit", 500)
    assert of_type(out, LeaseRefused) == [LeaseRefused("global_limit")]
    assert of_type(out, EndCall) == [EndCall("at MAX_CALLS_GLOBAL", False)] and call.ending == out[-1]
    assert call.ended
    # Whatever is reported afterwards, the first end stands and nothing else is decided.
    assert call.twilio_closed(600) == [] and call.model_lost("cut", 600) == []
    assert call.twilio_backlog_overflowed(10**9, 600) == [] and call.cost_reported(99.0, 600) == []
    assert call.twilio_event(tw.Media(SID, 20, b"\xff" * 160), 600) == []
    assert call.tick(60_000) == []
    assert call.ending == EndCall("at MAX_CALLS_GLOBAL", False)


@pytest.mark.parametrize("cause, reason", [("global_limit", "at MAX_CALLS_GLOBAL"),
                                           ("number_limit", "at MAX_CALLS_PER_NUMBER"),
                                           ("state_unavailable", "shared state unavailable")])
def test_a_lease_refused_is_decided_by_the_core(cause: str, reason: str) -> None:
    out = started().lease_refused(cause, 300)  # type: ignore[arg-type]
    assert out == [LeaseRefused(cause), EndCall(reason, False)]


def test_a_twilio_backlog_past_its_bound_ends_the_call_as_outputs() -> None:
    call = started()
    out = call.twilio_backlog_overflowed(8 * 1024 * 1024 + 1, 1_000)
    assert out == [TwilioBacklogOverflowed(8 * 1024 * 1024 + 1), EndCall("Twilio socket not reading", False)]


def test_no_start_within_the_bound_is_refused_but_a_started_call_goes_on() -> None:
    silent = Call(CallConfig(session_update={"type": "session.update", "session": {}}))
    assert silent.start_timed_out(5_000) == [EndCall("no start event", True)]
    assert started().start_timed_out(5_000) == []


def test_a_hang_up_carried_out_ends_the_call_with_its_reason() -> None:
    call = started()
    assert call.hangup_requested(100) == [HangUp("hung up through the API")]
    assert call.hangup_finished("hung up through the API", 400) == [EndCall("hung up through the API", False)]


# ---- the reconnect give-up -----------------------------------------------------------------------------------------

def test_the_reconnect_give_up_is_an_output_naming_why() -> None:
    call = Call(CallConfig(session_update={"type": "session.update", "session": {}}))
    call.twilio_event(tw.Start(SID, "CA1", "AC1", "audio/x-mulaw", 8000, {}), 0)
    call.tick(MODEL_DOWN_LIMIT_MS - 1)  # the first attempt is still in flight
    assert not call.ended
    out = call.tick(MODEL_DOWN_LIMIT_MS)
    gave_up = of_type(out, ModelGaveUp)
    assert gave_up and "no model session for 10 s" in gave_up[0].reason
    assert of_type(out, EndCall) == [call.ending] and call.ending is not None
    assert call.ending.reason.startswith("model socket closed: no model session")


# ---- the rollover: set-up and failure are outputs -------------------------------------------------------------------

def rolling(**config: typing.Any) -> Call:
    return started(session_limit_ms=60_000, rollover_margin_ms=10_000, **config)


def test_rollover_setup_goes_to_the_next_session_and_only_while_one_is_prepared() -> None:
    call = rolling()
    assert call.rollover_setup(1_000) == []  # none is being prepared
    assert of_type(call.tick(51_000), PrepareRollover)
    out = call.rollover_setup(51_010)
    assert out and all(isinstance(o, Send) and o.to is Peer.NEXT_MODEL for o in out)
    assert out[0].message["type"] == "session.update"  # type: ignore[union-attr]
    assert sends(out, Peer.MODEL) == []  # never to the current session


def test_rollover_failure_is_an_output_with_when_it_is_tried_again() -> None:
    call = rolling()
    assert of_type(call.tick(51_000), PrepareRollover)
    out = call.rollover_failed("HTTP 429", 51_500, retry_after_ms=7_000)
    assert out == [RolloverFailed("HTTP 429", 58_500)]
    assert not of_type(call.tick(58_000), PrepareRollover)
    assert of_type(call.tick(58_500), PrepareRollover)
    # Without a Retry-After: ROLLOVER_RETRY_MS later.
    assert call.rollover_failed("TimeoutError", 60_000) == [RolloverFailed("TimeoutError", 60_000 + ROLLOVER_RETRY_MS)]
    assert of_type(call.tick(60_000 + ROLLOVER_RETRY_MS), PrepareRollover)
    assert of_type(call.rollover_ready(62_100), SwitchModel)


# ---- the call budget -------------------------------------------------------------------------------------------------

def test_the_budget_is_decided_by_the_core_from_the_reported_cost() -> None:
    call = started(call_budget_usd=0.50, wrap_up_grace_ms=20_000)
    assert call.cost_reported(0.49, 30_000) == []
    out = call.cost_reported(0.51, 31_000)
    assert of_type(out, BudgetReached) == [BudgetReached(0.51, 0.50)]
    create = [m for m in sends(out, Peer.MODEL) if m["type"] == "response.create"]
    assert create and BUDGET_INSTRUCTIONS in create[0]["response"]["instructions"]
    assert call.cost_reported(0.60, 32_000) == []  # once
    # The goodbye plays and is heard: the call hangs up.
    call.model_event(rt.ResponseCreated("resp_bye"), 31_100)
    marks = [m["mark"]["name"] for m in sends(call.model_event(delta("resp_bye", "item_bye", 100), 31_200), Peer.TWILIO)
             if m["event"] == "mark"]
    assert of_type(call.model_event(rt.ResponseDone("resp_bye", "completed", {}), 31_300), HangUp) == []
    assert of_type(call.twilio_event(tw.MarkEcho(SID, marks[-1]), 31_500), HangUp) == [HangUp(BUDGET_REASON)]


def test_a_budget_reached_without_the_goodbye_heard_ends_after_the_grace() -> None:
    call = started(call_budget_usd=0.50, wrap_up_grace_ms=20_000)
    call.cost_reported(0.50, 40_000)
    call.model_event(rt.ResponseCreated("resp_bye"), 40_100)  # the agent never finishes
    call.tick(59_999)
    assert not call.ended
    assert of_type(call.tick(60_000), EndCall) == [EndCall(BUDGET_REASON, False)]


def test_without_a_budget_no_cost_stops_a_call() -> None:
    call = started()
    assert call.cost_reported(1_000.0, 1_000) == []


def test_a_budget_reached_during_the_time_limit_wrap_up_is_reported_but_asks_nothing_more() -> None:
    call = started(call_budget_usd=0.50, max_call_duration_ms=60_000)
    assert of_type(call.tick(60_000), Send)  # the time limit's goodbye is asked for
    out = call.cost_reported(0.70, 61_000)
    assert out == [BudgetReached(0.70, 0.50)]


# ---- the shell refuses an output it does not know -------------------------------------------------------------------

class _Socket:
    """Just enough of an accepted WebSocket to build the shell (no call is served)."""

    scope: dict[str, typing.Any] = {"type": "websocket"}

    async def receive(self) -> dict[str, typing.Any]:
        return {"type": "websocket.disconnect"}


async def _nothing(message: typing.Any) -> None:
    return None


async def test_the_dispatcher_raises_on_an_output_it_does_not_know() -> None:
    from gateway.media_stream.session import MediaStreamSession

    settings = replace(Settings.from_env({}, dotenv=False), record_calls_dir="")
    session = MediaStreamSession(_Socket(), settings, receive=_Socket().receive, send=_nothing)  # type: ignore[arg-type]

    class Surprise:
        pass

    with pytest.raises(TypeError, match="does not know"):
        session._dispatch([Surprise()])  # type: ignore[list-item]
    # What it knows is carried out: a core event is reported, an EndCall ends the call (the core's record).
    session._dispatch(session.call.twilio_closed(1.0))
    assert session._done.is_set() and session.call.ending == EndCall("twilio socket closed", False)
