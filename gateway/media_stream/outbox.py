"""One writer per socket: what the call sends to a peer is queued in order and written by a single task.

``arrived`` (``time.monotonic()`` of the frame that caused a message) lets the shell measure forwarding delay
as each message is written.

Why: a reader that awaits the other socket stalls its own side. With direct sends, a slow Twilio socket held up
the model reader (so ``speech_started`` waited, and ``clear`` queued behind audio already being written), and a
slow model socket held up the Twilio reader (mark echoes, ``stop``). With an :class:`Outbox` per socket, readers
only *put* (never await), and:

* messages leave in the order they were put, so held caller audio always reaches the model before live frames;
* control messages (``clear``, ``response.cancel``, truncates) go ahead of everything still queued
  (:meth:`Outbox.put_first`), and a ``clear`` drops the agent audio still queued for Twilio
  (:meth:`Outbox.discard`): Twilio would clear it anyway, and the caller stops hearing the agent sooner;
* backpressure is a decision, not a hidden await: once over ``max_bytes`` queued, droppable messages (live caller
  audio) are dropped and counted, and anything else marks the outbox ``overflowed`` for the shell to end the call.

A write costs no task switch when it need not wait: a message put into an idle outbox is written at once, in the
putter's own turn of the event loop, as far as the write goes without waiting (:func:`start_eagerly`; both
WebSocket libraries write to the transport and return unless its buffer is over its high-water mark). Only a write
that does wait, or audio the pacer holds back, is finished by the writer task (:meth:`Outbox.run`), so a reader
still never waits on the other socket, and order is kept: while a write is unfinished, later messages queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
from collections import deque
from typing import Any, Callable, Coroutine, Generator

log = logging.getLogger("gateway.media_stream.outbox")

Message = str | bytes  # one text frame: str (to Twilio) or its UTF-8 bytes (to the model)


def start_eagerly(coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
    """Run ``coroutine`` now, in the caller's turn of the event loop, until it finishes or first waits: None if it
    finished (no task was made, no loop turn spent), else the task that finishes it. Its exceptions raised before it
    first waits are the caller's (Python 3.12's eager tasks do this; this works on 3.11 too)."""
    try:
        awaited = coroutine.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_finish(coroutine, awaited))


async def _finish(coroutine: Coroutine[Any, Any, Any], awaited: Any) -> Any:
    return await _resume(coroutine, awaited)


@types.coroutine
def _resume(coroutine: Coroutine[Any, Any, Any], awaited: Any) -> Generator[Any, Any, Any]:
    """Go on with a coroutine that was started elsewhere: hand the task what it waits for, pass back what the task
    sends or throws in (a result, a cancellation)."""
    while True:
        try:
            received = yield awaited
        except BaseException as error:  # noqa: BLE001 - a cancellation is passed on, not swallowed
            try:
                awaited = coroutine.throw(error)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            awaited = coroutine.send(received)
        except StopIteration as stop:
            return stop.value


class Pacer:
    """Keeps the audio written to a peer at most ``lead_ms`` ahead of its playback: the rest waits in the outbox,
    where a ``clear`` drops it at once, instead of in TCP buffers and the peer's queue, where it would still be
    sent (a slow network path) or played (until the clear arrives behind it)."""

    def __init__(self, lead_ms: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lead_s = lead_ms / 1000
        self._clock = clock
        self._play_end = 0.0  # when everything written so far will have played

    def wait_s(self) -> float:
        """How long to wait before the next chunk of audio may be written."""
        return max(0.0, self._play_end - self._clock() - self.lead_s)

    def released_at(self) -> float:
        """When the next chunk of audio was allowed to go (``time.monotonic()``)."""
        return self._play_end - self.lead_s

    def written(self, play_ms: float) -> None:
        self._play_end = max(self._play_end, self._clock()) + play_ms / 1000

    def reset(self) -> None:
        """The peer's queue was cleared: nothing of what was written will play."""
        self._play_end = 0.0


