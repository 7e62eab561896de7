"""The settings object of the whole gateway, :class:`Settings`, read from the environment (and a ``.env`` file in
the working directory).

Each field is bound to its declaration (``gateway/config/model.py``, ``serving.py``, ``operations.py``): the
variable, the default, the bounds, whether it is secret and its description are written there once.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from . import model, operations, serving
from .redact import REDACTED, redact_url
from .setting import ConfigError, Setting, Values

# Every declaration, in the README table's order (a ``name`` of None: a variable with no field of its own).
DECLARED: tuple[Setting[Any], ...] = model.SETTINGS + serving.SETTINGS + operations.SETTINGS
# Besides declared secrets, a field named like one is shown as *** too: a new secret is redacted even undeclared.
_SECRET_FIELD_NAME = re.compile(r"(?:^|_)(?:key|keys|secret|secrets|token|tokens|password|passwords)$")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable. Build with :meth:`from_env`; tests use :func:`dataclasses.replace`."""

    # Model side
    realtime_url: str = model.REALTIME_URL.field()
    realtime_model: str = model.REALTIME_MODEL.field()
    api_key: str = model.REALTIME_API_KEY.field()
    api_key_header: str = model.REALTIME_API_KEY_HEADER.field()
    voice: str = model.VOICE.field()
    instructions: str = model.INSTRUCTIONS.field()
    audio_format: str = model.AUDIO_FORMAT.field()
    turn_detection: str = model.TURN_DETECTION.field()
    vad_threshold: float = model.VAD_THRESHOLD.field()
    vad_prefix_padding_ms: int = model.VAD_PREFIX_PADDING_MS.field()
    vad_silence_duration_ms: int = model.VAD_SILENCE_DURATION_MS.field()
    vad_eagerness: str = model.VAD_EAGERNESS.field()
    interrupt_response: bool = model.INTERRUPT_RESPONSE.field()
    transcription_model: str = model.TRANSCRIPTION_MODEL.field()
    agent_speaks_first: bool = model.AGENT_SPEAKS_FIRST.field()
    greeting_instructions: str = model.GREETING_INSTRUCTIONS.field()
    tools_module: str = model.TOOLS_MODULE.field()
    tool_timeout_s: float = model.TOOL_TIMEOUT_S.field()
    model_reconnect: bool = model.MODEL_RECONNECT.field()
    model_wait_prompt: str = model.MODEL_WAIT_PROMPT.field()
    model_session_limit_s: float = model.MODEL_SESSION_LIMIT_S.field()
    model_rollover_margin_s: float = model.MODEL_ROLLOVER_MARGIN_S.field()
    local_agent: str = model.LOCAL_AGENT.field()
    # Twilio side
    public_url: str = serving.PUBLIC_URL.field()
    twilio_auth_token: str = serving.TWILIO_AUTH_TOKEN.field()
    # Server
    host: str = serving.HOST.field()
    port: int = serving.PORT.field()
    log_level: str = serving.LOG_LEVEL.field()
    max_frame_bytes: int = serving.MAX_FRAME_BYTES.field()
    mark_interval_ms: int = model.MARK_INTERVAL_MS.field()
    caller_audio_batch_ms: int = model.CALLER_AUDIO_BATCH_MS.field()
    twilio_audio_lead_ms: int = model.TWILIO_AUDIO_LEAD_MS.field()
    record_calls_dir: str = serving.RECORD_CALLS_DIR.field()
    record_audio: bool = serving.RECORD_AUDIO.field()
    console_session_ttl_s: int = serving.CONSOLE_SESSION_TTL_S.field()
    local_realtime_port: int = model.LOCAL_REALTIME_PORT.field()
    local_session_limit_s: float = model.LOCAL_SESSION_LIMIT_S.field()
    # Outbound API, Twilio REST, call records
    api_keys: tuple[str, ...] = operations.API_KEYS.field()
    operator_api_keys: tuple[str, ...] = operations.OPERATOR_API_KEYS.field()
    twilio_account_sid: str = operations.TWILIO_ACCOUNT_SID.field()
    twilio_from_number: str = operations.DEFAULT_CALLER_ID.field()
    twilio_caller_ids: tuple[str, ...] = operations.TWILIO_FROM_NUMBER.field()
    outbound_allowed_prefixes: tuple[str, ...] = operations.OUTBOUND_ALLOWED_PREFIXES.field()
    outbound_rate_limit_per_minute: int = operations.OUTBOUND_RATE_LIMIT_PER_MINUTE.field()
    api_auth_failures_per_minute: int = operations.API_AUTH_FAILURES_PER_MINUTE.field()
    transfer_number: str = operations.TRANSFER_NUMBER.field()
    voicemail_message: str = operations.VOICEMAIL_MESSAGE.field()
    store_url: str = operations.STORE_URL.field()
    data_dir: str = operations.DATA_DIR.field()
    record_retention_days: int = operations.RECORD_RETENTION_DAYS.field()
    record_spool_dir: str = operations.RECORD_SPOOL_DIR.field()
    record_spool_max_bytes: int = operations.RECORD_SPOOL_MAX_MB.field()
    twilio_api_base_url: str = operations.TWILIO_API_BASE_URL.field()
    outbound_time_limit_s: int = operations.OUTBOUND_TIME_LIMIT_S.field()
    redis_url: str = operations.REDIS_URL.field()
    # Security and bounds (gateway.twilio.security; README "Security")
    insecure_dev_mode: bool = serving.INSECURE_DEV_MODE.field()
    stream_secret: str = serving.STREAM_SECRET.field()
    stream_credential_ttl_s: int = serving.STREAM_CREDENTIAL_TTL_S.field()
    trusted_proxy_ips: tuple[str, ...] = serving.TRUSTED_PROXY_IPS.field()
    max_calls: int = serving.MAX_CALLS.field()
    max_call_duration_s: int = serving.MAX_CALL_DURATION_S.field()
    media_idle_timeout_s: float = serving.MEDIA_IDLE_TIMEOUT_S.field()
    caller_audio_burst_ms: int = serving.CALLER_AUDIO_BURST_MS.field()
    max_tools_per_call: int = serving.MAX_TOOLS_PER_CALL.field()
    max_connections: int = serving.MAX_CONNECTIONS.field()
    http_header_timeout_s: float = serving.HTTP_HEADER_TIMEOUT_S.field()
    max_connections_per_address: int = serving.MAX_CONNECTIONS_PER_ADDRESS.field()
    max_unfinished_heads_per_address: int = serving.MAX_UNFINISHED_HEADS_PER_ADDRESS.field()
    drop_log_interval_s: float = serving.DROP_LOG_INTERVAL_S.field()
    record_max_bytes: int = serving.RECORD_MAX_BYTES.field()
    record_total_max_bytes: int = serving.RECORD_TOTAL_MAX_BYTES.field()
    drain_timeout_s: int = serving.DRAIN_TIMEOUT_S.field()
    fallback_message: str = serving.FALLBACK_MESSAGE.field()
    # Scale-out (gateway.state)
    instance_id: str = operations.INSTANCE_ID.field()
    workers: int = operations.WORKERS.field()
    state_sqlite_path: str = operations.STATE_SQLITE_PATH.field()
    max_calls_global: int = operations.MAX_CALLS_GLOBAL.field()
    max_calls_per_number: int = operations.MAX_CALLS_PER_NUMBER.field()
    # Observability and cost (gateway.observe)
    log_format: str = operations.LOG_FORMAT.field()
    log_full_numbers: bool = operations.LOG_FULL_NUMBERS.field()
    metrics_api_key: str = operations.METRICS_API_KEY.field()
    metrics_port: int = operations.METRICS_PORT.field()
    metrics_host: str = operations.METRICS_HOST.field()
    price_table_file: str = operations.PRICE_TABLE_FILE.field()
    model_prices: str = operations.MODEL_PRICES.field()
    call_budget_usd: float = operations.CALL_BUDGET_USD.field()
    daily_budget_usd: float = operations.DAILY_BUDGET_USD.field()

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
            elif not f.repr or _SECRET_FIELD_NAME.search(f.name):  # not f.repr: declared secret=True
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
        """Read settings from ``env`` (default: ``os.environ``, after loading the working directory's ``.env``).

        Each field is read by its declaration, in the fields' order (one a reader asks for, first)."""
        if env is None:
            if dotenv:
                load_dotenv_from_working_directory()
            env = os.environ
        values = Values(env, _BY_NAME)
        return cls(**{f.name: values[f.name] for f in fields(cls)})


_BY_NAME: dict[str, Setting[Any]] = {setting.name: setting for setting in DECLARED if setting.name is not None}


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


