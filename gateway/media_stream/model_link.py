"""The model side of a call: holding a model session for the whole call (reconnects), its socket's messages by
callback, and make-before-break rollover to a prepared session.

A mixin of :class:`gateway.media_stream.session.MediaStreamSession`: it works on the session's own state (the call
core, the dispatch of its outputs, the drop counters, the arrival time of the message being handled).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from websockets.exceptions import WebSocketException

from gateway.call import ConnectModel, PrepareRollover, WakeAt
from gateway.call.limits import MODEL_DOWN_LIMIT_MS, MODEL_OPEN_TIMEOUT_MS
from gateway.call.clock import now_ms as _now_ms
from gateway.observe import metrics
from gateway.observe.logs import in_call_context
from gateway.media_stream.outbox import Outbox
from gateway.media_stream.part import SessionPart
from gateway.realtime import events as rt
from gateway.twilio.media import encode_json

from .model_socket import ModelSocket, ModelSocketClosed, UpgradeRefused

log = logging.getLogger("gateway.media_stream")

MODEL_CLOSE_TIMEOUT_S = 1.0
# Sized for a phone call, not a web page: a model that stops answering without closing its socket (a half-open TCP
# path) misses a ping within PING_INTERVAL + PING_TIMEOUT s. When to connect, how long an attempt may take, and
# when to give up are the call core's (gateway.call.reconnect, gateway.call.limits).
MODEL_PING_INTERVAL_S = 2.0
MODEL_PING_TIMEOUT_S = 3.0
MODEL_DOWN_LIMIT_S = MODEL_DOWN_LIMIT_MS / 1000.0
# Caller audio queued towards a model that is not reading it (about 15 s of PCM16 as base64): past this, live
# frames are dropped and counted; the reader never waits on the model socket (gateway.media_stream.outbox). The audio held
# while a session (re)connects is one message put into an empty queue, so it is never dropped.
MODEL_BACKLOG_BYTES = 1024 * 1024
# What goes ahead of everything queued for a peer (gateway.media_stream.outbox): what stops the agent at once.
_MODEL_CONTROL = frozenset({"conversation.item.truncate", "response.cancel"})
MODEL_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# A session prepared for a rollover must answer its session.update within this, or it is dropped (and tried later).
ROLLOVER_READY_TIMEOUT_S = 5.0
# Model events a session says before it is current (opening, or prepared and waiting for the switch) are kept, up
# to this many, and handled in order once it is; past it they are dropped and counted.
MAX_MODEL_BACKLOG = 256


@dataclass(eq=False)
class _ModelLink:
    """One model session: its socket, its outbox and the writer task that finishes writes that must wait.

    Its messages arrive by callback (:meth:`ModelLinks._model_message`), in the event loop's own turn. While
    it is not the call's current session they wait in ``backlog`` (a session opening, or one prepared for a rollover
    until the switch); once ``retired`` (replaced, or closing) they are dropped. ``ended`` says why the session is
    over for the call: its socket closed, or it was switched away from."""

    socket: ModelSocket = field(init=False)
    outbox: Outbox = field(init=False)
    writer: asyncio.Task[None] = field(init=False)
    ended: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    ready: asyncio.Future[None] | None = None  # a prepared session: its session.updated (or refusal)
    backlog: list[bytes] = field(default_factory=list)
    retired: bool = False

    def end(self, reason: str) -> None:
        if not self.ended.done():
            self.ended.set_result(reason)


def _written_to_model(kind: str, arrived: float) -> None:
    if kind == "input_audio_buffer.append":
        metrics.FRAME_DELAY_TO_MODEL.observe(time.monotonic() - arrived)


class _UnknownCallSettings(Exception):
    """An outbound call's settings are not in the store (never saved, expired, or already taken)."""


