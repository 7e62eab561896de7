"""The call core's bounds, timings and the instructions it gives the agent: one place for every number."""

from __future__ import annotations

from gateway.audio.convert import comfort_noise

# A media timestamp further ahead than this is treated as lost packets and filled with silence.
GAP_TOLERANCE_MS = 10
# A bound on one gap fill: a hostile timestamp must not make us allocate minutes of silence. A gap is also never
# filled with more silence than the wall-clock time that passed since the previous frame.
MAX_GAP_FILL_MS = 2000
# Tool calls of one call waiting for a free slot (MAX_TOOLS_PER_CALL run at once); past this they fail at once.
MAX_QUEUED_TOOLS = 8
# Key presses reach the model as conversation items (billed input): at most a fast human's rate, plus a burst.
DTMF_PER_S = 10.0
DTMF_BURST = 20.0
# Caller audio kept while the model socket is still connecting (or reconnecting).
MAX_PENDING_AUDIO_MS = 5000
# The conversation carried into a replacement model session, as text: the latest items, each bounded.
MAX_CARRIED_ITEMS = 60
MAX_CARRIED_CHARS = 2000
MAX_HELD_ITEMS = 32
MAX_TRACKED_ITEMS = 64  # agent items whose audio accounting is kept
MAX_TRACKED_FRAMES = 1500  # caller frames whose arrival times are kept (30 s of 20 ms frames)
MAX_GREETING_ATTEMPTS = 3
# While there is no model session (at the start of a call or after a loss), the caller hears soft comfort noise once
# it has lasted this long (a dead line sounds like a dropped call), with no gap: the noise is kept at least
# COMFORT_NOISE_LEAD_MS ahead of its playback (the shell's clock ticks once a second), a second at a time, until the
# model's first audio (which clears what is left of it) or the give-up.
COMFORT_NOISE_AFTER_MS = 500
COMFORT_NOISE_LEAD_MS = 1500
COMFORT_NOISE_MS = 1000
COMFORT_NOISE = comfort_noise(COMFORT_NOISE_MS)
# Model sessions (gateway.call.reconnect): a connect that takes longer than this is given up and retried (sized for a
# phone call, not a web page); waits before the next attempt after consecutive failures (a session that was up this
# long is replaced at once); the give-up: no session for this long (at the start of a call or after a loss), or more
# sessions lost than this within a minute. The call then ends with its spoken message (the TwiML after </Connect>).
MODEL_OPEN_TIMEOUT_MS = 3000
MODEL_RECONNECT_BACKOFF_MS = (200, 500, 1000, 2000)
MODEL_HEALTHY_SESSION_MS = 2000
MODEL_DOWN_LIMIT_MS = 10_000
MAX_MODEL_LOSSES_PER_MINUTE = 6
# A rollover abandoned (the caller spoke while the next session was being prepared) is tried again this much later.
ROLLOVER_RETRY_MS = 2000


# Model errors that are races on the wire, not faults: a cancel that crossed the response's end, or a
# response.create that crossed one the server's turn detection started.
BENIGN_MODEL_ERRORS = frozenset({"response_cancel_not_active", "conversation_already_has_active_response"})
GOODBYE_INSTRUCTIONS = "Say a brief, friendly goodbye to the caller now."
TRANSFER_INSTRUCTIONS = "Tell the caller, in one short sentence, that you are transferring them to a colleague now."
RESUME_INSTRUCTIONS = ("Your previous answer was cut off by a technical problem. Without apologising at length, "
                        "finish what you were saying to the caller.")
BUDGET_INSTRUCTIONS = ("This call has used all the time it was allowed. Tell the caller, in one or two short "
                        "sentences, that you have to end the call now, and say goodbye.")
TIME_LIMIT_INSTRUCTIONS = ("This call has reached its time limit. Tell the caller, in one or two short sentences, "
                            "that you have to end the call now, and say goodbye.")
