"""The phone's units, shared by every part of it: 20 ms frames of 8 kHz mu-law, and what counts as heard.

Times are milliseconds since the phone sent ``start`` (the stream's t = 0); audio positions are samples,
which for 8 kHz mu-law are also bytes (:data:`SPB` per millisecond).
"""

from __future__ import annotations

from gateway.audio.convert import MULAW_BYTES_PER_MS, MULAW_SILENCE
from gateway.twilio.playback import HEARD_RMS, SPB

FRAME_MS = 20
FRAME_BYTES = FRAME_MS * MULAW_BYTES_PER_MS  # 160
SILENCE_FRAME = bytes([MULAW_SILENCE]) * FRAME_BYTES

__all__ = ["FRAME_BYTES", "FRAME_MS", "HEARD_RMS", "SILENCE_FRAME", "SPB"]
