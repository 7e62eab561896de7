"""Declarations of the settings of operations: the outbound API, call records, the state shared between
instances, logs, metrics and cost. One :class:`Setting` each: see ``gateway/config/setting.py``."""

from __future__ import annotations

import os
import secrets
import socket

from . import readers
from .setting import Setting, declared_in


def _host_pid_random() -> str:
    # host-pid-random: containers on one host network share the hostname and all run as pid 1
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


API_KEYS = Setting(
    "API_KEYS", (),
    "Comma-separated bearer keys (>= 16 chars) for `/calls`. None: the API answers 503.",
    secret=True, reader=readers.keys,
)

OPERATOR_API_KEYS = Setting(
    "OPERATOR_API_KEYS", (),
    "Comma-separated keys (>= 16 chars) that see every call record in `GET /calls` and `GET "
    "/calls/{sid}`, inbound calls included (other keys see the outbound calls they placed). They are API "
    "keys too. Unset, with a single key in `API_KEYS`: that key.",
    secret=True, reader=readers.keys,
)

TWILIO_ACCOUNT_SID = Setting(
    "TWILIO_ACCOUNT_SID", "",
    "With `TWILIO_AUTH_TOKEN`, enables Twilio's REST API (outbound calls, hang-up, transfer).",
    reader=readers.account_sid,
)

TWILIO_FROM_NUMBER = Setting(
    "TWILIO_FROM_NUMBER", (),
    "Caller IDs for outbound calls, E.164, comma-separated (`+14155550100,+14155550101`); the first is "
    "the default. A request's `from` must be one of them (403 `caller_id_not_allowed` otherwise).",
    name="twilio_caller_ids", reader=readers.caller_ids,
)

DEFAULT_CALLER_ID = Setting(
    "", "",
    "The default caller ID of outbound calls: the first of `TWILIO_FROM_NUMBER`.",
    name="twilio_from_number", reader=readers.first_caller_id,
)

OUTBOUND_ALLOWED_PREFIXES = Setting(
    "OUTBOUND_ALLOWED_PREFIXES", ("+1",),
    "Destinations must start with one of these (`+1,+44`). Premium-rate prefixes are always refused; the "
    "high-cost North American areas (Caribbean, Pacific territories, 867) only when listed themselves "
    "(`+1,+1867`).",
    reader=readers.allowed_prefixes,
)

OUTBOUND_RATE_LIMIT_PER_MINUTE = Setting(
    "OUTBOUND_RATE_LIMIT_PER_MINUTE", 10,
    "Calls per minute per API key; 429 with `Retry-After` beyond.",
    low=1, high=100_000,
)

API_AUTH_FAILURES_PER_MINUTE = Setting(
    "API_AUTH_FAILURES_PER_MINUTE", 10,
    "Failed authentications (API bearer keys and console logins) per client address (IPv6: per /64) and "
    "presented key in a minute, and 5 times as many for all unknown keys from one address together; "
    "beyond, further failed attempts get 429 `too_many_auth_failures` with `Retry-After` until the minute "
    "ends. A valid key is never throttled (neighbours behind one NAT cannot lock each other out). Behind "
    "a proxy, list it in `TRUSTED_PROXY_IPS` or every client shares the proxy's address. Counted in each "
    "process: with `--workers N` (or N instances) an address gets up to N times as many tries.",
    low=1, high=100_000,
)

OUTBOUND_TIME_LIMIT_S = Setting(
    "OUTBOUND_TIME_LIMIT_S", 3600,
    "Twilio's `time_limit` on every outbound call.",
    low=60, high=86400,
)

VOICEMAIL_MESSAGE = Setting(
    "VOICEMAIL_MESSAGE", "",
    'Said after the beep when a `"machine_detection": "voicemail"` call reaches a machine.',
)

TRANSFER_NUMBER = Setting(
    "TRANSFER_NUMBER", "",
    "E.164 number or `sip:` URI the `transfer_call` tool dials.",
    reader=readers.transfer_number,
)

