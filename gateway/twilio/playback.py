"""Twilio's playback model: what Twilio does with what the gateway sends on one stream, in real time, and what the
caller hears:

* ``media`` is queued and played at 8 kHz from when it arrives (nothing is played ahead of time; a queue
  that runs dry leaves silence until more arrives). With ``playback_delay_ms``, audio that reaches an idle
  queue waits that long first, as in a real edge's jitter buffer (which the gateway cannot see).
* a ``mark`` is echoed once the audio queued before it has played (at once when nothing is queued).
  With ``mark_jitter_ms``, each echo leaves a random 0..N ms later (seeded), never overtaking an earlier
  one: Twilio's echoes come late by a varying amount, and always in order.
* ``clear`` drops the queued audio and echoes every pending mark at once.

:class:`PlaybackQueue` is pure: fed the messages' contents and the time, it returns the marks whose
echo is due; its users word the messages (the replay phone) or read them from a call's frame recording (the
recording's WAV: the agent's track as the caller heard it). It keeps the timeline a replay report is measured from:
the playback runs, what was heard sample by sample, and which milliseconds were heard at all.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import numpy as np

from gateway.audio.convert import MULAW_BYTES_PER_MS, MULAW_SILENCE, mulaw_decode

SPB = MULAW_BYTES_PER_MS  # samples (= mu-law bytes) per millisecond
HEARD_RMS = 200.0  # a millisecond of played audio louder than this (int16 RMS, about -44 dBFS) is heard
SILENCE_BYTE = bytes([MULAW_SILENCE])


@dataclass(slots=True)
class MarkRecord:
    """A mark the gateway sent, and its echo.

    ``outcome``: ``"played"`` (echoed once the audio queued before it had played), ``"immediate"``
    (nothing was queued: echoed at once), ``"cleared"`` (echoed by a clear), ``"pending"`` (never
    echoed: the call ended first).
    """

    name: str
    received_ms: float
    due_ms: float | None = None  # when playback reached it (the exact echo time)
    echoed_ms: float | None = None  # when the phone produced the echo
    outcome: str = "pending"


@dataclass(slots=True)
class ClearRecord:
    """A ``clear`` from the gateway."""

    time_ms: float
    played_ms: float  # agent audio played since the queue last started from empty
    dropped_ms: float  # queued agent audio that was thrown away
    marks_echoed: int  # pending marks echoed at once


@dataclass(slots=True)
class PlaybackRun:
    """One stretch of agent playback: from the queue starting from empty to it emptying (drained or cleared)."""

    start_ms: float
    end_ms: float | None = None  # None: still playing when the call ended
    ended_by: str = "playing"  # "drained" | "cleared" | "playing" (at the end of the call)
    played_ms: float = 0.0


class PlaybackQueue:
    """The playback of one stream (see the module docstring). Times in ms since the stream started."""

    def __init__(self, *, heard_rms: float = HEARD_RMS, playback_delay_ms: float = 0.0, mark_jitter_ms: float = 0.0,
                 rng: random.Random | None = None) -> None:
        if playback_delay_ms < 0 or mark_jitter_ms < 0:
            raise ValueError("playback_delay_ms and mark_jitter_ms must be >= 0")
        self.playback_delay_ms = playback_delay_ms
        self.mark_jitter_ms = mark_jitter_ms
        self._rng = rng if rng is not None else random.Random()
        self._heard_threshold = heard_rms * heard_rms * SPB  # on the sum of squares of one ms
        self.hold_until_ms = 0.0  # the jitter buffer: queued audio starts playing no sooner than this
        self._queue: deque[bytes | MarkRecord] = deque()
        self._head_pos = 0  # bytes of queue[0] already played
        self.queued = 0  # audio bytes in the queue
        self.cursor = 0  # playback has been computed up to this sample (8 per ms)
        self.heard = bytearray()  # what played, sample by sample (silence where nothing did)
        self.heard_ms = bytearray()  # one flag per complete millisecond: 1 if agent audio was heard
        self.run: PlaybackRun | None = None
        self.runs: list[PlaybackRun] = []
        self.marks: list[MarkRecord] = []
        self.clears: list[ClearRecord] = []
        self.media_received = 0
        self.received_bytes = 0
        self.cleared_bytes = 0
        self.max_queued = 0
        # Echoes decided but not yet sent (mark jitter): (when it leaves, mark, outcome), in order.
        self._echoes: deque[tuple[float, MarkRecord, str]] = deque()
        self._last_echo_ms = 0.0

    @property
    def playing(self) -> bool:
        """Whether a playback run is going on (audio queued or playing, since the queue last started from empty)."""
        return self.run is not None

    # ------------------------------------------------------------------ what the gateway sends

    def media(self, audio: bytes, now_ms: float) -> None:
        """Queue ``audio`` (mu-law) received at ``now_ms`` (after :meth:`advance` to ``now_ms``)."""
        self.media_received += 1
        if not audio:
            return
        if self.queued == 0 and self.playback_delay_ms:
            self.hold_until_ms = now_ms + self.playback_delay_ms
        if self.run is None:
            self.run = PlaybackRun(start_ms=self.cursor / SPB)
            self.runs.append(self.run)
        self._queue.append(audio)
        self.queued += len(audio)
        self.received_bytes += len(audio)
        self.max_queued = max(self.max_queued, self.queued)

    def mark(self, name: str, now_ms: float) -> None:
        """A mark received at ``now_ms``: echoed once the audio before it has played (at once if none is queued)."""
        mark = MarkRecord(name=name, received_ms=now_ms)
        self.marks.append(mark)
        if self.queued == 0:
            self._echo(mark, now_ms, "immediate")
        else:
            self._queue.append(mark)

    def clear(self, now_ms: float) -> None:
        """Drop the queued audio; every pending mark is echoed now."""
        marks = [item for item in self._queue if isinstance(item, MarkRecord)]
        played = self.run.played_ms if self.run is not None else 0.0
        self.clears.append(ClearRecord(now_ms, played, self.queued / SPB, len(marks)))
        self.cleared_bytes += self.queued
        self._queue.clear()
        self._head_pos = 0
        self.queued = 0
        self._end_run("cleared")
        for mark in marks:
            self._echo(mark, now_ms, "cleared")

    # ------------------------------------------------------------------ the clock

    def next_due_ms(self) -> float | None:
        """When something must happen next: playback reaches the first queued mark, or a jittered echo leaves."""
        due = self._echoes[0][0] if self._echoes else None
        ahead = -self._head_pos
        start = max(self.cursor, int(self.hold_until_ms * SPB)) if self.queued else self.cursor
        for item in self._queue:
            if isinstance(item, MarkRecord):
                reached = (start + max(ahead, 0)) / SPB
                return reached if due is None else min(due, reached)
            ahead += len(item)
        return due

    def advance(self, now_ms: float) -> list[MarkRecord]:
        """Play the queue in real time up to ``now_ms``; the marks whose echo is due by then, in order."""
        target = int(now_ms * SPB)
        queue = self._queue
        hold = int(self.hold_until_ms * SPB)
        if self.queued and self.cursor < hold:  # queued audio waits in the jitter buffer: silence until then
            fill = min(hold, target) - self.cursor
            if fill > 0:
                self.heard += SILENCE_BYTE * fill
                self.cursor += fill
        while True:
            while queue and isinstance(queue[0], MarkRecord):
                mark = queue.popleft()
                assert isinstance(mark, MarkRecord)
                self._echo(mark, self.cursor / SPB, "played")
            if not queue:
                self._end_run("drained")
                break
            if self.cursor >= target:
                break
            head = queue[0]
            assert isinstance(head, bytes)
            n = min(len(head) - self._head_pos, target - self.cursor)
            self.heard += head[self._head_pos : self._head_pos + n]
            self.cursor += n
            self._head_pos += n
            self.queued -= n
            if self.run is not None:
                self.run.played_ms += n / SPB
            if self._head_pos == len(head):
                queue.popleft()
                self._head_pos = 0
        if self.cursor < target:
            self.heard += SILENCE_BYTE * (target - self.cursor)
            self.cursor = target
        self._update_heard()
        return self.echoes_due(now_ms)

    def echoes_due(self, now_ms: float) -> list[MarkRecord]:
        """The echoes that leave by ``now_ms``, in order (each stamped ``echoed_ms = now_ms``)."""
        out: list[MarkRecord] = []
        while self._echoes and self._echoes[0][0] <= now_ms:
            _, mark, outcome = self._echoes.popleft()
            mark.echoed_ms, mark.outcome = now_ms, outcome
            out.append(mark)
        return out

    def _echo(self, mark: MarkRecord, due_ms: float, outcome: str) -> None:
        """Playback reached ``mark`` (or a clear or an empty queue released it) at ``due_ms``: its echo leaves then,
        or up to ``mark_jitter_ms`` later, and never before an earlier mark's."""
        mark.due_ms = due_ms
        leaves = due_ms + (self._rng.uniform(0.0, self.mark_jitter_ms) if self.mark_jitter_ms else 0.0)
        self._last_echo_ms = max(self._last_echo_ms, leaves)
        self._echoes.append((self._last_echo_ms, mark, outcome))

    def _end_run(self, how: str) -> None:
        if self.run is not None:
            self.run.end_ms = self.cursor / SPB
            self.run.ended_by = how
            self.run = None

    # ------------------------------------------------------------------ what was heard

    def _update_heard(self) -> None:
        done = len(self.heard_ms)
        complete = self.cursor // SPB
        if complete <= done:
            return
        samples = mulaw_decode(bytes(self.heard[done * SPB : complete * SPB])).astype(np.float64)
        energy = np.square(samples).reshape(-1, SPB).sum(axis=1)
        self.heard_ms += (energy > self._heard_threshold).astype(np.uint8).tobytes()

    def first_heard_ms(self, since_ms: float, until_ms: float | None = None) -> int | None:
        """The first millisecond in [since, until) in which agent audio was heard, or None."""
        start = int(since_ms)
        end = len(self.heard_ms) if until_ms is None else max(start, min(len(self.heard_ms), int(until_ms)))
        i = self.heard_ms.find(1, start, end)
        return None if i < 0 else i


__all__ = ["HEARD_RMS", "SPB", "ClearRecord", "MarkRecord", "PlaybackQueue", "PlaybackRun"]
