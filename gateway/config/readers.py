"""Readers of the settings whose checks go beyond a type and bounds: URLs, keys, phone numbers, paths under
DATA_DIR, and the rules between settings. Each takes its :class:`Setting` and the call's :class:`Values`; a bad
value is a :class:`ConfigError` naming the variable (and never quoting a secret)."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from .redact import is_loopback_host, redact_url, split_url
from .setting import ConfigError, Reader, Setting, Values, comma_list, env_choice


def chosen_api_key(values: Values) -> str:
    """The model key as given: REALTIME_API_KEY, else OPENAI_API_KEY, else AZURE_OPENAI_API_KEY."""
    env = values.env
    return env.get("REALTIME_API_KEY") or env.get("OPENAI_API_KEY") or env.get("AZURE_OPENAI_API_KEY", "")


def api_key(setting: Setting[str], values: Values) -> str:
    return chosen_api_key(values).strip()


def realtime_url(setting: Setting[str], values: Values) -> str:
    url = setting.parse(values.env)
    parts = split_url(setting.env, url)
    if parts.scheme not in ("ws", "wss"):
        raise ConfigError(f"REALTIME_URL must start with ws:// or wss://, got {redact_url(url)!r}")
    if parts.scheme == "ws" and values["api_key"] and not is_loopback_host(parts.hostname or ""):
        # The API key travels in the socket's headers: never in clear text off this machine.
        raise ConfigError("REALTIME_URL must be wss:// when an API key is set (ws:// only to 127.0.0.1, ::1 "
                          f"or localhost), got {redact_url(url)!r}")
    return url


def api_key_header(setting: Setting[str], values: Values) -> str:
    """Unset: ``api-key`` for an Azure host or key, else ``authorization``."""
    host = split_url("REALTIME_URL", values["realtime_url"]).hostname or ""
    azure_key = values.env.get("AZURE_OPENAI_API_KEY", "")
    azure = host.endswith(".openai.azure.com") or bool(azure_key and chosen_api_key(values) == azure_key)
    return env_choice(values.env, setting.env, "api-key" if azure else setting.default, setting.choices)


def public_url(setting: Setting[str], values: Values) -> str:
    url = setting.parse(values.env).rstrip("/")
    if url and split_url(setting.env, url).scheme not in ("http", "https"):
        raise ConfigError(f"PUBLIC_URL must start with https:// (or http:// for local use), got {redact_url(url)!r}")
    return url


def wait_prompt(setting: Setting[str], values: Values) -> str:
    from gateway.audio.wavio import wait_prompt as load

    spec = setting.parse(values.env)
    try:
        load(spec)  # read and checked now: a bad file fails the start, not a call
    except ValueError as error:
        raise ConfigError(f"MODEL_WAIT_PROMPT: {error} (a bundled sample such as one_moment, a WAV file of at most "
                          "5 s, or none)") from None
    return spec


def data_dir(setting: Setting[str], values: Values) -> str:
    """DATA_DIR: the directory of the gateway's files (the SQLite records, recordings, the workers' state);
    ``""``, the default, is the working directory. The container image sets ``/data``, a volume its user owns."""
    path = setting.parse(values.env)
    if "\x00" in path:
        raise ConfigError("DATA_DIR must be a directory path, got a NUL character")
    if path and os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"DATA_DIR must be a directory, got {path!r} (a file)")
    return path


def in_data_dir(values: Values, path: str) -> str:
    """``path`` under DATA_DIR when it is relative (an absolute path, or no DATA_DIR: as given)."""
    return os.path.join(values["data_dir"], path) if path and not os.path.isabs(path) else path


def under_data_dir(setting: Setting[str], values: Values) -> str:
    """A path setting, under DATA_DIR when relative."""
    return in_data_dir(values, setting.parse(values.env))


def spool_dir(setting: Setting[str], values: Values) -> str:
    path = setting.parse(values.env) or setting.default  # blank: the default, not the data directory itself
    if "\x00" in path:
        raise ConfigError("RECORD_SPOOL_DIR must be a directory path, got a NUL character")
    if os.path.isfile(in_data_dir(values, path)):
        raise ConfigError(f"RECORD_SPOOL_DIR must be a directory, got {path!r} (a file)")
    return in_data_dir(values, path)


def record_audio(setting: Setting[bool], values: Values) -> bool:
    """RECORD_AUDIO: the WAVs are written next to the frame recordings they are made from."""
    wanted = setting.parse(values.env)
    if wanted and not values["record_calls_dir"]:
        raise ConfigError("RECORD_AUDIO needs RECORD_CALLS_DIR: the directory the recordings are written to")
    return wanted


def keys(setting: Setting[tuple[str, ...]], values: Values) -> tuple[str, ...]:
    """API_KEYS, OPERATOR_API_KEYS: comma-separated, each long enough not to be guessed."""
    found = setting.parse(values.env)
    if any(len(key) < 16 for key in found):
        raise ConfigError(f"{setting.env}: every key must be at least 16 characters (use e.g. `openssl rand -hex 24`)")
    return found


def at_least(length: int, why: str) -> Reader:
    """The reader of a secret that is either unset or at least ``length`` characters long (METRICS_API_KEY,
    STREAM_SECRET): a short one is guessed. The error names the variable, never the value."""
    def read(setting: Setting[str], values: Values) -> str:
        secret = setting.parse(values.env)
        if secret and len(secret) < length:
            raise ConfigError(f"{setting.env} must be at least {length} characters ({why})")
        return secret
    return read


def metrics_port(setting: Setting[int], values: Values) -> int:
    """METRICS_PORT (0: none): /metrics on a listener of its own, never the public port."""
    port = setting.parse(values.env)
    if port and port == values["port"]:
        raise ConfigError(f"METRICS_PORT must differ from PORT ({port}): /metrics gets a listener of its own")
    return port


def metrics_host(setting: Setting[str], values: Values) -> str:
    host = setting.parse(values.env)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError("METRICS_HOST must be an IP address to listen on (127.0.0.1, or 0.0.0.0 in a "
                              f"container), got {host!r}") from None
    return host


def account_sid(setting: Setting[str], values: Values) -> str:
    from gateway.twilio.sids import is_account_sid

    sid = setting.parse(values.env)
    if sid and not is_account_sid(sid):
        raise ConfigError(f"TWILIO_ACCOUNT_SID must be AC followed by 32 hex digits, got {sid!r}")
    return sid


def caller_ids(setting: Setting[tuple[str, ...]], values: Values) -> tuple[str, ...]:
    """Several caller IDs, comma-separated: POST /calls may pick any of them as "from"; the first is the default."""
    from gateway.twilio.numbers import is_e164

    found = tuple(dict.fromkeys(setting.parse(values.env)))
    bad = [number for number in found if not is_e164(number)]
    if bad:
        raise ConfigError(f"TWILIO_FROM_NUMBER must be E.164 numbers (+14155550100) separated by commas, got {bad!r}")
    return found


def first_caller_id(setting: Setting[str], values: Values) -> str:
    found = values["twilio_caller_ids"]
    return str(found[0]) if found else ""


def allowed_prefixes(setting: Setting[tuple[str, ...]], values: Values) -> tuple[str, ...]:
    from gateway.twilio.numbers import is_prefix

    raw = values.env.get(setting.env)
    prefixes = comma_list(raw) if raw is not None else setting.default  # set but empty: no destination at all
    bad = [p for p in prefixes if not is_prefix(p)]
    if bad:
        raise ConfigError(f"OUTBOUND_ALLOWED_PREFIXES must be +digits prefixes separated by commas, got {bad!r}")
    if "+" in prefixes:
        # A bare "+" turns the toll-fraud guard off for every country but the premium list: too easy to write.
        raise ConfigError("OUTBOUND_ALLOWED_PREFIXES: '+' allows every country, list countries explicitly (+1,+44)")
    return prefixes


def transfer_number(setting: Setting[str], values: Values) -> str:
    from gateway.twilio.numbers import destination_refusal, is_e164, is_sip_uri

    transfer = setting.parse(values.env)
    if transfer and not (is_e164(transfer) or is_sip_uri(transfer)):
        raise ConfigError(f"TRANSFER_NUMBER must be E.164 or a sip: URI, got {transfer!r}")
    if transfer and not is_sip_uri(transfer):
        # The agent dials it on the model's say-so: it gets the same toll-fraud guard as POST /calls.
        refusal = destination_refusal(transfer, values["outbound_allowed_prefixes"])
        if refusal is not None:
            raise ConfigError(f"TRANSFER_NUMBER {transfer} is refused by the toll-fraud guard: {refusal[1]}")
    return transfer


def store_url(setting: Setting[str], values: Values) -> str:
    url = setting.parse(values.env)
    scheme = split_url(setting.env, url).scheme if url else "memory"
    if scheme not in ("memory", "sqlite", "postgresql", "postgres"):
        raise ConfigError("STORE_URL must be memory://, sqlite:///path.db or postgresql://user@host:port/db, "
                          f"got {redact_url(url)!r}")
    if scheme == "sqlite" and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        url = "sqlite:///" + in_data_dir(values, url[len("sqlite:///"):])
    return url


def redis_url(setting: Setting[str], values: Values) -> str:
    url = setting.parse(values.env)
    parts = split_url(setting.env, url)
    if url and not (parts.scheme in ("redis", "rediss") and parts.netloc):
        raise ConfigError("REDIS_URL must be redis://[:password@]host:port/db or rediss://..., "
                          f"got {redact_url(url)!r}")
    return url


def twilio_api_base_url(setting: Setting[str], values: Values) -> str:
    url = setting.parse(values.env).rstrip("/")
    parts = split_url(setting.env, url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if not parts.netloc or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        # The account SID and auth token travel to this URL: never in clear text off this machine.
        raise ConfigError(f"TWILIO_API_BASE_URL must be https:// (http:// only to 127.0.0.1), got {redact_url(url)!r}")
    return url




def trusted_proxies(setting: Setting[tuple[str, ...]], values: Values) -> tuple[str, ...]:
    proxies = setting.parse(values.env)
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(f"TRUSTED_PROXY_IPS must be IP addresses or networks (10.0.0.0/8), "
                              f"got {proxy!r}") from None
    return proxies


def fallback_message(setting: Setting[str], values: Values) -> str:
    raw = values.env.get(setting.env)
    message = setting.default if raw is None else raw.strip()  # set but empty: just hang up
    if len(message) > 500:
        raise ConfigError(f"FALLBACK_MESSAGE must be at most 500 characters, got {len(message)}")
    return message


def instance_id(setting: Setting[str], values: Values) -> Any:
    given = (values.env.get(setting.env) or "").strip()[:64]
    assert setting.factory is not None
    return given or setting.factory()
