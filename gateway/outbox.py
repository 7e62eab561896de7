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
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Awaitable, Callable


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
    """Messages (text frames) for one socket, written by :meth:`run`. ``write`` sends one frame."""

    def __init__(self, write: Callable[[str], Awaitable[None]], *, max_bytes: int,
                 written: Callable[[str, float], None] | None = None, pacer: Pacer | None = None) -> None:
        self._write = write
        self.pacer = pacer  # audio (messages put with play_ms) is written at most pacer.lead_ms ahead of playback
        self._written = written  # told (kind, when its cause arrived) after each write: for delay metrics
        self.max_bytes = max_bytes
        self._queue: deque[tuple[str, str, float, float]] = deque()  # (kind, text, when its cause arrived, play ms)
        self._bytes = 0
        self._wake = asyncio.Event()
        self.closed = False
        self.dropped = 0  # droppable messages refused because the queue was full
        self.overflowed = False  # a message that may not be dropped did not fit: the peer is not reading

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def put(self, text: str, kind: str = "", *, droppable: bool = False, arrived: float = 0.0,
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
        self._wake.set()
        return True

    def put_first(self, text: str, kind: str = "", *, arrived: float = 0.0) -> None:
        """Queue ``text`` ahead of everything queued (control messages)."""
        if self.closed:
            return
        self._queue.appendleft((kind, text, arrived, 0.0))
        self._bytes += len(text)
        self._wake.set()

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
        self._wake.set()

    async def run(self) -> None:
        """Write queued messages until closed; a failing write ends it (the socket's reader sees the close)."""
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and not self.closed:
                play_ms = self._queue[0][3]
                if play_ms and self.pacer is not None:
                    wait_s = self.pacer.wait_s()
                    if wait_s > 0:
                        # Far enough ahead of playback: wait, but wake for a control message put first.
                        self._wake.clear()
                        try:
                            await asyncio.wait_for(self._wake.wait(), wait_s)
                        except TimeoutError:
                            pass
                        continue
                kind, text, arrived, play_ms = self._queue.popleft()
                if play_ms and arrived and self.pacer is not None:
                    # Held on purpose by the pacer: its forwarding delay counts from when the pacer let it go.
                    arrived = max(arrived, self.pacer.released_at())
                self._bytes -= len(text)
                await self._write(text)
                if play_ms and self.pacer is not None:
                    self.pacer.written(play_ms)
                if self._written is not None and arrived:
                    self._written(kind, arrived)
