"""The live view's hub: every call's events on this instance, fanned out to the console's event streams, and the
other instances' calls relayed through the shared state (:mod:`.relay`).

:meth:`LiveHub.feed` is the calls' feed (``gateway.media_stream.CallServices.feed``): it runs in a call's turn of
the event loop (one of its tasks, or a socket's callback) for every core event, so it never waits and never fails
the call. It keeps a small picture of each live call (who, since when, cost, the last turn's latency, the last
:data:`MAX_LINES` lines of its running transcript) and puts one JSON message per change into the queue of every
subscriber allowed to see that call. A queue holds at most ``queue_size`` messages: a browser that does not keep up
is dropped (its stream ends; the browser reconnects and starts again from a fresh snapshot), it never slows a call
down.

With a shared state (``shared``), each change is also handed to :class:`~.relay.LiveRelay` (which never waits), and
a new stream's snapshot and its later events include the live calls of every other instance sharing that state.

Scoping is the HTTP API's: an operator key sees every call; another key sees the outbound calls it placed (the call's
record names the key, looked up once when the call starts by the instance holding it: until then, only operators
see it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from gateway.call import (
    AgentAudioStarted, BargeIn, CallEvent, CallStarted, CallTimeLimitReached, ModelRolledOver, ModelSessionLost,
    ResponseFinished, ToolCalled, TranscriptReceived,
)
from gateway.console.relay import LiveRelay
from gateway.observe.logs import mask_number
from gateway.state.base import SharedState, StateUnavailable

log = logging.getLogger("gateway.console")

MAX_LINES = 200  # transcript lines kept per live call (a new subscriber gets these)
MAX_TEXT_CHARS = 2000
MAX_LIVE_CALLS = 10_000
DEFAULT_QUEUE_SIZE = 256
DEFAULT_MAX_SUBSCRIBERS = 100
OWNER_LOOKUP_TIMEOUT_S = 5.0


@dataclass
class LiveCall:
    call_sid: str
    direction: str
    from_: str
    to: str
    started_at: float  # epoch s
    started_ms: float  # monotonic ms: line times count from here
    owner: str | None = None  # the API key id that placed the call (None: inbound, or not known yet)
    cost_usd: float = 0.0
    turns: int = 0
    barge_ins: int = 0
    latency_ms: int | None = None  # the last turn's
    lines: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_LINES))

    def summary(self) -> dict[str, Any]:
        return {"call_sid": self.call_sid, "direction": self.direction, "from": self.from_, "to": self.to,
                "started_at": self.started_at, "cost_usd": round(self.cost_usd, 6), "turns": self.turns,
                "barge_ins": self.barge_ins, "latency_ms": self.latency_ms}


MAX_STREAMS_PER_SESSION = 3  # live streams one browser session may hold open
MAX_STREAMS_PER_KEY = 10


class Subscriber:
    """One open event stream: its queue of encoded messages, and whose calls it may see."""

    def __init__(self, key_id: str, operator: bool, session: str, queue_size: int) -> None:
        self.key_id = key_id
        self.operator = operator
        self.session = session  # the console session (its hash) the stream belongs to: logout ends it
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(queue_size)
        self.dropped = False  # too slow, logged out or shut down: the stream ends

    def sees(self, call: LiveCall) -> bool:
        return self.sees_owner(call.owner)

    def sees_owner(self, owner: str | None) -> bool:
        return self.operator or (owner is not None and owner == self.key_id)

    def push(self, message: str) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped = True  # the stream sees it at its next message (the queue is full of them)

    def end(self) -> None:
        self.dropped = True
        try:
            self.queue.put_nowait(None)  # wakes a stream waiting on an empty queue
        except asyncio.QueueFull:
            pass

    async def next(self, timeout_s: float) -> str | None:
        """The next message; "" after ``timeout_s`` of quiet (a keep-alive is due); None once dropped."""
        if self.dropped:
            return None
        try:
            message = await asyncio.wait_for(self.queue.get(), timeout_s)
        except TimeoutError:
            return ""
        return None if self.dropped or message is None else message


def encode(kind: str, data: Any) -> str:
    """One server-sent event. JSON never holds a raw newline, so ``data`` is one line whatever the text."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class LiveHub:
    """See the module docstring. ``owner_of(call_sid)`` is awaited once per call for its placing key's id;
    ``session_of(call_sid)`` gives the live session (direction, numbers, cost so far)."""

    def __init__(self, *, owner_of: Callable[[str], Any] | None = None, session_of: Callable[[str], Any] | None = None,
                 full_numbers: bool = False, queue_size: int = DEFAULT_QUEUE_SIZE,
                 max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS, shared: SharedState | None = None,
                 instance: str = "") -> None:
        self.owner_of = owner_of
        self.session_of = session_of or (lambda call_sid: None)
        self.full_numbers = full_numbers
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self.calls: dict[str, LiveCall] = {}
        self.subscribers: set[Subscriber] = set()
        self.dropped_subscribers = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.relay = None if shared is None else LiveRelay(
            shared, instance, live_calls=lambda: {sid: (live.summary(), live.owner) for sid, live in self.calls.items()},
            deliver=self._deliver_remote, listening=lambda: bool(self.subscribers),
            end_session=lambda session: self.end_session(session, everywhere=False), max_lines=MAX_LINES)

    # ---- the calls' side: never waits, never raises

    def feed(self, call: Any, event: CallEvent) -> None:
        try:
            self._feed(event, call.call_sid)
        except Exception:
            log.exception("the console's live feed failed on %s", type(event).__name__)

    def _feed(self, event: CallEvent, call_sid: str) -> None:
        if isinstance(event, CallStarted):
            self._started(event)
            return
        live = self.calls.get(call_sid)
        if live is None:
            return
        if isinstance(event, TranscriptReceived):
            if event.text.strip():
                self._line(live, "caller" if event.role == "user" else "agent", event.text)
        elif isinstance(event, AgentAudioStarted):
            live.turns += 1
            if event.turn_latency_ms is not None:
                live.latency_ms = round(event.turn_latency_ms)
            self._update(live)
        elif isinstance(event, ResponseFinished):
            session = self.session_of(call_sid)
            ledger = getattr(session, "ledger", None)
            if ledger is not None:
                live.cost_usd = ledger.cost_usd
                self._update(live)
        elif isinstance(event, BargeIn):
            live.barge_ins += 1
            self._line(live, "event", f"the caller barged in: {event.heard_ms} ms of {event.received_ms} ms heard")
        elif isinstance(event, ToolCalled):
            self._line(live, "event", f"tool called: {event.name}")
        elif isinstance(event, ModelSessionLost):
            self._line(live, "event", "model session lost: reconnecting")
        elif isinstance(event, ModelRolledOver):
            self._line(live, "event", "model session rolled over")
        elif isinstance(event, CallTimeLimitReached):
            self._line(live, "event", "time limit reached: the agent says goodbye")

    def _started(self, event: CallStarted) -> None:
        session = self.session_of(event.call_sid)
        ledger = getattr(session, "ledger", None)
        params = event.custom_parameters
        live = LiveCall(
            call_sid=event.call_sid, direction=getattr(ledger, "direction", "inbound"),
            from_=mask_number(str(params.get("From", ""))[:32], self.full_numbers),
            to=mask_number(str(params.get("To", ""))[:32], self.full_numbers),
            started_at=time.time(), started_ms=time.monotonic() * 1000,
        )
        while len(self.calls) >= MAX_LIVE_CALLS:
            self.calls.pop(next(iter(self.calls)))
        self.calls[event.call_sid] = live
        self._send(live, "call", live.summary())
        if self.owner_of is not None:
            task = asyncio.get_running_loop().create_task(self._find_owner(self.owner_of, live))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _find_owner(self, owner_of: Callable[[str], Any], live: LiveCall) -> None:
        try:
            record = await asyncio.wait_for(owner_of(live.call_sid), OWNER_LOOKUP_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - any failed lookup only narrows who sees the call
            log.warning("the console cannot tell who placed call %s (%s): only operators see it live",
                        live.call_sid, type(error).__name__)
            return
        owner = getattr(record, "api_key_id", None)
        if owner is None or self.calls.get(live.call_sid) is not live:
            return
        live.owner = owner
        if getattr(record, "to", ""):
            live.to, live.from_ = record.to, record.from_
        # Operators see the numbers the record holds; the key that placed the call sees the call from now on.
        self._send(live, "call", {**live.summary(), "lines": list(live.lines)})

    def _line(self, live: LiveCall, who: str, text: str) -> None:
        line = {"t_ms": round(time.monotonic() * 1000 - live.started_ms), "who": who, "text": text[:MAX_TEXT_CHARS]}
        live.lines.append(line)
        self._send(live, "line", {"call_sid": live.call_sid, **line})

    def _update(self, live: LiveCall) -> None:
        self._send(live, "call", live.summary())

    def _send(self, live: LiveCall, kind: str, data: dict[str, Any]) -> None:
        self._push(kind, data, live.owner)
        if self.relay is not None:
            self.relay.publish(live.call_sid, kind, data, live.owner)

    def _push(self, kind: str, data: dict[str, Any], owner: str | None) -> None:
        message = encode(kind, data)
        for subscriber in list(self.subscribers):
            if subscriber.sees_owner(owner):
                subscriber.push(message)
                if subscriber.dropped:
                    self._drop(subscriber, "too slow")

    def _deliver_remote(self, kind: str, data: dict[str, Any], owner: str | None) -> None:
        """Another instance's event (:mod:`.relay`), to the streams allowed to see that call."""
        if data["call_sid"] not in self.calls:  # never shadows a call held here
            self._push(kind, data, owner)

    def call_ended(self, call_sid: str) -> None:
        """The call's stream is over (its record is saved)."""
        live = self.calls.pop(call_sid, None)
        if live is not None:
            self._send(live, "ended", {"call_sid": call_sid})

    # ---- the streams' side

    async def remote_calls(self) -> list[tuple[dict[str, Any], str | None]]:
        """The live calls of the other instances (:meth:`.relay.LiveRelay.remote_calls`) for a new stream's
        snapshot; none without a shared state, or when it cannot be reached (logged: the local calls still show)."""
        if self.relay is None:
            return []
        try:
            return await self.relay.remote_calls()
        except StateUnavailable as error:
            log.warning("console: the other instances' live calls are unavailable: %s", error)
            return []

    def subscribe(self, key_id: str, operator: bool, session: str,
                  remote: Sequence[tuple[dict[str, Any], str | None]] = ()) -> Subscriber | None:
        """A new stream, its queue primed with the calls it may see, this instance's and the ``remote`` ones
        (:meth:`remote_calls`) (None: too many streams already)."""
        if len(self.subscribers) >= self.max_subscribers:
            return None
        # One browser session, or one key, cannot take every stream (the others would get 503s).
        if sum(s.session == session for s in self.subscribers) >= MAX_STREAMS_PER_SESSION \
                or sum(s.key_id == key_id for s in self.subscribers) >= MAX_STREAMS_PER_KEY:
            return None
        subscriber = Subscriber(key_id, operator, session, self.queue_size)
        calls = [{**live.summary(), "lines": list(live.lines)} for live in self.calls.values() if subscriber.sees(live)]
        calls += [call for call, owner in remote if call["call_sid"] not in self.calls and subscriber.sees_owner(owner)]
        subscriber.push(encode("snapshot", {"calls": calls}))
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def _drop(self, subscriber: Subscriber, why: str) -> None:
        self.subscribers.discard(subscriber)
        subscriber.end()
        self.dropped_subscribers += 1
        log.info("console: a live stream was dropped (%s)", why)

    def end_session(self, session: str, *, everywhere: bool = True) -> None:
        """Logout: the session's streams end now, here and (``everywhere``, through the relay) on every instance."""
        for subscriber in [s for s in self.subscribers if s.session == session]:
            self.subscribers.discard(subscriber)
            subscriber.end()
        if everywhere and self.relay is not None:
            self.relay.publish_logout(session)

    async def aclose(self) -> None:
        for subscriber in list(self.subscribers):
            subscriber.end()
        self.subscribers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.relay is not None:
            await self.relay.aclose()