TWILIO_API_BASE_URL = Setting(
    "TWILIO_API_BASE_URL", "https://api.twilio.com",
    "Another Twilio REST endpoint (the tests' local stand-in).",
    reader=readers.twilio_api_base_url,
)

DATA_DIR = Setting(
    "DATA_DIR", "",
    "The gateway's files: the default SQLite records file, relative `RECORD_CALLS_DIR`, "
    "`STATE_SQLITE_PATH` and `sqlite:///` paths, the state file of `gateway serve --workers`. The "
    "container image sets `/data`, a volume its user owns. Created at start if missing; when the store "
    "cannot be opened there, `gateway serve` stops with one line naming `STORE_URL`, the file and the "
    "fix.",
    shown="the working directory", reader=readers.data_dir,
)

STORE_URL = Setting(
    "STORE_URL", "sqlite:///gateway-records.db",
    "Call records and per-call settings: `sqlite:///path.db` (the default, a file in `DATA_DIR`: records "
    "survive a restart; several workers of one host share it), `memory://` (one process, lost on restart) "
    "or `postgresql://user@host:5432/db` (several hosts behind a load balancer). The schema is created, "
    "or migrated in place, at start-up. PostgreSQL needs the `postgres` extra (`pip install "
    "'gateway[postgres]'`).",
    reader=readers.store_url,
)

RECORD_RETENTION_DAYS = Setting(
    "RECORD_RETENTION_DAYS", 30,
    "Call records older than this, and their recordings, are deleted (at start-up, then hourly). 0: kept "
    "forever.",
    low=0, high=36500,
)

RECORD_SPOOL_DIR = Setting(
    "RECORD_SPOOL_DIR", "record-spool",
    "Call record writes the store did not take (down, failing over) wait here, one JSON line each (file "
    "mode 0600), until it is back; then they are written and removed. Made on first use. See [Records "
    "under faults](#call-records-get-calls-get-callssid).",
    shown="{} (in `DATA_DIR`)", reader=readers.spool_dir,
)

RECORD_SPOOL_MAX_MB = Setting(
    "RECORD_SPOOL_MAX_MB", 64 << 20,
    "The spool's bound: a write that would pass it is logged and counted as lost "
    "(`gateway_call_records_lost_total`). 0: no spool.",
    low=0, high=100_000, scale=1 << 20, name="record_spool_max_bytes",
)

REDIS_URL = Setting(
    "REDIS_URL", "",
    "`redis://[:password@]host:6379/0` or `rediss://...`: the state every instance behind a load balancer "
    "shares (see [Run many](#run-many-instances-workers-redis-and-control-from-anywhere)): single-use "
    "stream credentials, the per-key rate limit, concurrency leases, the live-call registry and control "
    "messages, the daily cost total, the console's logins and its live view's relay. Unset: in-process "
    "(or `STATE_SQLITE_PATH`). Unreachable, refusing or hung: limits and credentials fail closed within "
    "300 ms (503, refused streams, calls ended with the spoken message) and `/readyz` answers 503 (see "
    "[Run many](#run-many-instances-workers-redis-and-control-from-anywhere)). Needs the `redis` extra "
    "(`pip install 'gateway[redis]'`).",
    secret=True, reader=readers.redis_url,
)

STATE_SQLITE_PATH = Setting(
    "STATE_SQLITE_PATH", "",
    "Without Redis, the shared state in this SQLite file: the worker processes of one host (`gateway "
    "serve --workers` uses `gateway-state.db` in `DATA_DIR`).",
    reader=readers.under_data_dir,
)

WORKERS = Setting(
    "WORKERS", 1,
    "`gateway serve` processes on this host (`--workers`).",
    low=1, high=64,
)

INSTANCE_ID = Setting(
    "INSTANCE_ID", "",
    "This instance's name in the live-call registry (a pod name; workers add `-w<i>`).",
    shown="host-pid-random", factory=_host_pid_random, reader=readers.instance_id,
)