class ModelLinks(SessionPart):
    """The call's model sessions: the current one, one switched to, one being prepared."""

    # The core's latest ConnectModel not yet carried out, what wakes the model loop for it, the pending WakeAt.
    _connect_request: ConnectModel | None = None
    _connect_wanted: asyncio.Event | None = None
    _wake_timer: asyncio.TimerHandle | None = None
    # Set by the session (MediaStreamSession.__init__): the current session, the one switched to, the one prepared.
    _model_link: _ModelLink | None
    _handover: _ModelLink | None
    _standby: _ModelLink | None
    _model_task: asyncio.Task[None] | None

    async def _apply_per_call_settings(self) -> None:
        """An outbound call's settings (instructions, voice, greeting) were saved under its CallSid when it was
        placed; its stream (and only it: the credential names the CallSid, ``start`` must match) takes them, once."""
        store = self.services.store
        if self.grant is None or not self.grant.outbound or store is None:
            return
        found = store.take_call_settings(self.call.call_sid)
        if inspect.isawaitable(found):
            found = await found
        if found is None:
            # Expired, already taken, or stored by another worker on a per-process store: this callee must not
            # get the inbound agent by mistake.
            log.error("no stored settings for this outbound call; ending it call_sid=%s", self.call.call_sid)
            raise _UnknownCallSettings
        self._dispatch(self.call.apply_call_settings(
            _now_ms(), instructions=found.instructions or "", voice=found.voice or "", greeting=found.greeting or ""
        ))

    def _model_output(self, output: ConnectModel | WakeAt) -> None:
        """Carry out the core's model-session schedule (gateway.call.reconnect decides it): an attempt now, or a
        wake-up of the core's clock at the time it names."""
        if isinstance(output, WakeAt):
            delay_s = max(0.0, (output.at_ms - _now_ms()) / 1000.0)
            if self._wake_timer is not None:
                self._wake_timer.cancel()  # the core asks again only for an earlier one
            self._wake_timer = asyncio.get_running_loop().call_later(delay_s, self._woken)
            return
        self._connect_request = output
        if self._model_task is None:
            self._model_task = asyncio.create_task(self._model_loop(), name="model-reader")
        elif self._connect_wanted is not None:
            self._connect_wanted.set()

    def _woken(self) -> None:
        self._wake_timer = None
        if not self._done.is_set():
            in_call_context(self._log_context, self._tick_core, None)

    def _tick_core(self, _: None) -> None:
        self._arrived = 0.0
        try:
            self._dispatch(self.call.tick(_now_ms()))
        except Exception:  # a timer callback: never into the event loop's handler; the clock's next tick goes on
            log.exception("the call's clock check failed call_sid=%s", self.call.call_sid or "-")

    async def _model_loop(self) -> None:
        """Hold a model session for the whole call: open one when the core asks (:class:`ConnectModel`), tell it
        how each attempt went (opened, refused with its ``Retry-After``, failed) and when a session ends; the core
        decides the next attempt and the give-up. A rollover's prepared session is taken over here too."""
        self._connect_wanted = asyncio.Event()
        try:
            await self._apply_per_call_settings()
        except _UnknownCallSettings:
            self._dispatch(self.call.call_settings_missing(_now_ms()))
            return
        except Exception:  # the store failed (a database hiccup): end the call with its message, not in silence
            log.exception("per-call settings could not be read; ending the call call_sid=%s", self.call.call_sid)
            self._dispatch(self.call.call_settings_unavailable(_now_ms()))
            return
        while not self._done.is_set():
            request, self._connect_request = self._connect_request, None
            if request is None and self._handover is None:
                self._connect_wanted.clear()
                await self._connect_wanted.wait()
                continue
            connected, reason, retry_after_s = await self._one_model_session(request)
            if self._done.is_set():
                break
            if self._handover is not None:
                continue  # a rollover: the prepared session is already configured and current
            now = _now_ms()
            if connected:
                log.warning("model session lost call_sid=%s (%s)", self.call.call_sid or "-", reason)
                self._dispatch(self.call.model_lost(reason, now))
            else:
                retry_after_ms = retry_after_s * 1000.0 if retry_after_s is not None else None
                self._dispatch(self.call.model_connect_failed(reason, now, retry_after_ms))

    async def _one_model_session(self, request: ConnectModel | None) -> tuple[bool, str, float | None]:
        """Connect (or take over the session a rollover switched to) and read until the socket closes:
        (whether it connected, why it ended, the refusal's Retry-After in seconds)."""
        link, self._handover = self._handover, None
        fresh = link is None
        timeout_ms = request.timeout_ms if request is not None else MODEL_OPEN_TIMEOUT_MS
        try:
            if link is None:
                link = await self._open_model_link(timeout_ms / 1000.0)
            self._model_link = link
            if fresh:
                self._dispatch(self.call.model_connected(_now_ms()))
            self._replay_backlog(link)  # what it said before it was current, in order, before anything newer
            return True, await link.ended, None
        except asyncio.CancelledError:
            raise
        except UpgradeRefused as refused:
            log.error("model connection refused call_sid=%s: %s", self.call.call_sid or "-", refused)
            return False, str(refused), refused.retry_after_s
        except (OSError, WebSocketException, TimeoutError) as error:
            reason = f"{type(error).__name__}: {str(error) or f'no answer within {timeout_ms / 1000:g} s'}"
            log.error("model connection failed call_sid=%s: %s", self.call.call_sid or "-", reason)
            return link is not None, reason, None
        except Exception as error:
            log.exception("model reader failed call_sid=%s", self.call.call_sid or "-")
            return link is not None, f"{type(error).__name__}: {error}", None
        finally:
            if link is not None and self._model_link is link:
                self._model_link = None
            if link is not None and self._handover is not link:
                await self._close_model_link(link)

    async def _open_model_link(self, open_timeout_s: float = MODEL_OPEN_TIMEOUT_MS / 1000.0) -> _ModelLink:
        settings = self.settings
        link = _ModelLink()
        handle = partial(self._model_message, link)
        link.socket = await ModelSocket.connect(
            settings.model_connect_url(),
            partial(in_call_context, self._log_context, handle),
            headers=settings.model_headers(),
            max_size=MODEL_MAX_MESSAGE_BYTES,
            open_timeout_s=open_timeout_s,
            ping_interval_s=MODEL_PING_INTERVAL_S,
            ping_timeout_s=MODEL_PING_TIMEOUT_S,
            close_timeout_s=MODEL_CLOSE_TIMEOUT_S,
        )
        link.socket.closed.add_done_callback(lambda closed: self._model_socket_closed(link, closed.result()))
        link.outbox = Outbox(self._model_writer(link.socket), max_bytes=MODEL_BACKLOG_BYTES, written=_written_to_model,
                             write_now=self._model_write_now(link.socket))
        link.writer = asyncio.create_task(link.outbox.run(), name="model-writer")
        return link

    @staticmethod
    def _model_socket_closed(link: _ModelLink, reason: str) -> None:
        link.end(reason)
        if link.ready is not None and not link.ready.done():
            link.ready.set_exception(ConnectionError(f"closed before it was ready ({reason})"))
            link.ready.exception()  # retrieved here: a prepare that timed out no longer awaits it

    @staticmethod
    async def _close_model_link(link: _ModelLink) -> None:
        """Close with 1000 (within MODEL_CLOSE_TIMEOUT_S, else dropped), then stop its writer."""
        link.retired = True
        link.backlog.clear()
        with contextlib.suppress(Exception):
            await link.socket.close()
        link.outbox.close()
        link.writer.cancel()
        await asyncio.gather(link.writer, return_exceptions=True)

    def _model_message(self, link: _ModelLink, data: bytes) -> None:
        """One message from a model session's socket, in the event loop's turn that read it."""
        if link is self._model_link:
            if link.backlog:
                self._replay_backlog(link)
            self._model_event(data)
        elif not link.retired:
            if link.ready is not None and not link.ready.done():
                self._before_ready(link, data)
            elif len(link.backlog) < MAX_MODEL_BACKLOG:
                link.backlog.append(data)
            else:
                self._model_drops.drop("event from a session not yet current, past the backlog")

    def _replay_backlog(self, link: _ModelLink) -> None:
        backlog, link.backlog = link.backlog, []
        for data in backlog:
            if link is not self._model_link:
                return
            self._model_event(data)

    def _model_event(self, data: bytes) -> None:
        self._arrived = time.monotonic()
        try:
            event = rt.parse_model_event(data)
        except rt.ModelEventError as error:
            self._model_drops.drop(error.reason, detail=error.detail)  # a fixed reason: the model's text is no label
            return
        except Exception:  # a parser bug costs one event, never the call
            log.exception("dropped model event call_sid=%s: the parser failed", self.call.call_sid or "-")
            return
        if isinstance(event, rt.SpeechStarted):
            self._speech_started_at = self._arrived
        self._dispatch(self.call.model_event(event, self._arrived * 1000.0))

    @staticmethod
    def _before_ready(link: _ModelLink, data: bytes) -> None:
        """A prepared session, configuring: its session.updated makes it ready (what came before is not kept)."""
        assert link.ready is not None
        try:
            event = rt.parse_model_event(data)
        except rt.ModelEventError:
            return
        if isinstance(event, rt.SessionUpdated):
            link.ready.set_result(None)
        elif isinstance(event, rt.ModelError):
            link.ready.set_exception(RuntimeError(f"the model refused the session: {event.code}: {event.message}"))

    # ---- make-before-break rollover -----------------------------------------------------------

    async def _prepare_rollover(self, request: PrepareRollover) -> None:
        """Open the next session beside the current one, configure it with the conversation so far, and once it
        says ``session.updated`` let the core decide whether to switch (only at a quiet point)."""
        link: _ModelLink | None = None
        log.info("preparing the next model session call_sid=%s (%s)", self.call.call_sid or "-", request.reason)
        try:
            link = await self._open_model_link()
            link.ready = asyncio.get_running_loop().create_future()
            self._standby = link  # what the core sends to Peer.NEXT_MODEL goes to it
            self._dispatch(self.call.rollover_setup(_now_ms()))
            await asyncio.wait_for(asyncio.shield(link.ready), ROLLOVER_READY_TIMEOUT_S)
            if self._model_link is None:
                self._dispatch(self.call.rollover_failed("the current session went meanwhile", _now_ms()))
                return
            self._dispatch(self.call.rollover_ready(_now_ms()))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - whatever failed, reported to the core (logged there); the call goes on
            retry_after_s = error.retry_after_s if isinstance(error, UpgradeRefused) else None
            self._dispatch(self.call.rollover_failed(f"{type(error).__name__}: {error}", _now_ms(),
                                                     retry_after_s * 1000.0 if retry_after_s is not None else None))
        finally:
            self._standby = None
            if link is not None and self._model_link is not link and self._handover is not link:
                await self._close_model_link(link)

    def _switch_model(self) -> None:
        """The prepared session is current from now on; the old one is retired (what it still says is not heard)
        and its reader moves on to the new one, which first handles what it said while waiting."""
        standby, old = self._standby, self._model_link
        if standby is None:
            return
        self._model_link = self._handover = standby
        self._standby = None
        if old is not None:
            old.retired = True
            old.end("rolled over")
        asyncio.get_running_loop().call_soon(self._replay_backlog, standby)

    @staticmethod
    def _model_write_now(socket: ModelSocket) -> Callable[[bytes], bool]:
        def write_now(data: bytes) -> bool:
            if socket.paused:
                return False  # over the transport's high-water mark: the writer task waits for it to drain
            try:
                socket.send(data)
            except ModelSocketClosed:
                pass  # the socket's close ends the session, and it is replaced
            return True
        return write_now

    @staticmethod
    def _model_writer(socket: ModelSocket) -> Callable[[bytes], Any]:
        async def write(data: bytes) -> None:
            try:
                if socket.paused:
                    await socket.drained()
                socket.send(data)
            except ModelSocketClosed:
                pass  # the socket's close ends the session, and it is replaced
        return write

    def _send_next_model(self, message: dict[str, Any]) -> None:
        """Queue a message for the session being prepared for a rollover (nothing when none is)."""
        link = self._standby
        if link is not None:
            link.outbox.put(encode_json(message), message["type"])

    def _send_model(self, message: dict[str, Any]) -> None:
        """Queue a message for the model session (never waits). Truncates and cancels go first; live caller audio
        is dropped, and counted, when the model is not reading it."""
        link = self._model_link
        if link is None:
            return
        outbox = link.outbox
        kind = message["type"]
        if kind in _MODEL_CONTROL:
            outbox.put_first(encode_json(message), kind)
        elif not outbox.put(encode_json(message), kind, droppable=kind == "input_audio_buffer.append",
                            arrived=self._arrived):
            if not self._dropped_audio_frames:
                log.warning("model is not keeping up; dropping caller audio call_sid=%s", self.call.call_sid or "-")
            self._dropped_audio_frames += 1

    async def _close_model(self) -> None:
        """Every model session of the call closed with 1000 and its writer stopped: the current one, one switched
        to that the reader has not taken over yet, one being prepared."""
        if self._wake_timer is not None:
            self._wake_timer.cancel()
            self._wake_timer = None
        links = {id(link): link for link in (self._model_link, self._handover, self._standby) if link is not None}
        await asyncio.gather(*(self._close_model_link(link) for link in links.values()), return_exceptions=True)
