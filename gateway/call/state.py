"""The call's state, as small composed objects each with an explicit state enum (no loose flags on the call):

* :class:`Greeting` (:class:`GreetingPhase`): the agent's first words, asked of every session until heard;
* :class:`Responses` (:class:`ResponsePhase`): the model response under way, or asked for, and one wanted next;
* :class:`ModelLink` (:class:`LinkPhase`): the current model session, and a next one prepared beside it;
* :class:`Line` (:class:`LinePhase`), the playback state: what the caller's line plays besides the agent (comfort
  noise, the wait prompt; the agent's own audio is accounted in :mod:`gateway.call.playback`), and the call control (hang-up, transfer) that waits for the agent's words to be heard
  (:class:`ControlPhase`, :class:`TransferPhase`).

Plain slotted objects: the hot path (a caller frame every 20 ms, agent audio) reads one attribute of one of them and
allocates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from gateway.call.outputs import HangUp, Transfer
from gateway.call.reconnect import Reconnects


class GreetingPhase(Enum):
    UNASKED = "unasked"  # not (or no longer) asked of the current session
    ASKED = "asked"  # asked of ``Greeting.session``; its response not created yet
    PLAYING = "playing"  # its response (``Greeting.response_id``) is under way
    DONE = "done"  # all of it went to Twilio, or the caller spoke first: never asked again


@dataclass(slots=True)
class Greeting:
    """AGENT_SPEAKS_FIRST: asked of every session until it was all sent to Twilio, or the caller spoke (a session
    that dies before it plays, or a refused request, does not lose it), a bounded number of times."""

    phase: GreetingPhase = GreetingPhase.UNASKED
    session: int = 0  # the session it was last asked of (0: never)
    response_id: str | None = None  # PLAYING: its response
    attempts: int = 0


class ResponsePhase(Enum):
    IDLE = "idle"  # no response under way, none asked for
    REQUESTED = "requested"  # a response.create of ours is on its way (no response.created yet)
    ACTIVE = "active"  # a response (``Responses.active``) is under way


@dataclass(slots=True)
class Responses:
    """Turn-taking: a response is asked for only when one is wanted, none is under way or asked for, no tool is
    running and the caller is not mid-sentence."""

    phase: ResponsePhase = ResponsePhase.IDLE
    active: str | None = None  # ACTIVE: its id
    wanted: bool = False  # one is wanted next (a tool result, a key press, a goodbye), with ``instructions``
    instructions: str = ""
    interrupted: set[str] = field(default_factory=set)  # the caller talked over them: late deltas are dropped
    with_audio: set[str] = field(default_factory=set)  # responses whose audio began
    created: tuple[str, float] | None = None  # (id, when) of the latest response.created: time to first audio


class LinkPhase(Enum):
    DOWN = "down"  # no session: not connected yet, or lost (when to reconnect is ``ModelLink.reconnects``')
    READY = "ready"  # a session is configured and current
    PREPARING = "preparing"  # ready, and the next session is being prepared beside it (a rollover)


@dataclass(slots=True)
class ModelLink:
    """The model sessions of the call: which is current, since when, and the schedule of the next."""

    reconnects: Reconnects
    phase: LinkPhase = LinkPhase.DOWN
    session: int = 0  # the current session's number (items are keyed by it)
    started_ms: float | None = None  # when the current session was connected (or switched to)
    rollover_not_before_ms: float = 0.0
    wake_pending_ms: float | None = None  # the one wake-up asked of the shell, not yet due


class LinePhase(Enum):
    AGENT = "agent"  # nothing but the agent's audio (and silence) was sent since the last clear
    COMFORT_NOISE = "comfort_noise"  # comfort noise (or the wait prompt) was sent: the agent's first audio clears it


class ControlPhase(Enum):
    NONE = "none"  # no hang-up or transfer decided
    AWAITING_PLAYBACK = "awaiting_playback"  # ``Line.control`` goes out once what the agent said has been heard
    CARRIED_OUT = "carried_out"  # it went out to the shell (or the API hung up): never twice


class TransferPhase(Enum):
    NONE = "none"
    SENT = "sent"  # the Transfer output left: one transfer per call
    FAILED = "failed"  # Twilio refused it: not tried again either


@dataclass(slots=True)
class _AgentItem:
    """One assistant item's audio, as the model produced it."""

    response_id: str
    received_bytes: int = 0  # model-format audio bytes received (item positions count from these)


@dataclass(slots=True)
class Line:
    """The caller's line besides the agent's audio, and the call control waiting for it to be heard."""

    phase: LinePhase = LinePhase.AGENT
    noise_until_ms: float = 0.0  # when the comfort noise sent so far ends playing
    prompted_outage: float | None = None  # the outage (its start) the wait prompt was said in
    control: HangUp | Transfer | None = None  # the hang-up or transfer decided (kept once carried out)
    control_phase: ControlPhase = ControlPhase.NONE
    transfer: TransferPhase = TransferPhase.NONE