MAX_CALLS_GLOBAL = Setting(
    "MAX_CALLS_GLOBAL", 0,
    "Calls at once across every instance sharing the state (leases with a 30 s TTL, renewed while a call "
    "lives: a crashed instance's slots free themselves). 0: no limit.",
    low=0, high=10_000_000,
)

MAX_CALLS_PER_NUMBER = Setting(
    "MAX_CALLS_PER_NUMBER", 0,
    "Calls at once to one called number (Twilio's `To`). 0: no limit.",
    low=0, high=10_000_000,
)

LOG_FORMAT = Setting(
    "LOG_FORMAT", "text",
    "`json`: one JSON object per line (`ts`, `level`, `logger`, `msg`, `call_sid`, `stream_sid`, `exc`), "
    "for production; `text`: readable lines.",
    choices=("text", "json"),
)

LOG_FULL_NUMBERS = Setting(
    "LOG_FULL_NUMBERS", False,
    "Phone numbers in full in logs and call records (default: masked, `+1415*****23`).",
)

METRICS_API_KEY = Setting(
    "METRICS_API_KEY", "",
    "When set, `GET /metrics` wants `Authorization: Bearer <key>` (on the public port, or on "
    "`METRICS_PORT`). With a real model and no `METRICS_PORT`, this is what serves `/metrics` on the "
    "public port.",
    secret=True, reader=readers.at_least(16, "a short key is guessed"),
)

METRICS_PORT = Setting(
    "METRICS_PORT", 0,
    "`/metrics` on a listener of its own on this port (with `--workers`, every worker's metrics, served "
    "by the parent process), and not on the gateway's port. Must differ from `PORT`.",
    low=0, high=65535, shown="{} (none)", reader=readers.metrics_port,
)

METRICS_HOST = Setting(
    "METRICS_HOST", "127.0.0.1",
    "The address the metrics port binds: this machine only by default; `0.0.0.0` in a container scraped "
    "from elsewhere (keep the port unpublished or behind a firewall / NetworkPolicy).",
    reader=readers.metrics_host,
)

OTEL_EXPORTER_OTLP_ENDPOINT = Setting(
    "OTEL_EXPORTER_OTLP_ENDPOINT", "",
    "OpenTelemetry traces over OTLP/HTTP (standard variable; `OTEL_SERVICE_NAME` too). Unset: tracing is "
    "off and costs nothing. Needs the `otel` extra (`pip install 'gateway[otel]'`).",
    name=None,
)

PRICE_TABLE_FILE = Setting(
    "PRICE_TABLE_FILE", "",
    'JSON `{"model": {"text_in": 4, "text_cached": 0.4, "text_out": 16, "audio_in": 32, "audio_cached": '
    '0.4, "audio_out": 64}}` (USD per million tokens) over the built-in table.',
)

MODEL_PRICES = Setting(
    "MODEL_PRICES", "",
    "`audio_in=32,audio_out=64,...` for the configured model.",
)

CALL_BUDGET_USD = Setting(
    "CALL_BUDGET_USD", 0.0,
    "A call whose model cost reaches this is wrapped up: the agent says goodbye and the call ends once it "
    "is heard. 0: none.",
    low=0.0, high=1_000_000.0,
)

DAILY_BUDGET_USD = Setting(
    "DAILY_BUDGET_USD", 0.0,
    "Model cost per UTC day across calls (and instances, with Redis): a warning log and "
    "`gateway_daily_budget_used_ratio` from 80 %; at 100 % new calls are refused politely (TwiML that "
    "says so; `POST /calls` 429 `daily_budget_reached`). The total cannot be read (the shared state does "
    "not answer within 300 ms): new calls are refused for that reason, \"Sorry, we can't take your call "
    'right now. Please try again later." (`POST /calls` 503 `budget_unavailable`). 0: none.',
    low=0.0, high=100_000_000.0,
)

SETTINGS = declared_in(globals())
