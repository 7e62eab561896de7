"""One settings object for the whole gateway, read from the environment (and a ``.env`` file in the working directory).

Every knob has a default that works on a laptop: with no API key the gateway talks to the embedded
Realtime-compatible server (``gateway.local``) instead of OpenAI.
"""

from __future__ import annotations

import os
import secrets
import socket
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping
from urllib.parse import SplitResult, urlsplit

from gateway.audio import AUDIO_FORMATS

DEFAULT_REALTIME_URL = "wss://api.openai.com/v1/realtime"
DEFAULT_INSTRUCTIONS = (
    "You are a helpful, concise voice assistant on a phone call. Keep answers short and speak naturally."
)
TURN_DETECTION_TYPES = ("server_vad", "semantic_vad", "none")
DEFAULT_FALLBACK_MESSAGE = "Sorry, we cannot continue this call right now. Please call again later. Goodbye."
DEFAULT_TWILIO_API_BASE_URL = "https://api.twilio.com"


class ConfigError(ValueError):
    """A setting has a value the gateway cannot use; the message names the variable."""


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float, kind: type) -> Any:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    return _number(env, name, default, low, high, int)


def _metrics_key(env: Mapping[str, str]) -> str:
    key = (env.get("METRICS_API_KEY") or "").strip()
    if key and len(key) < 16:
        raise ConfigError("METRICS_API_KEY must be at least 16 characters (a short key is guessed)")
    return key


def _metrics_listener(env: Mapping[str, str]) -> dict[str, Any]:
    """METRICS_PORT (0: none) and METRICS_HOST: where /metrics is served when not on the public port."""
    import ipaddress

    port = _int(env, "METRICS_PORT", 0, 0, 65535)
    if port and port == _int(env, "PORT", 8080, 0, 65535):
        raise ConfigError(f"METRICS_PORT must differ from PORT ({port}): /metrics gets a listener of its own")
    host = (env.get("METRICS_HOST") or "127.0.0.1").strip()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError("METRICS_HOST must be an IP address to listen on (127.0.0.1, or 0.0.0.0 in a "
                              f"container), got {host!r}") from None
    return dict(metrics_port=port, metrics_host=host)


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    return _number(env, name, default, low, high, float)


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name) or default).strip()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


REDACTED = "***"
# Query parameters whose value is shown as *** (api-key=, access_token=, sig=, password=, ...).
_SECRET_QUERY_NAME = re.compile(r"key|token|secret|pass|pwd|sig|auth|cred|session", re.IGNORECASE)
DEFAULT_STORE_URL = "sqlite:///gateway-records.db"  # relative to DATA_DIR (by default the working directory)

# Settings fields shown as *** by ``repr(settings)`` (besides any field declared with ``repr=False``).
_SECRET_FIELDS = frozenset({"api_key", "twilio_auth_token", "api_keys", "stream_secret", "metrics_api_key"})
_SECRET_FIELD_NAME = re.compile(r"(?:^|_)(?:key|keys|secret|secrets|token|tokens|password|passwords)$")


def redact_url(url: str) -> str:
    """``url`` safe to log or show: its password and secret-looking query values replaced by ``***``.

    ``redis://:hunter2@cache:6379/0`` -> ``redis://:***@cache:6379/0``; ``wss://h/v1?api-key=k&model=m`` ->
    ``wss://h/v1?api-key=***&model=m``. A user name without a password is kept for database-like schemes
    (``postgresql://app@db/x``) and hidden for web schemes (``https://TOKEN@host``); a fragment is hidden.
    When the credentials are ambiguous (a password holding an unescaped ``/``, ``?`` or ``#``) everything
    before the ``@`` is hidden, and a value that is not ``scheme://...`` at all is shown as ``***``: this
    is for display only, it may over-redact but never leaks.
    """
    url = str(url)
    scheme_match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if scheme_match is None:
        # Not scheme://...: a bare password, a libpq "host=db password=..." string, "user:pw@host"...
        return REDACTED if url else ""
    scheme = scheme_match.group(1).lower()
    head, rest = url[:scheme_match.end()], url[scheme_match.end():]
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1:]
        if any(c in userinfo for c in "/?#"):
            userinfo = REDACTED
        elif ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + REDACTED
        elif scheme in ("http", "https", "ws", "wss") and userinfo:
            userinfo = REDACTED
        head += userinfo + "@"
    rest, hash_sign, fragment = rest.partition("#")  # never sent to a server; may be a secret's unescaped tail
    fragment = REDACTED if fragment else ""
    path, question_mark, query = rest.partition("?")
    if question_mark:
        params = []
        for param in query.split("&"):
            name, equals, _value = param.partition("=")
            params.append(f"{name}={REDACTED}" if equals and _SECRET_QUERY_NAME.search(name) else param)
        query = "&".join(params)
    return head + path + question_mark + query + hash_sign + fragment