class Outbox:
    """Messages (text frames) for one socket, written at once when nothing is ahead of them, else by :meth:`run`.
    ``write`` sends one frame."""

    def __init__(self, write: Callable[[Any], Coroutine[Any, Any, None]], *, max_bytes: int,
                 written: Callable[[str, float], None] | None = None, pacer: Pacer | None = None,
                 write_now: Callable[[Any], bool] | None = None) -> None:
        self._write = write
        # A synchronous write, tried first where there is one: True once written, False if the socket must be
        # waited for (then ``write``, in the writer task, does it). Cheaper than starting ``write`` eagerly.
        self._write_sync = write_now
        self.pacer = pacer  # audio (messages put with play_ms) is written at most pacer.lead_ms ahead of playback
        self._written = written  # told (kind, when its cause arrived) after each write: for delay metrics
        self.max_bytes = max_bytes
        self._queue: deque[tuple[str, Message, float, float]] = deque()  # (kind, text, when its cause arrived, play ms)
        self._bytes = 0
        self._wake = asyncio.Event()
        self._writing = False  # the writer task is writing (or pacing): what is put waits for it
        self._unfinished: tuple[asyncio.Task[Any], str, float, float] | None = None  # a write that had to wait
        self.closed = False
        self.dropped = 0  # droppable messages refused because the queue was full
        self.overflowed = False  # a message that may not be dropped did not fit: the peer is not reading

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def put(self, text: Message, kind: str = "", *, droppable: bool = False, arrived: float = 0.0,
            play_ms: float = 0.0) -> bool:
        """Queue ``text`` behind everything queued; False if it was not (closed, or full and ``droppable``)."""
        if self.closed:
            return False
        if droppable and self._bytes > self.max_bytes:  # already over: a big message into room is never dropped
            self.dropped += 1
            return False
        if self._bytes + len(text) > self.max_bytes and not droppable:
            self.overflowed = True
        self._queue.append((kind, text, arrived, play_ms))
        self._bytes += len(text)
        self._write_now()
        return True

    def put_first(self, text: Message, kind: str = "", *, arrived: float = 0.0) -> None:
        """Queue ``text`` ahead of everything queued (control messages)."""
        if self.closed:
            return
        self._queue.appendleft((kind, text, arrived, 0.0))
        self._bytes += len(text)
        self._write_now()

    def discard(self, kinds: frozenset[str]) -> int:
        """Drop the queued messages of these kinds (not yet written); how many were dropped."""
        kept = deque(item for item in self._queue if item[0] not in kinds)
        dropped = len(self._queue) - len(kept)
        self._queue = kept
        self._bytes = sum(len(item[1]) for item in kept)
        if self.pacer is not None:
            self.pacer.reset()
        return dropped

    def close(self) -> None:
        """Write nothing more; :meth:`run` returns."""
        self.closed = True
        self._queue.clear()
        self._bytes = 0
        if self._unfinished is not None:
            self._unfinished[0].cancel()
        self._wake.set()

    def _write_now(self) -> None:
        """Write what is queued in the caller's turn, while no write is unfinished and the pacer lets it go; leave
        the rest to the writer task."""
        while self._queue and not self.closed:
            if self._writing or self._unfinished is not None or self._held():
                self._wake.set()
                return
            kind, text, arrived, play_ms = self._next()
            if self._write_sync is not None:
                if self._write_sync(text):
                    self._after_write(kind, arrived, play_ms)
                    continue
                self._queue.appendleft((kind, text, arrived, play_ms))  # the writer task waits for the socket
                self._bytes += len(text)
                self._wake.set()
                return
            try:
                unfinished = start_eagerly(self._write(text))
            except Exception:  # a writer bug: nothing more goes to this peer (the shell's overflow check ends the call)
                log.exception("writing to a peer failed; its outbox is closed")
                self.close()
                return
            if unfinished is not None:
                self._unfinished = (unfinished, kind, arrived, play_ms)
                self._wake.set()
                return
            self._after_write(kind, arrived, play_ms)

    def _held(self) -> bool:
        """The next message is audio the pacer holds back for now."""
        return bool(self._queue[0][3]) and self.pacer is not None and self.pacer.wait_s() > 0

    def _next(self) -> tuple[str, Message, float, float]:
        kind, text, arrived, play_ms = self._queue.popleft()
        if play_ms and arrived and self.pacer is not None:
            # Held on purpose by the pacer: its forwarding delay counts from when the pacer let it go.
            arrived = max(arrived, self.pacer.released_at())
        self._bytes -= len(text)
        return kind, text, arrived, play_ms

    def _after_write(self, kind: str, arrived: float, play_ms: float) -> None:
        if play_ms and self.pacer is not None:
            self.pacer.written(play_ms)
        if self._written is not None and arrived:
            self._written(kind, arrived)

    async def run(self) -> None:
        """Finish what could not be written at once, until closed; a failing write ends it (the socket's reader
        sees the close)."""
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            self._writing = True
            try:
                await self._write_queued()
            finally:
                self._writing = False

    async def _write_queued(self) -> None:
        if self._unfinished is not None:
            unfinished, kind, arrived, play_ms = self._unfinished
            try:
                await unfinished
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # this writer is being cancelled
                return  # close() cancelled the write
            finally:
                self._unfinished = None
            self._after_write(kind, arrived, play_ms)
        while self._queue and not self.closed:
            if self._held():
                # Far enough ahead of playback: wait, but wake for a control message put first.
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.pacer.wait_s() if self.pacer else 0.0)
                except TimeoutError:
                    pass
                continue
            kind, text, arrived, play_ms = self._next()
            await self._write(text)
            self._after_write(kind, arrived, play_ms)
