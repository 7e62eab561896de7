"""When each frame of caller audio arrived, by where it ends on the model session's input clock.

Turn latency counts from the end of the caller's speech: the model names it as a position in the audio it was sent
(``speech_stopped``'s ``audio_end_ms``), and :meth:`FrameArrivals.arrival_of` turns that position back into the time
the frame holding it came from Twilio. Kept compact, as two arrays of doubles (16 bytes a frame; a tuple in a deque
costs about 110), since every call keeps the last 30 s of them.
"""

from __future__ import annotations

import bisect
from array import array


class FrameArrivals:
    """(end position ms, arrival ms) of each frame sent to the model, in input-clock order; at least the last
    ``keep`` of them are kept."""

    __slots__ = ("_ends", "_arrived", "_keep")

    def __init__(self, keep: int) -> None:
        self._ends = array("d")
        self._arrived = array("d")
        self._keep = keep

    def append(self, end_ms: float, arrived_ms: float) -> None:
        self._ends.append(end_ms)
        self._arrived.append(arrived_ms)
        if len(self._ends) >= 2 * self._keep:  # trimmed in halves: amortised O(1) a frame
            del self._ends[: self._keep]
            del self._arrived[: self._keep]

    def clear(self) -> None:
        del self._ends[:]
        del self._arrived[:]

    def arrival_of(self, position_ms: float, default: float) -> float:
        """When the first frame ending at or after ``position_ms`` arrived (``default`` if none is known)."""
        at = bisect.bisect_left(self._ends, position_ms)
        return self._arrived[at] if at < len(self._ends) else default

    def __len__(self) -> int:
        return len(self._ends)