def _split_url(name: str, url: str) -> SplitResult:
    """``urlsplit(url)``, or a ConfigError naming ``name`` and showing the URL redacted."""
    try:
        return urlsplit(url)
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL, got {redact_url(url)!r}") from None


def _is_loopback_host(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or localhost: traffic to it never leaves this machine."""
    import ipaddress

    if not host:
        return False
    host = host.rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable. Build with :meth:`from_env`; tests use :func:`dataclasses.replace`."""

    # Model side
    realtime_url: str = DEFAULT_REALTIME_URL
    realtime_model: str = "gpt-realtime"
    api_key: str = ""
    api_key_header: str = "authorization"  # "authorization" (Bearer, OpenAI) or "api-key" (Azure)
    voice: str = "marin"
    instructions: str = DEFAULT_INSTRUCTIONS
    audio_format: str = "pcm16"  # "pcm16" (transcode) or "pcmu" (mu-law pass-through)
    turn_detection: str = "server_vad"
    vad_threshold: float = 0.5
    vad_prefix_padding_ms: int = 300
    vad_silence_duration_ms: int = 500
    vad_eagerness: str = "auto"
    interrupt_response: bool = True
    transcription_model: str = ""
    agent_speaks_first: bool = False
    greeting_instructions: str = ""
    tools_module: str = ""  # a Python module whose public functions become the agent's tools
    tool_timeout_s: float = 10.0
    model_reconnect: bool = True  # replace a model session that dies or expires, keeping the conversation
    # Said once an outage (no model session) has lasted half a second, before the comfort noise: "" (none), a
    # bundled sample's name ("one_moment"), or a WAV file's path (gateway.wavio.wait_prompt)
    model_wait_prompt: str = ""
    model_session_limit_s: float = 3600.0  # the model's session limit (OpenAI's Realtime sessions last 60 minutes)
    model_rollover_margin_s: float = 300.0  # a new session is prepared this long before it, at a quiet point
    local_agent: str = "echo"  # the embedded server's agent: "echo" or "scripted:/path/to/script.toml"
    # Twilio side
    public_url: str = ""
    twilio_auth_token: str = ""
    # Server
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    max_frame_bytes: int = 65536
    mark_interval_ms: int = 100
    caller_audio_batch_ms: int = 0  # caller audio to the model in batches of this many ms (0: every 20 ms frame)
    twilio_audio_lead_ms: int = 500  # agent audio is sent at most this far ahead of playback (0: as it comes)
    record_calls_dir: str = ""  # when set, every call's Twilio frames are written there (gateway.recording)
    record_audio: bool = False  # each call also as a stereo WAV there (gateway.recording_wav); POST /calls' "record" wins
    console_session_ttl_s: int = 8 * 3600  # a /console login lasts this long (gateway.console)
    # Embedded Realtime-compatible server (used when no api_key is set)
    local_realtime_port: int = 0
    local_session_limit_s: float = 3600.0  # the embedded server's session limit (OpenAI's is 60 minutes)
    # Outbound HTTP API and Twilio REST (gateway.api, gateway.twilio.rest, gateway.store)
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # bearer keys of the HTTP API; none: it answers 503
    # Keys that see every call record (inbound too) in GET /calls; with one key configured in all, that key.
    operator_api_keys: tuple[str, ...] = field(default=(), repr=False)
    twilio_account_sid: str = ""
    twilio_from_number: str = ""  # default caller ID of outbound calls (E.164): the first of twilio_caller_ids
    twilio_caller_ids: tuple[str, ...] = ()  # every caller ID POST /calls may use as "from" (TWILIO_FROM_NUMBER)
    outbound_allowed_prefixes: tuple[str, ...] = ("+1",)
    outbound_rate_limit_per_minute: int = 10  # per API key (token bucket; burst = the same number)
    api_auth_failures_per_minute: int = 10  # failed API authentications per client address before 429s
    transfer_number: str = ""  # E.164 or sip: URI the transfer tool dials
    voicemail_message: str = ""  # said after the beep when machine_detection="voicemail"
    store_url: str = DEFAULT_STORE_URL  # call records: SQLite by default (they survive a restart); "memory://"; postgresql://
    data_dir: str = ""  # where relative files go (records, recordings, state): DATA_DIR; "": the working directory
    record_retention_days: int = 30  # call records (and recordings) older than this are pruned; 0: kept forever
    # Call records the store could not take (it was down) wait here, one JSON line each, until it is back
    # (gateway.store.spool): RECORD_SPOOL_DIR, relative to DATA_DIR; at most RECORD_SPOOL_MAX_MB (0: no spool).
    record_spool_dir: str = "record-spool"
    record_spool_max_bytes: int = 64 << 20
    twilio_api_base_url: str = DEFAULT_TWILIO_API_BASE_URL
    outbound_time_limit_s: int = 3600  # Twilio's time_limit on outbound calls: a stolen key cannot hold lines for 4 h
    redis_url: str = field(default="", repr=False)  # redis[s]://...: the rate limit is shared by every instance
    # Security and bounds (gateway.security; README "Security")
    insecure_dev_mode: bool = False  # a real model without TWILIO_AUTH_TOKEN / PUBLIC_URL starts anyway, loudly
    stream_secret: str = field(default="", repr=False)  # MAC key of stream credentials; derived if unset
    stream_credential_ttl_s: int = 600  # a stream credential must be used within this many seconds
    trusted_proxy_ips: tuple[str, ...] = ()  # proxies whose X-Forwarded-* headers are believed
    max_calls: int = 100  # concurrent calls per instance
    max_call_duration_s: int = 3600  # the agent says goodbye and the call ends at this length
    media_idle_timeout_s: float = 10.0  # no frame from Twilio for this long ends the call
    caller_audio_burst_ms: int = 1000  # caller audio may run ahead of the wall clock by at most this much
    max_tools_per_call: int = 1  # user tools running at once for one call (more are queued)
    max_connections: int = 1000  # open HTTP/WebSocket connections per process (uvicorn limit_concurrency)
    http_header_timeout_s: float = 10.0  # a connection must send its request headers within this time
    # One address's share of MAX_CONNECTIONS (gateway.connection_caps; 0: derived from max_connections)
    max_connections_per_address: int = 0  # open connections from one address (0: a quarter of max_connections)
    max_unfinished_heads_per_address: int = 0  # its connections waiting for a request head (0: a fifth of that)
    drop_log_interval_s: float = 10.0  # dropped frames are logged as one summary line per stream per interval
    record_max_bytes: int = 64 * 1024 * 1024  # a call's recording stops growing past this size
    # RECORD_CALLS_DIR as a whole (frame recordings and WAVs): once full, new recordings are not started (the call
    # goes on), one reaching it is cut short (gateway.recording.RecordingsQuota)
    record_total_max_bytes: int = 10 * 1024 ** 3
    drain_timeout_s: int = 3600  # on SIGTERM, live calls may run this long before the process exits anyway
    fallback_message: str = DEFAULT_FALLBACK_MESSAGE  # said when a call cannot go on (TwiML after </Connect>)
    # Scale-out (gateway.state): this instance's name in the live-call registry, and limits across instances
    # host-pid-random: containers on one host network share the hostname and all run as pid 1
    instance_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")
    workers: int = 1  # gateway serve: processes on this host (WORKERS; --workers)
    state_sqlite_path: str = ""  # shared state in this SQLite file (the workers of one host) when REDIS_URL is unset
    max_calls_global: int = 0  # calls at once across every instance sharing REDIS_URL; 0: no limit
    max_calls_per_number: int = 0  # calls at once to one called number (Twilio's "To"); 0: no limit
    # Observability and cost (gateway.observe)
    log_format: str = "text"  # "json": one JSON object per line (production); "text": readable lines
    log_full_numbers: bool = False  # phone numbers in logs and records in full (default: masked)
    metrics_api_key: str = field(default="", repr=False)  # when set, GET /metrics wants it as a bearer token
    metrics_port: int = 0  # when set, /metrics is served on a listener of its own on this port, not the gateway's
    metrics_host: str = "127.0.0.1"  # the address that listener binds (0.0.0.0 in a container Prometheus scrapes)
    price_table_file: str = ""  # JSON {"model": {"audio_in": 32, ...}} over the built-in price table
    model_prices: str = ""  # "audio_in=32,audio_out=64,..." for the configured model (USD per million tokens)
    call_budget_usd: float = 0.0  # a call costing this much is wrapped up (the agent says goodbye); 0: none
    daily_budget_usd: float = 0.0  # across calls, per UTC day: warned at 80 %, new calls refused at 100 %; 0: none

    @property
    def uses_embedded_model(self) -> bool:
        """True when no API key is configured: the embedded server stands in for OpenAI."""
        return not self.api_key

    def model_session_limit(self) -> float:
        """Seconds a model session may last (0: unknown, no rollover ahead of it); the embedded server's own
        limit when it stands in for the model."""
        if self.uses_embedded_model and self.model_session_limit_s:
            return min(self.model_session_limit_s, self.local_session_limit_s)
        return self.model_session_limit_s

    def model_connect_url(self) -> str:
        """The WebSocket URL with the model in the query string (OpenAI and Azure GA shapes)."""
        separator = "&" if "?" in self.realtime_url else "?"
        if "model=" in self.realtime_url:
            return self.realtime_url
        return f"{self.realtime_url}{separator}model={self.realtime_model}"

    def model_headers(self) -> dict[str, str]:
        """Authentication headers for the model socket. Never the beta header (GA only)."""
        if not self.api_key:
            return {}
        if self.api_key_header == "api-key":
            return {"api-key": self.api_key}
        return {"Authorization": f"Bearer {self.api_key}"}

    def with_model_url(self, url: str) -> "Settings":
        return replace(self, realtime_url=url)

    def __repr__(self) -> str:
        """Every field, with secrets as ``'***'`` (``''`` when unset) and URLs through :func:`redact_url`."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_url") and isinstance(value, str):
                value = redact_url(value)
            elif f.name in _SECRET_FIELDS or _SECRET_FIELD_NAME.search(f.name) or not f.repr:
                if isinstance(value, str):
                    value = REDACTED if value else ""
                elif isinstance(value, tuple):
                    value = tuple(REDACTED for _ in value)
                elif value is not None and not isinstance(value, (bool, int, float)):
                    value = REDACTED
            parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, dotenv: bool = True) -> "Settings":
        """Read settings from ``env`` (default: ``os.environ``, after loading the working directory's ``.env``)."""
        if env is None:
            if dotenv:
                load_dotenv_from_working_directory()
            env = os.environ
        azure_key = env.get("AZURE_OPENAI_API_KEY", "")
        api_key = env.get("REALTIME_API_KEY") or env.get("OPENAI_API_KEY") or azure_key
        realtime_url = (env.get("REALTIME_URL") or DEFAULT_REALTIME_URL).strip()
        realtime_parts = _split_url("REALTIME_URL", realtime_url)
        scheme = realtime_parts.scheme
        if scheme not in ("ws", "wss"):
            raise ConfigError(f"REALTIME_URL must start with ws:// or wss://, got {redact_url(realtime_url)!r}")
        host = realtime_parts.hostname or ""
        if scheme == "ws" and api_key.strip() and not _is_loopback_host(host):
            # The API key travels in the socket's headers: never in clear text off this machine.
            raise ConfigError("REALTIME_URL must be wss:// when an API key is set (ws:// only to 127.0.0.1, ::1 "
                              f"or localhost), got {redact_url(realtime_url)!r}")
        default_header = "api-key" if (host.endswith(".openai.azure.com") or (azure_key and api_key == azure_key)) else "authorization"
        public_url = (env.get("PUBLIC_URL") or "").strip().rstrip("/")
        if public_url and _split_url("PUBLIC_URL", public_url).scheme not in ("http", "https"):
            raise ConfigError("PUBLIC_URL must start with https:// (or http:// for local use), "
                              f"got {redact_url(public_url)!r}")
        return cls(
            realtime_url=realtime_url,
            realtime_model=(env.get("REALTIME_MODEL") or "gpt-realtime").strip(),
            api_key=api_key.strip(),
            api_key_header=_choice(env, "REALTIME_API_KEY_HEADER", default_header, ("authorization", "api-key")),
            voice=(env.get("VOICE") or "marin").strip(),
            instructions=env.get("INSTRUCTIONS") or DEFAULT_INSTRUCTIONS,
            audio_format=_choice(env, "AUDIO_FORMAT", "pcm16", AUDIO_FORMATS),
            turn_detection=_choice(env, "TURN_DETECTION", "server_vad", TURN_DETECTION_TYPES),
            vad_threshold=_float(env, "VAD_THRESHOLD", 0.5, 0.0, 1.0),
            vad_prefix_padding_ms=_int(env, "VAD_PREFIX_PADDING_MS", 300, 0, 5000),
            vad_silence_duration_ms=_int(env, "VAD_SILENCE_DURATION_MS", 500, 50, 10000),
            vad_eagerness=_choice(env, "VAD_EAGERNESS", "auto", ("auto", "low", "medium", "high")),
            interrupt_response=_bool(env, "INTERRUPT_RESPONSE", True),
            transcription_model=(env.get("TRANSCRIPTION_MODEL") or "").strip(),
            agent_speaks_first=_bool(env, "AGENT_SPEAKS_FIRST", False),
            greeting_instructions=env.get("GREETING_INSTRUCTIONS") or "",
            tools_module=(env.get("TOOLS_MODULE") or "").strip(),
            tool_timeout_s=_float(env, "TOOL_TIMEOUT_S", 10.0, 0.1, 600.0),
            local_agent=(env.get("LOCAL_AGENT") or "echo").strip(),
            model_reconnect=_bool(env, "MODEL_RECONNECT", True),
            model_wait_prompt=_wait_prompt(env),
            model_session_limit_s=_float(env, "MODEL_SESSION_LIMIT_S", 3600.0, 0.0, 86400.0),
            model_rollover_margin_s=_float(env, "MODEL_ROLLOVER_MARGIN_S", 300.0, 0.0, 86400.0),
            public_url=public_url,
            twilio_auth_token=(env.get("TWILIO_AUTH_TOKEN") or "").strip(),
            host=(env.get("HOST") or "127.0.0.1").strip(),
            port=_int(env, "PORT", 8080, 0, 65535),
            log_level=_choice(env, "LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            max_frame_bytes=_int(env, "MAX_FRAME_BYTES", 65536, 1024, 1 << 20),
            mark_interval_ms=_int(env, "MARK_INTERVAL_MS", 100, 20, 2000),
            twilio_audio_lead_ms=_int(env, "TWILIO_AUDIO_LEAD_MS", 500, 0, 60_000),
            caller_audio_batch_ms=_int(env, "CALLER_AUDIO_BATCH_MS", 0, 0, 200),
            record_calls_dir=in_data_dir(env, (env.get("RECORD_CALLS_DIR") or "").strip()),
            record_audio=_record_audio(env),
            console_session_ttl_s=_int(env, "CONSOLE_SESSION_TTL_S", 8 * 3600, 60, 30 * 86400),
            local_realtime_port=_int(env, "LOCAL_REALTIME_PORT", 0, 0, 65535),
            local_session_limit_s=_float(env, "LOCAL_SESSION_LIMIT_S", 3600.0, 1.0, 86400.0),
            **({"instance_id": env["INSTANCE_ID"].strip()[:64]} if (env.get("INSTANCE_ID") or "").strip() else {}),
            state_sqlite_path=in_data_dir(env, (env.get("STATE_SQLITE_PATH") or "").strip()),
            workers=_int(env, "WORKERS", 1, 1, 64),
            max_calls_global=_int(env, "MAX_CALLS_GLOBAL", 0, 0, 10_000_000),
            max_calls_per_number=_int(env, "MAX_CALLS_PER_NUMBER", 0, 0, 10_000_000),
            log_format=_choice(env, "LOG_FORMAT", "text", ("text", "json")),
            log_full_numbers=_bool(env, "LOG_FULL_NUMBERS", False),
            metrics_api_key=_metrics_key(env),
            **_metrics_listener(env),
            price_table_file=(env.get("PRICE_TABLE_FILE") or "").strip(),
            model_prices=(env.get("MODEL_PRICES") or "").strip(),
            call_budget_usd=_float(env, "CALL_BUDGET_USD", 0.0, 0.0, 1_000_000.0),
            daily_budget_usd=_float(env, "DAILY_BUDGET_USD", 0.0, 0.0, 100_000_000.0),
            **_outbound_settings(env),
            **_security_settings(env),
        )


def load_dotenv_from_working_directory() -> None:
    """``.env`` in the working directory into ``os.environ``, where the operator runs the gateway (docs/first-call.md).

    Only that file: python-dotenv's own search starts from the calling module's folder, which is the package's in
    site-packages, so a ``.env`` beside the operator was never found. Variables already set in the environment win.
    """
    from dotenv import load_dotenv

    try:
        path = os.path.join(os.getcwd(), ".env")
    except OSError:  # the working directory was removed: there is no .env to read
        return
    if os.path.isfile(path):
        try:
            load_dotenv(path, override=False)
        except (OSError, UnicodeDecodeError) as error:  # unreadable by this user, or not text
            reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
            raise ConfigError(f"{path} cannot be read ({reason}): fix it or remove it") from None


def data_dir(env: Mapping[str, str]) -> str:
    """DATA_DIR: the directory of the gateway's files (the SQLite records, recordings, the workers' state);
    ``""``, the default, is the working directory. The container image sets ``/data``, a volume its user owns."""
    path = (env.get("DATA_DIR") or "").strip()
    if "\x00" in path:
        raise ConfigError("DATA_DIR must be a directory path, got a NUL character")
    if path and os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"DATA_DIR must be a directory, got {path!r} (a file)")
    return path


def _spool_dir(env: Mapping[str, str]) -> str:
    """RECORD_SPOOL_DIR (default ``record-spool``), under DATA_DIR when relative."""
    path = (env.get("RECORD_SPOOL_DIR") or "").strip() or "record-spool"
    if "\x00" in path:
        raise ConfigError("RECORD_SPOOL_DIR must be a directory path, got a NUL character")
    if os.path.isfile(in_data_dir(env, path)):
        raise ConfigError(f"RECORD_SPOOL_DIR must be a directory, got {path!r} (a file)")
    return in_data_dir(env, path)


def in_data_dir(env: Mapping[str, str], path: str) -> str:
    """``path`` under DATA_DIR when it is relative (an absolute path, or no DATA_DIR: as given)."""
    return os.path.join(data_dir(env), path) if path and not os.path.isabs(path) else path


def _record_audio(env: Mapping[str, str]) -> bool:
    """RECORD_AUDIO: the WAVs are written next to the frame recordings they are made from."""
    record_audio = _bool(env, "RECORD_AUDIO", False)
    if record_audio and not (env.get("RECORD_CALLS_DIR") or "").strip():
        raise ConfigError("RECORD_AUDIO needs RECORD_CALLS_DIR: the directory the recordings are written to")
    return record_audio


def _outbound_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The outbound API's settings (API_KEYS, OPERATOR_API_KEYS, TWILIO_*, OUTBOUND_*, TRANSFER_NUMBER,
    VOICEMAIL_MESSAGE, STORE_URL, RECORD_RETENTION_DAYS, REDIS_URL)."""
    from gateway.twilio.numbers import destination_refusal, is_e164, is_prefix, is_sip_uri
    from gateway.twilio.sids import is_account_sid

    api_keys = tuple(key.strip() for key in (env.get("API_KEYS") or "").split(",") if key.strip())
    if any(len(key) < 16 for key in api_keys):
        raise ConfigError("API_KEYS: every key must be at least 16 characters (use e.g. `openssl rand -hex 24`)")
    operator_keys = tuple(key.strip() for key in (env.get("OPERATOR_API_KEYS") or "").split(",") if key.strip())
    if any(len(key) < 16 for key in operator_keys):
        raise ConfigError("OPERATOR_API_KEYS: every key must be at least 16 characters "
                          "(use e.g. `openssl rand -hex 24`)")
    account_sid = (env.get("TWILIO_ACCOUNT_SID") or "").strip()
    if account_sid and not is_account_sid(account_sid):
        raise ConfigError(f"TWILIO_ACCOUNT_SID must be AC followed by 32 hex digits, got {account_sid!r}")
    # Several caller IDs, comma-separated: POST /calls may pick any of them as "from"; the first is the default.
    raw_caller_ids = (env.get("TWILIO_FROM_NUMBER") or "").split(",")
    caller_ids = tuple(dict.fromkeys(number.strip() for number in raw_caller_ids if number.strip()))
    bad_ids = [number for number in caller_ids if not is_e164(number)]
    if bad_ids:
        raise ConfigError("TWILIO_FROM_NUMBER must be E.164 numbers (+14155550100) separated by commas, "
                          f"got {bad_ids!r}")
    raw_prefixes = env.get("OUTBOUND_ALLOWED_PREFIXES")
    prefixes = tuple(p.strip() for p in (raw_prefixes if raw_prefixes is not None else "+1").split(",") if p.strip())
    bad = [p for p in prefixes if not is_prefix(p)]
    if bad:
        raise ConfigError(f"OUTBOUND_ALLOWED_PREFIXES must be +digits prefixes separated by commas, got {bad!r}")
    if "+" in prefixes:
        # A bare "+" turns the toll-fraud guard off for every country but the premium list: too easy to write.
        raise ConfigError("OUTBOUND_ALLOWED_PREFIXES: '+' allows every country, list countries explicitly (+1,+44)")
    transfer = (env.get("TRANSFER_NUMBER") or "").strip()
    if transfer and not (is_e164(transfer) or is_sip_uri(transfer)):
        raise ConfigError(f"TRANSFER_NUMBER must be E.164 or a sip: URI, got {transfer!r}")
    if transfer and not is_sip_uri(transfer):
        # The agent dials it on the model's say-so: it gets the same toll-fraud guard as POST /calls.
        refusal = destination_refusal(transfer, prefixes)
        if refusal is not None:
            raise ConfigError(f"TRANSFER_NUMBER {transfer} is refused by the toll-fraud guard: {refusal[1]}")
    store_url = (env.get("STORE_URL") or DEFAULT_STORE_URL).strip()
    store_scheme = _split_url("STORE_URL", store_url).scheme if store_url else "memory"
    if store_scheme not in ("memory", "sqlite", "postgresql", "postgres"):
        raise ConfigError("STORE_URL must be memory://, sqlite:///path.db or postgresql://user@host:port/db, "
                          f"got {redact_url(store_url)!r}")
    if store_scheme == "sqlite" and store_url.startswith("sqlite:///") and store_url != "sqlite:///:memory:":
        store_url = "sqlite:///" + in_data_dir(env, store_url[len("sqlite:///"):])
    redis_url = (env.get("REDIS_URL") or "").strip()
    redis_parts = _split_url("REDIS_URL", redis_url)
    if redis_url and not (redis_parts.scheme in ("redis", "rediss") and redis_parts.netloc):
        raise ConfigError("REDIS_URL must be redis://[:password@]host:port/db or rediss://..., "
                          f"got {redact_url(redis_url)!r}")
    base_url = (env.get("TWILIO_API_BASE_URL") or DEFAULT_TWILIO_API_BASE_URL).strip().rstrip("/")
    base_parts = _split_url("TWILIO_API_BASE_URL", base_url)
    loopback = base_parts.hostname in ("127.0.0.1", "localhost", "::1")
    if not base_parts.netloc or not (base_parts.scheme == "https" or (base_parts.scheme == "http" and loopback)):
        # The account SID and auth token travel to this URL: never in clear text off this machine.
        raise ConfigError("TWILIO_API_BASE_URL must be https:// (http:// only to 127.0.0.1), "
                          f"got {redact_url(base_url)!r}")
    return dict(
        api_keys=api_keys,
        operator_api_keys=operator_keys,
        twilio_account_sid=account_sid,
        twilio_from_number=caller_ids[0] if caller_ids else "",
        twilio_caller_ids=caller_ids,
        outbound_allowed_prefixes=prefixes,
        outbound_rate_limit_per_minute=_int(env, "OUTBOUND_RATE_LIMIT_PER_MINUTE", 10, 1, 100_000),
        api_auth_failures_per_minute=_int(env, "API_AUTH_FAILURES_PER_MINUTE", 10, 1, 100_000),
        transfer_number=transfer,
        voicemail_message=(env.get("VOICEMAIL_MESSAGE") or "").strip(),
        store_url=store_url,
        data_dir=data_dir(env),
        record_retention_days=_int(env, "RECORD_RETENTION_DAYS", 30, 0, 36500),
        record_spool_dir=_spool_dir(env),
        record_spool_max_bytes=_int(env, "RECORD_SPOOL_MAX_MB", 64, 0, 100_000) << 20,
        twilio_api_base_url=base_url,
        outbound_time_limit_s=_int(env, "OUTBOUND_TIME_LIMIT_S", 3600, 60, 86400),
        redis_url=redis_url,
    )


def _security_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """Credentials of media streams, trusted proxies and the bounds on every resource a call may use."""
    import ipaddress

    secret = (env.get("STREAM_SECRET") or "").strip()
    if secret and len(secret) < 32:
        raise ConfigError("STREAM_SECRET must be at least 32 characters (use e.g. `openssl rand -hex 32`)")
    proxies = tuple(p.strip() for p in (env.get("TRUSTED_PROXY_IPS") or "").split(",") if p.strip())
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(f"TRUSTED_PROXY_IPS must be IP addresses or networks (10.0.0.0/8), got {proxy!r}") from None
    return dict(
        insecure_dev_mode=_bool(env, "INSECURE_DEV_MODE", False),
        stream_secret=secret,
        stream_credential_ttl_s=_int(env, "STREAM_CREDENTIAL_TTL_S", 600, 30, 3600),
        trusted_proxy_ips=proxies,
        max_calls=_int(env, "MAX_CALLS", 100, 1, 100_000),
        max_call_duration_s=_int(env, "MAX_CALL_DURATION_S", 3600, 10, 86400),
        media_idle_timeout_s=_float(env, "MEDIA_IDLE_TIMEOUT_S", 10.0, 1.0, 600.0),
        caller_audio_burst_ms=_int(env, "CALLER_AUDIO_BURST_MS", 1000, 100, 10_000),
        max_tools_per_call=_int(env, "MAX_TOOLS_PER_CALL", 1, 1, 16),
        max_connections=_int(env, "MAX_CONNECTIONS", 1000, 10, 1_000_000),
        http_header_timeout_s=_float(env, "HTTP_HEADER_TIMEOUT_S", 10.0, 1.0, 300.0),
        # 0: derived; any value is lowered to at most half of MAX_CONNECTIONS (gateway.connection_caps)
        max_connections_per_address=_int(env, "MAX_CONNECTIONS_PER_ADDRESS", 0, 0, 1_000_000),
        max_unfinished_heads_per_address=_int(env, "MAX_UNFINISHED_HEADS_PER_ADDRESS", 0, 0, 1_000_000),
        drop_log_interval_s=_float(env, "DROP_LOG_INTERVAL_S", 10.0, 0.1, 3600.0),
        record_max_bytes=_int(env, "RECORD_MAX_BYTES", 64 * 1024 * 1024, 4096, 1 << 40),
        record_total_max_bytes=_int(env, "RECORD_TOTAL_MAX_BYTES", 10 * 1024 ** 3, 4096, 1 << 50),
        drain_timeout_s=_int(env, "DRAIN_TIMEOUT_S", 3600, 0, 86400),
        fallback_message=_fallback_message(env),
    )


def _wait_prompt(env: Mapping[str, str]) -> str:
    from gateway.wavio import wait_prompt

    spec = env.get("MODEL_WAIT_PROMPT", "").strip()
    try:
        wait_prompt(spec)  # read and checked now: a bad file fails the start, not a call
    except ValueError as error:
        raise ConfigError(f"MODEL_WAIT_PROMPT: {error} (a bundled sample such as one_moment, a WAV file of at most "
                          "5 s, or none)") from None
    return spec


def _fallback_message(env: Mapping[str, str]) -> str:
    raw = env.get("FALLBACK_MESSAGE")
    message = DEFAULT_FALLBACK_MESSAGE if raw is None else raw.strip()
    if len(message) > 500:
        raise ConfigError(f"FALLBACK_MESSAGE must be at most 500 characters, got {len(message)}")
    return message
