"""Playback accounting from Twilio marks: how much of each agent item the caller has heard.

Pure: times are passed in (monotonic ms on the gateway's clock). The call core sends each chunk of
agent audio to Twilio followed by a mark named by :meth:`PlaybackTracker.chunk_sent`; Twilio echoes a
mark once everything queued before it has played, and on ``clear`` echoes every pending mark at once
(so a mark's echo after a clear means "dropped", which the generation in its name tells apart).

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

import hashlib
import math
from collections import deque
from dataclasses import dataclass

# Twilio mark names are at most this long (``gateway.twilio.media`` refuses longer echoes).
MAX_MARK_NAME = 256
# An item id longer than this (or empty, or starting with "#") goes into a mark name as a fixed-length
# digest, so every name fits MAX_MARK_NAME with room for "g<generation>:<end_ms>:" and parses back.
MAX_ITEM_ID_IN_MARK = 200


@dataclass(slots=True)
class _Chunk:
    item_id: str
    mark_item: str  # what stands for item_id in the mark's name (see mark_item)
    start_ms: int  # the item position where this chunk begins
    end_ms: int
    sent_at: float
    sent_to_idle_queue: bool  # nothing else was pending: its echo measures the round trip


def mark_item(item_id: str) -> str:
    """The item id as written in a mark name: itself when short and non-empty, else ``#`` + a digest of it."""
    if 0 < len(item_id) <= MAX_ITEM_ID_IN_MARK and not item_id.startswith("#"):
        return item_id
    return "#" + hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def mark_name(generation: int, end_ms: int, item_id: str) -> str:
    return f"g{generation}:{end_ms}:{mark_item(item_id)}"


def parse_mark_name(name: str) -> tuple[int, int, str] | None:
    """``(generation, end_ms, mark_item(item_id))`` of a name made by :func:`mark_name`, else None."""
    generation, sep1, rest = name.partition(":")
    end_ms, sep2, item_id = rest.partition(":")
    if not (sep1 and sep2 and generation.startswith("g") and item_id):
        return None
    try:
        return int(generation[1:]), int(end_ms), item_id
    except ValueError:
        return None


class PlaybackTracker:
    """Marks in flight for the current generation, what each item has been heard up to, the round trip."""

    __slots__ = ("generation", "_pending", "_last_echo_at", "_heard", "round_trip_ms")

    def __init__(self) -> None:
        self.generation = 0
        self._pending: deque[_Chunk] = deque()
        self._last_echo_at: float | None = None
        self._heard: dict[str, int] = {}  # item_id -> end of its last echoed mark
        self.round_trip_ms: float | None = None

    @property
    def playing(self) -> bool:
        """Agent audio is queued or playing at Twilio (a mark of this generation is not echoed yet)."""
        return bool(self._pending)

    def chunk_sent(self, item_id: str, start_ms: int, end_ms: int, now_ms: float) -> str:
        """Record a chunk sent to Twilio; returns the name of the mark to send right after it."""
        item = mark_item(item_id)
        self._pending.append(_Chunk(item_id, item, start_ms, end_ms, now_ms, not self._pending))
        return f"g{self.generation}:{end_ms}:{item}"

    def mark_echoed(self, generation: int, end_ms: int, item: str, now_ms: float) -> bool:
        """Twilio echoed a mark (``item`` as in its name: see :func:`mark_item`). False when it is not one we
        are waiting for (the caller drops it)."""
        if generation != self.generation:
            return True  # echoed because we cleared it, not because it played: nothing to account
        position = next(
            (i for i, chunk in enumerate(self._pending) if chunk.mark_item == item and chunk.end_ms == end_ms), None
        )
        if position is None:
            return False
        # Twilio echoes in order: this echo means every mark before it has played too.
        for _ in range(position + 1):
            chunk = self._pending.popleft()
            if chunk.end_ms > self._heard.get(chunk.item_id, 0):
                self._heard[chunk.item_id] = chunk.end_ms
        if position == 0 and chunk.sent_to_idle_queue:
            sample = max(0.0, now_ms - chunk.sent_at - (chunk.end_ms - chunk.start_ms))
            if self.round_trip_ms is None or sample < self.round_trip_ms:
                self.round_trip_ms = sample
        self._last_echo_at = now_ms
        return True

    def heard_ms(self, item_id: str) -> int:
        """How much of an item the caller has heard, as confirmed by echoes."""
        return self._heard.get(item_id, 0)

    def heard_at_clear(self, now_ms: float) -> dict[str, int]:
        """For every item with audio in flight, in queue order: what the caller will have heard when a
        ``clear`` sent now reaches Twilio (see the module docstring)."""
        one_way = (self.round_trip_ms or 0.0) / 2
        clear_arrives = now_ms + one_way
        cursor = self._last_echo_at - one_way if self._last_echo_at is not None else -math.inf
        heard: dict[str, int] = {}
        for chunk in self._pending:
            starts = max(cursor, chunk.sent_at + one_way)
            length = chunk.end_ms - chunk.start_ms
            played = 0 if clear_arrives <= starts else min(length, int(clear_arrives - starts))
            confirmed = heard.get(chunk.item_id, self._heard.get(chunk.item_id, 0))
            heard[chunk.item_id] = max(confirmed, chunk.start_ms + played) if played else confirmed
            cursor = starts + length
        return heard

    def clear(self, heard: dict[str, int]) -> None:
        """We sent ``clear``: a new generation, nothing in flight, ``heard`` is now what each item holds."""
        self.generation += 1
        self._pending.clear()
        self._last_echo_at = None
        self._heard.update(heard)

    def forget(self, item_id: str) -> None:
        self._heard.pop(item_id, None)
