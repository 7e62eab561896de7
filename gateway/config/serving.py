"""Declarations of the settings of Twilio's side, of serving, and of the bounds on what a call may use (README
"Security"). One :class:`Setting` each: see ``gateway/config/setting.py``."""

from __future__ import annotations

from . import readers
from .setting import Setting, declared_in

PUBLIC_URL = Setting(
    "PUBLIC_URL", "",
    "`https://host` Twilio reaches; signatures are checked against it. Required with a real model.",
    reader=readers.public_url,
)

TWILIO_AUTH_TOKEN = Setting(
    "TWILIO_AUTH_TOKEN", "",
    "`X-Twilio-Signature` is required on every webhook and on the stream upgrade (403 / 1008 if bad). "
    "Required with a real model.",
    secret=True,
)

INSECURE_DEV_MODE = Setting(
    "INSECURE_DEV_MODE", False,
    "Development only: a real model starts without `TWILIO_AUTH_TOKEN` / `PUBLIC_URL` (also `gateway "
    "serve --insecure-dev`); `/healthz` repeats the warning.",
)

TRUSTED_PROXY_IPS = Setting(
    "TRUSTED_PROXY_IPS", (),
    "Proxies (addresses or networks, comma-separated) whose `X-Forwarded-Proto/Host/For` are believed. "
    "Unset: never.",
    reader=readers.trusted_proxies,
)

STREAM_SECRET = Setting(
    "STREAM_SECRET", "",
    "Key (>= 32 chars) of the stream credentials' MAC. Unset: derived from `TWILIO_AUTH_TOKEN` (shared by "
    "every instance), or random per process without one.",
    secret=True, shown="derived", reader=readers.at_least(32, "use e.g. `openssl rand -hex 32`"),
)

STREAM_CREDENTIAL_TTL_S = Setting(
    "STREAM_CREDENTIAL_TTL_S", 600,
    "A Stream URL must be used within this many seconds.",
    low=30, high=3600,
)

MAX_CALLS = Setting(
    "MAX_CALLS", 100,
    "Concurrent calls per process; beyond, `/incoming-call` says the lines are busy and hangs up, `POST "
    "/calls` answers 503.",
    low=1, high=100_000,
)

MAX_CALL_DURATION_S = Setting(
    "MAX_CALL_DURATION_S", 3600,
    "At this length the agent is asked to say goodbye; the call ends once it is heard (or 20 s later).",
    low=10, high=86400,
)

MEDIA_IDLE_TIMEOUT_S = Setting(
    "MEDIA_IDLE_TIMEOUT_S", 10.0,
    "No frame from Twilio for this long ends the call (Twilio sends one every 20 ms, silence included).",
    low=1.0, high=600.0,
)

CALLER_AUDIO_BURST_MS = Setting(
    "CALLER_AUDIO_BURST_MS", 1000,
    "Caller audio may run ahead of the wall clock by this much (jitter, a stall catching up); beyond, "
    "frames are dropped and counted.",
    low=100, high=10_000,
)

MAX_TOOLS_PER_CALL = Setting(
    "MAX_TOOLS_PER_CALL", 1,
    "User tools of one call running at once (more wait, at most 8; a call's hung tool threads count "
    "against it).",
    low=1, high=16,
)

MAX_CONNECTIONS = Setting(
    "MAX_CONNECTIONS", 1000,
    "Open HTTP/WebSocket connections per process; beyond, a new socket is closed at once.",
    low=10, high=1_000_000,
)

MAX_CONNECTIONS_PER_ADDRESS = Setting(
    "MAX_CONNECTIONS_PER_ADDRESS", 0,
    "Open connections (WebSockets included) from one client address (IPv6: one /64); beyond, a new socket "
    "from it is closed at once. Lowered to half of `MAX_CONNECTIONS` if set higher. Not applied to a "
    "`TRUSTED_PROXY_IPS` address: the client it names is capped per request instead (see "
    "[Bounds](#security)); a proxy not listed there is capped as one client. Twilio may stream many calls "
    "from one address: keep it above `MAX_CALLS` (a start-up warning says when it is not); a load test "
    "from one machine (`gateway replay --calls N`) needs it above N.",
    low=0, high=1_000_000, shown="{}: a quarter of `MAX_CONNECTIONS` (250)",
)

