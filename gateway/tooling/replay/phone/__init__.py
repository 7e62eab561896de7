"""The replay phone: Twilio's side of a bidirectional Media Stream, played against any gateway URL.

Two layers, like the gateway itself:

* :class:`Phone` (:mod:`.core`) is the protocol, pure: no socket, no clock, no task. It is fed the gateway's
  messages and the time (``now_ms``, monotonic milliseconds since the phone sent ``start``), and returns the
  messages Twilio would send. It is made of:

  - the caller's script (:mod:`.script`): what the caller says, keys or does, and when each turn starts;
  - Twilio's playback queue (:mod:`.playback`): media, marks and clear as Twilio plays them, in real time
    from when audio arrives, with Twilio's real-world habits as options (a jitter-buffer start-up delay,
    jitter on mark echoes);
  - the protocol checks (:mod:`.checks`): what Twilio would refuse from the gateway;
  - the measurements (:mod:`.measure`): the report, from the caller's side only.

* :func:`run_call` / :func:`call_with` / :func:`drive` (:mod:`.shell`) are the socket shell: one ``websockets``
  client connection (no permessage-deflate: Twilio does not negotiate it), a reader task, a writer task,
  and a loop that wakes on an absolute schedule (every 20 ms frame boundary, and the exact moment a mark
  echo is due) to call :meth:`Phone.tick`; optionally a :class:`SlowReader` that leaves the socket unread.

What Twilio sends, and when: ``connected``, ``start``, then one ``media`` message per 20 ms (160 bytes of
mu-law; sequenceNumber, chunk and timestamp are strings; timestamp = ms since the stream started),
``dtmf`` and, at hang-up, ``stop``. The frame covering [t, t + 20 ms) is sent at t + 20 ms, when its
audio is complete. A lost packet is a frame never sent: the next timestamp jumps, sequence numbers
and chunks do not. Line noise (``noise_snr_db``) is mixed into every frame the caller sends, silence included.
"""

from __future__ import annotations

from gateway.twilio.playback import PlaybackQueue

from . import script as _script
from .checks import ProtocolChecker
from .core import UNDERRUN_GAP_MS, Phone
from .measure import silences, turn_reports, underruns
from .script import (
    DTMF_SPACING_MS,
    NOMINAL_SPEECH_RMS,
    CallerScript,
    CallerTurn,
    speech_bounds_ms,
    speech_rms,
)
from .shell import TWILIO_USER_AGENT, SlowReader, call_with, drive, run_call
from .units import FRAME_BYTES, FRAME_MS, HEARD_RMS, SPB

_Turn = _script._Turn  # a spoken turn: RecordedPhone (gateway.tooling.replay.recording) builds its own from the audio

__all__ = [
    "DTMF_SPACING_MS",
    "FRAME_BYTES",
    "FRAME_MS",
    "HEARD_RMS",
    "NOMINAL_SPEECH_RMS",
    "SPB",
    "TWILIO_USER_AGENT",
    "UNDERRUN_GAP_MS",
    "CallerScript",
    "CallerTurn",
    "Phone",
    "PlaybackQueue",
    "ProtocolChecker",
    "SlowReader",
    "call_with",
    "drive",
    "run_call",
    "silences",
    "speech_bounds_ms",
    "speech_rms",
    "turn_reports",
    "underruns",
]
