"""Playback accounting from Twilio marks: how much of each agent item the caller has heard.

Pure: times are passed in (monotonic ms on the gateway's clock). The call core sends each chunk of
agent audio to Twilio followed by a mark named by :meth:`PlaybackTracker.chunk_sent` (``m<n>``, a per-call
sequence); Twilio echoes a mark once everything queued before it has played, and on ``clear`` echoes every
pending mark at once (so the echo of a mark numbered below our last ``clear`` means "dropped", not "played").

When the caller barges in, :meth:`PlaybackTracker.heard_at_clear` answers "what will the caller have
heard when our ``clear`` reaches Twilio?", anchored on the last echo and Twilio's real-time playback:

* the last echoed mark's position was reached at Twilio ``one_way`` ms before its echo arrived here;
* each chunk in flight reached Twilio ``one_way`` ms after we sent it and plays, in real time, from the
  later of that arrival and the end of the chunk before it, never past its own end;
* the ``clear`` we send now reaches Twilio ``one_way`` ms from now.

``one_way`` is half the round trip, measured from marks alone: a chunk sent while Twilio's queue was
idle is echoed ``2 * one_way + chunk length`` after it was sent. The smallest such sample is kept
(queueing only ever adds delay). With no sample yet, ``one_way`` is 0.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Generic, Hashable, TypeVar

# Mark names are an opaque per-call sequence, "m<n>": nothing from the model (an item id can be empty, or 10 kB) ever
# goes into one, so every name is short, unique within the call, and parses back.
K = TypeVar("K", bound=Hashable)  # what names an item: the core uses (session, item id)

_MARK_NAME = re.compile(r"m([0-9]{1,15})")


@dataclass(slots=True)
class _Chunk(Generic[K]):
    item: K  # the item this audio belongs to (the core's key: its session and item id)
    seq: int  # the number in the mark's name
    start_ms: int  # the item position where this chunk begins
    end_ms: int
    sent_at: float
    sent_to_idle_queue: bool  # nothing else was pending: its echo measures the round trip


def mark_name(seq: int) -> str:
    return f"m{seq}"


def parse_mark_name(name: str) -> int | None:
    """The sequence number of a name made by :func:`mark_name`, else None."""
    match = _MARK_NAME.fullmatch(name) if isinstance(name, str) else None
    return int(match.group(1)) if match else None


class PlaybackTracker(Generic[K]):
    """Marks in flight, what each item has been heard up to, the round trip."""

    __slots__ = ("_next_seq", "_cleared_below", "_pending", "_last_echo_at", "_heard", "round_trip_ms")

    def __init__(self) -> None:
        self._next_seq = 0
        self._cleared_below = 0  # marks numbered below this were sent before our last clear
        self._pending: deque[_Chunk[K]] = deque()  # numbered consecutively: nothing is pending across a clear
        self._last_echo_at: float | None = None
        self._heard: dict[K, int] = {}  # item -> end of its last echoed mark
        self.round_trip_ms: float | None = None

    @property
    def awaiting_echoes(self) -> bool:
        """Agent audio is queued or playing at Twilio (a mark sent since the last clear is not echoed yet)."""
        return bool(self._pending)

    @property
    def marks_pending(self) -> int:
        """Marks sent to Twilio and not yet echoed (nor dropped by a clear)."""
        return len(self._pending)

    def chunk_sent(self, item: K, start_ms: int, end_ms: int, now_ms: float) -> str:
        """Record a chunk of ``item`` sent to Twilio; returns the name of the mark to send right after it."""
        seq = self._next_seq
        self._next_seq += 1
        self._pending.append(_Chunk(item, seq, start_ms, end_ms, now_ms, not self._pending))
        return mark_name(seq)

    def mark_echoed(self, seq: int, now_ms: float) -> bool:
        """Twilio echoed mark number ``seq``. False when it is not one we are waiting for (the caller drops it):
        never sent (forged), or echoed already."""
        pending = self._pending
        if pending and pending[0].seq <= seq <= pending[-1].seq:
            position = seq - pending[0].seq
        elif seq < self._cleared_below:
            return True  # echoed because we cleared it, not because it played: nothing to account
        else:
            return False
        # Twilio echoes in order: this echo means every mark before it has played too.
        for _ in range(position + 1):
            chunk = pending.popleft()
            if chunk.end_ms > self._heard.get(chunk.item, 0):
                self._heard[chunk.item] = chunk.end_ms
        if position == 0 and chunk.sent_to_idle_queue:
            sample = max(0.0, now_ms - chunk.sent_at - (chunk.end_ms - chunk.start_ms))
            if self.round_trip_ms is None or sample < self.round_trip_ms:
                self.round_trip_ms = sample
        self._last_echo_at = now_ms
        return True

    def heard_ms(self, item: K) -> int:
        """How much of an item the caller has heard, as confirmed by echoes."""
        return self._heard.get(item, 0)

    def heard_at_clear(self, now_ms: float) -> dict[K, int]:
        """For every item with audio in flight, in queue order: what the caller will have heard when a
        ``clear`` sent now reaches Twilio (see the module docstring)."""
        one_way = (self.round_trip_ms or 0.0) / 2
        clear_arrives = now_ms + one_way
        cursor = self._last_echo_at - one_way if self._last_echo_at is not None else -math.inf
        heard: dict[K, int] = {}
        for chunk in self._pending:
            starts = max(cursor, chunk.sent_at + one_way)
            length = chunk.end_ms - chunk.start_ms
            played = 0 if clear_arrives <= starts else min(length, int(clear_arrives - starts))
            confirmed = heard.get(chunk.item, self._heard.get(chunk.item, 0))
            heard[chunk.item] = max(confirmed, chunk.start_ms + played) if played else confirmed
            cursor = starts + length
        return heard

    def clear(self, heard: dict[K, int]) -> None:
        """We sent ``clear``: every mark sent so far will be echoed as cleared, nothing is in flight, ``heard`` is
        now what each item holds."""
        self._cleared_below = self._next_seq
        self._pending.clear()
        self._last_echo_at = None
        self._heard.update(heard)

    def forget(self, item: K) -> None:
        self._heard.pop(item, None)
