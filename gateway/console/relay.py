"""The live view across instances: each instance publishes its calls' live pictures and events into the shared state,
and the instance serving a browser reads every other instance's from there.

A call's stream lives on one instance (its *holder*), and its events reach that instance's :class:`~.hub.LiveHub`
only. The hub hands each change to :meth:`LiveRelay.publish`, which never waits: it queues the change (bounded:
past :data:`MAX_PENDING` it is dropped, counted in ``gateway_console_relay_dropped_total``) and a background task
writes the queue in batches (:meth:`gateway.state.SharedState.publish_live`): the feed's events, each call's summary
(with the key that placed it, for scoping) and its last transcript lines, renewed every :data:`RENEW_S` while the
call lives, dropped when it ends (a crashed holder's expire within :data:`PICTURE_TTL_S`). A shared state that does
not answer loses the batch (counted, logged once per outage) and never slows a call.

The instance serving a browser lists the live calls from the shared registry (:meth:`~gateway.state.SharedState.
live_calls`, with the pictures their holders published) and, while it has open live streams, follows the feed
(:meth:`~gateway.state.SharedState.read_live`: Redis's blocking stream reads; the SQLite file polled every 100 ms),
handing the other instances' events to its hub, which scopes them as its own (an operator sees every call, another
key the calls it placed). A logout goes through the feed too: every instance ends that session's streams at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Callable

from gateway.observe import metrics
from gateway.state.base import LiveBatch, SharedState, StateUnavailable

log = logging.getLogger("gateway.console")

MAX_PENDING = 2000  # changes queued for the shared state at once
PUBLISH_EVERY_S = 0.1  # changes are written at most this often (batched), so one busy call costs few writes
PUBLISH_TIMEOUT_S = 2.0
RENEW_S = 30.0
PICTURE_TTL_S = 120.0
READ_WAIT_S = 1.0
MAX_REMOTE_CALLS = 1000  # other instances' calls listed in one snapshot
KINDS = ("call", "line", "ended")


class LiveRelay:
    """See the module docstring. ``live_calls()`` gives this instance's live calls ({call_sid: (summary, owner)})
    for the renewals; ``deliver(kind, data, owner)`` hands another instance's event to the local streams;
    ``listening()`` says whether any live stream is open here; ``end_session(handle)`` ends a session's streams
    here (a logout on another instance)."""

    def __init__(self, shared: SharedState, instance: str, *, live_calls: Callable[[], dict[str, Any]],
                 deliver: Callable[[str, dict[str, Any], str | None], None], listening: Callable[[], bool],
                 end_session: Callable[[str], None], max_lines: int) -> None:
        self.shared = shared
        self.instance = instance
        self._live_calls = live_calls
        self._deliver = deliver
        self._listening = listening
        self._end_session = end_session
        self.max_lines = max_lines
        self._events: deque[dict[str, Any]] = deque()
        self._calls: dict[str, dict[str, Any]] = {}
        self._lines: dict[str, list[dict[str, Any]]] = {}
        self._ended: list[str] = []
        self._wake = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._cursor = ""
        self.dropped = 0  # changes never published (queue full, or the shared state did not answer)
        self._failing = False
        self._closed = False  # the loops end on it too: a client library may swallow a cancellation mid-command

    # ---- the holder's side: never waits, never raises

    def publish(self, call_sid: str, kind: str, data: dict[str, Any], owner: str | None) -> None:
        if not self._enqueue({"i": self.instance, "sid": call_sid, "owner": owner, "kind": kind, "data": data}):
            return
        if kind == "call":
            self._calls[call_sid] = self._picture(data, owner)
        elif kind == "line":
            self._lines.setdefault(call_sid, []).append(data)
        elif kind == "ended":
            self._ended.append(call_sid)
            self._calls.pop(call_sid, None)
            self._lines.pop(call_sid, None)

    def publish_logout(self, session: str) -> None:
        """A logout here: the other instances end that session's live streams at once (not at their next check)."""
        self._enqueue({"i": self.instance, "kind": "logout", "session": session})

    def start(self) -> None:
        """Start publishing (the app's start-up): one task for the process's life, not one per call."""
        if self._publisher is None and not self._closed:
            self._publisher = asyncio.get_running_loop().create_task(self._publish_loop())

    def _enqueue(self, event: dict[str, Any]) -> bool:
        if len(self._events) >= MAX_PENDING:
            self._lost(1)
            return False
        self._events.append(event)
        self._wake.set()
        self.start()  # started already at start-up; a hub used without the app's lifespan starts it here
        return True

    def _lost(self, count: int) -> None:
        self.dropped += count
        metrics.CONSOLE_RELAY_DROPPED.inc(count)

    def _picture(self, summary: dict[str, Any], owner: str | None) -> dict[str, Any]:
        return {**{k: v for k, v in summary.items() if k != "lines"}, "owner": owner, "instance": self.instance}

    async def _publish_loop(self) -> None:
        renewed = time.monotonic()
        while not self._closed:
            try:
                await asyncio.wait_for(self._wake.wait(), RENEW_S)
            except TimeoutError:
                pass
            self._wake.clear()
            if time.monotonic() - renewed >= RENEW_S:  # every call's picture, the quiet ones too, before it expires
                renewed = time.monotonic()
                for call_sid, (summary, owner) in self._live_calls().items():
                    self._calls.setdefault(call_sid, self._picture(summary, owner))
            batch = LiveBatch(events=list(self._events), calls=self._calls, lines=self._lines, ended=self._ended,
                              ttl_s=PICTURE_TTL_S, max_lines=self.max_lines)
            self._events.clear()
            self._calls, self._lines, self._ended = {}, {}, []
            try:
                await asyncio.wait_for(self.shared.publish_live(batch), PUBLISH_TIMEOUT_S)
                if self._failing:
                    log.info("console: the live relay publishes again")
                self._failing = False
            except Exception as error:  # noqa: BLE001 - lost for the other instances' views; the calls go on
                self._lost(len(batch.events))
                if not self._failing:
                    log.warning("console: the live relay cannot publish (%s: %s); other instances' live views miss "
                                "this instance's calls until it can", type(error).__name__, error)
                self._failing = True
            if not self._closed:  # closing (its cancellation may have been swallowed mid-publish): end now
                await asyncio.sleep(PUBLISH_EVERY_S)

    # ---- the browser's side

    async def remote_calls(self) -> list[tuple[dict[str, Any], str | None]]:
        """The other instances' live calls, from the shared registry: (summary with its lines, owner) each. Starts
        following the feed first, so what changes meanwhile reaches the streams. Raises StateUnavailable."""
        if self._reader is None or self._reader.done():
            cursor, _ = await self.shared.read_live("", 0)
            if self._reader is None or self._reader.done():  # another stream may have started it meanwhile
                self._cursor = cursor
                self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        registry = await self.shared.live_calls()
        others = [sid for sid, instance in registry.items() if instance != self.instance][:MAX_REMOTE_CALLS]
        pictures = await self.shared.live_pictures(others)
        calls = []
        for call_sid in others:
            picture = pictures.get(call_sid, {})
            call = picture.get("call") or {}
            summary: dict[str, Any] = {"call_sid": call_sid, "direction": "", "from": "", "to": "",
                                       "started_at": None, "cost_usd": 0.0, "turns": 0, "barge_ins": 0,
                                       "latency_ms": None}
            summary.update({k: v for k, v in call.items() if k in summary and k != "call_sid"})
            summary["lines"] = [line for line in picture.get("lines", []) if isinstance(line, dict)]
            owner = call.get("owner")
            calls.append((summary, owner if isinstance(owner, str) else None))
        return calls

    async def _read_loop(self) -> None:
        """Follows the feed while live streams are open here (then stops; the next stream starts it again)."""
        idle, failing = 0, False
        while idle < 2 and not self._closed:  # the stream that started it subscribes just after: a read's grace
            idle = 0 if self._listening() else idle + 1
            try:
                self._cursor, events = await self.shared.read_live(self._cursor, READ_WAIT_S)
            except Exception as error:  # never let the reader die with streams open; logged once per outage
                if not failing:
                    log.log(logging.WARNING if isinstance(error, StateUnavailable) else logging.ERROR,
                            "console: the live relay cannot read (%s: %s); other instances' calls wait, retrying",
                            type(error).__name__, error, exc_info=not isinstance(error, StateUnavailable))
                failing = True
                await asyncio.sleep(READ_WAIT_S)
                continue
            if failing:
                log.info("console: the live relay reads again")
                failing = False
            for event in events:
                self._relay(event)

    def _relay(self, event: dict[str, Any]) -> None:
        """One event from the feed, checked (another process wrote it), to the local streams."""
        kind, data, owner = event.get("kind"), event.get("data"), event.get("owner")
        if kind == "logout" and isinstance(event.get("session"), str) and event.get("i") != self.instance:
            self._end_session(event["session"])
            return
        if event.get("i") == self.instance or kind not in KINDS or not isinstance(data, dict) \
                or not isinstance(data.get("call_sid"), str):
            return  # this instance's own (its streams had it already), or not an event of ours
        self._deliver(kind, data, owner if isinstance(owner, str) else None)

    async def aclose(self) -> None:
        self._closed = True
        self._wake.set()
        tasks = [task for task in (self._publisher, self._reader) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