MAX_UNFINISHED_HEADS_PER_ADDRESS = Setting(
    "MAX_UNFINISHED_HEADS_PER_ADDRESS", 0,
    "Of those, connections with an unfinished request head (a new socket until its first head is "
    "complete, a kept-alive one once its next head has begun; not one idle between requests); beyond, a "
    "new socket is closed at once. At most `MAX_CONNECTIONS_PER_ADDRESS`.",
    low=0, high=1_000_000, shown="{}: a fifth of the above (50)",
)

HTTP_HEADER_TIMEOUT_S = Setting(
    "HTTP_HEADER_TIMEOUT_S", 10.0,
    "A connection that has not sent its request headers by then is closed.",
    low=1.0, high=300.0,
)

DROP_LOG_INTERVAL_S = Setting(
    "DROP_LOG_INTERVAL_S", 10.0,
    "Dropped frames are logged as one summary line per stream per interval, with counts by reason.",
    low=0.1, high=3600.0,
)

MAX_FRAME_BYTES = Setting(
    "MAX_FRAME_BYTES", 65536,
    "Larger frames from Twilio are dropped (logged); over 1 MiB the socket is closed (1009).",
    low=1024, high=1 << 20,
)

RECORD_CALLS_DIR = Setting(
    "RECORD_CALLS_DIR", "",
    "When set, each call's Twilio frames (both ways, timed) are written to `DIR/<CallSid>.jsonl`, "
    "replayable with `gateway replay`. A relative path is under `DATA_DIR`.",
    reader=readers.under_data_dir,
)

RECORD_AUDIO = Setting(
    "RECORD_AUDIO", False,
    "Each call also as a stereo WAV in `RECORD_CALLS_DIR` (caller left, agent right as heard), served by "
    "`GET /calls/{sid}/recording`; `POST /calls`' `record` wins for its call. Needs `RECORD_CALLS_DIR`.",
    reader=readers.record_audio,
)

RECORD_MAX_BYTES = Setting(
    "RECORD_MAX_BYTES", 64 * 1024 * 1024,
    "A call's recording stops growing at this size (a final `truncated` line says so).",
    low=4096, high=1 << 40, unit="bytes",
)

RECORD_TOTAL_MAX_BYTES = Setting(
    "RECORD_TOTAL_MAX_BYTES", 10 * 1024 ** 3,
    "The whole `RECORD_CALLS_DIR` (frame recordings and WAVs). Once full, new calls are not recorded "
    "(they go on; `gateway_recordings_over_quota_total`, one log line per full spell), a recording "
    'reaching it is cut short (`"reason": "total quota"`), a WAV that would pass it is not written. Older '
    "recordings are never removed to make room (they belong to call records; retention removes them).",
    low=4096, high=1 << 50, unit="bytes",
)

FALLBACK_MESSAGE = Setting(
    "FALLBACK_MESSAGE", "Sorry, we cannot continue this call right now. Please call again later. Goodbye.",
    "Said (TwiML after `</Connect>`) when the gateway gives up on a call: no model, a fault, a refused "
    "stream. Empty: just hang up.",
    reader=readers.fallback_message,
)

DRAIN_TIMEOUT_S = Setting(
    "DRAIN_TIMEOUT_S", 3600,
    "On SIGTERM, how long live calls may go on before the process exits anyway (see below).",
    low=0, high=86400,
)

HOST = Setting(
    "HOST", "127.0.0.1",
    "Where `gateway serve` listens: the address.",
)

PORT = Setting(
    "PORT", 8080,
    "Where `gateway serve` listens: the port.",
    low=0, high=65535,
)

CONSOLE_SESSION_TTL_S = Setting(
    "CONSOLE_SESSION_TTL_S", 8 * 3600,
    "How long a `/console` login lasts (60 s to 30 days).",
    low=60, high=30 * 86400,
)

LOG_LEVEL = Setting(
    "LOG_LEVEL", "info",
    "The log level: `debug`, `info`, `warning` or `error`.",
    choices=("debug", "info", "warning", "error"),
)

SETTINGS = declared_in(globals())
