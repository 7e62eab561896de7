"""The call core's bounds, timings and the instructions it gives the agent: one place for every number."""

from __future__ import annotations

from gateway.audio import comfort_noise

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
# While a replacement model session connects, the caller hears soft comfort noise once it has taken this long
# (a dead line sounds like a dropped call), a second at a time, and none of it once the model is back.
COMFORT_NOISE_AFTER_MS = 1000
COMFORT_NOISE = comfort_noise(1000)
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
