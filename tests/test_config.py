"""Settings from the environment: defaults that work offline, clear errors for bad values."""

import string

import pytest
from hypothesis import HealthCheck, assume, given, settings as hypothesis_settings, strategies as st

from gateway.config import ConfigError, Settings, redact_url


def test_defaults_use_the_embedded_model():
    settings = Settings.from_env({})
    assert settings.uses_embedded_model
    assert settings.audio_format == "pcm16" and settings.turn_detection == "server_vad"
    assert settings.model_headers() == {}


def test_openai_and_azure_authentication():
    openai = Settings.from_env({"OPENAI_API_KEY": "sk-1"})
    assert openai.model_headers() == {"Authorization": "Bearer sk-1"}
    assert openai.model_connect_url() == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    azure = Settings.from_env({"AZURE_OPENAI_API_KEY": "az",
                               "REALTIME_URL": "wss://res.openai.azure.com/openai/v1/realtime",
                               "REALTIME_MODEL": "my-deployment"})
    assert azure.model_headers() == {"api-key": "az"}
    assert azure.model_connect_url() == "wss://res.openai.azure.com/openai/v1/realtime?model=my-deployment"
    compatible = Settings.from_env({"REALTIME_API_KEY": "k", "REALTIME_URL": "ws://127.0.0.1:9000/v1/realtime?model=x"})
    assert compatible.model_connect_url() == "ws://127.0.0.1:9000/v1/realtime?model=x"
    assert "OpenAI-Beta" not in compatible.model_headers()


@pytest.mark.parametrize(
    "env, names",
    [
        ({"AUDIO_FORMAT": "opus"}, "AUDIO_FORMAT"),
        ({"VAD_THRESHOLD": "2"}, "VAD_THRESHOLD"),
        ({"VAD_SILENCE_DURATION_MS": "soon"}, "VAD_SILENCE_DURATION_MS"),
        ({"AGENT_SPEAKS_FIRST": "maybe"}, "AGENT_SPEAKS_FIRST"),
        ({"REALTIME_URL": "https://api.openai.com/v1/realtime"}, "REALTIME_URL"),
        ({"PUBLIC_URL": "ftp://x"}, "PUBLIC_URL"),
        ({"PORT": "70000"}, "PORT"),
    ],
)
def test_bad_values_name_the_variable(env, names):
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(env)


def test_twilio_credentials_never_travel_in_clear_text_off_this_machine():
    with pytest.raises(ConfigError, match="TWILIO_API_BASE_URL"):
        Settings.from_env({"TWILIO_API_BASE_URL": "http://evil.example.com"})
    assert Settings.from_env({"TWILIO_API_BASE_URL": "http://127.0.0.1:9999"}).twilio_api_base_url == "http://127.0.0.1:9999"


# --- Secrets never leak: repr(settings), str(settings) and ConfigError messages --------------------------

SAFE_SECRET = st.text(alphabet=string.ascii_letters + string.digits + "-_.~", min_size=8, max_size=40)


def _env_full_of(secret: str) -> dict[str, str]:
    """Every secret-bearing setting holds ``secret`` (padded where a minimum length applies)."""
    return {
        "OPENAI_API_KEY": secret,
        "TWILIO_AUTH_TOKEN": secret,
        "API_KEYS": f"{secret:x<16},{'k' * 16}",
        "STREAM_SECRET": f"{secret:s<32}",
        "REALTIME_URL": f"wss://user:{secret}@api.example.com/v1/realtime?api-key={secret}&model=m",
        "PUBLIC_URL": f"https://{secret}@gateway.example.com",
        "STORE_URL": f"postgresql://app:{secret}@db:5432/calls?password={secret}",
        "REDIS_URL": f"rediss://:{secret}@cache:6379/0",
        "TWILIO_API_BASE_URL": f"https://ACuser:{secret}@api.twilio.com?token={secret}",
    }


def test_repr_redacts_secrets_but_shows_they_are_set():
    secret = "hunter2hunter2hunter2hunter2hunter2"
    settings = Settings.from_env(_env_full_of(secret))
    assert settings.api_key == secret and settings.redis_url == f"rediss://:{secret}@cache:6379/0"
    for text in (repr(settings), str(settings), f"{settings}", f"{settings!r}"):
        assert secret not in text and "hunter2" not in text
        assert "api_key='***'" in text and "twilio_auth_token='***'" in text and "stream_secret='***'" in text
        assert "api_keys=('***', '***')" in text
        assert "redis_url='rediss://:***@cache:6379/0'" in text
        assert "store_url='postgresql://app:***@db:5432/calls?password=***'" in text
        assert "realtime_url='wss://user:***@api.example.com/v1/realtime?api-key=***&model=m'" in text
        assert "public_url='https://***@gateway.example.com'" in text
    unset = repr(Settings.from_env({}))
    assert "api_key=''" in unset and "api_keys=()" in unset and "realtime_url='wss://api.openai.com/v1/realtime'" in unset


_BASELINE_REPR = repr(Settings.from_env(_env_full_of("PLACEHOLDERplaceholderPLACEHOLDER")))


@hypothesis_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(SAFE_SECRET)
def test_no_secret_ever_appears_in_repr(secret):
    assume(secret not in _BASELINE_REPR)  # e.g. "realtime" is in the repr whatever the secrets are
    settings = Settings.from_env(_env_full_of(secret))
    assert secret not in repr(settings)
    assert secret not in str(settings)


@pytest.mark.parametrize(
    "redacted",
    [
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("redis://default:hunter2@cache:6379/0", "redis://default:***@cache:6379/0"),
        ("postgresql://app@db/calls", "postgresql://app@db/calls"),  # a user name alone is not a secret
        ("https://hunter2@example.com/x", "https://***@example.com/x"),  # ...but a web URL's may be a token
        ("wss://h/v1/realtime?api-key=hunter2&model=m", "wss://h/v1/realtime?api-key=***&model=m"),
        ("wss://h/v1/realtime?model=m", "wss://h/v1/realtime?model=m"),
        ("redis://:hun#ter2@cache:6379/0", "redis://***@cache:6379/0"),  # unescaped # in a password
        ("redis://:hun/ter2@cache:6379/0", "redis://***@cache:6379/0"),
        ("https://h/path#hunter2", "https://h/path#***"),
        ("hunter2", "***"),  # not a URL at all: maybe a pasted password
        ("host=db password=hunter2", "***"),
        ("", ""),
        ("sqlite:///calls.db", "sqlite:///calls.db"),
    ],
)
def test_redact_url(redacted):
    url, shown = redacted
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "env, name",
    [
        ({"REALTIME_URL": "https://user:hunter2@api.example.com/v1/realtime"}, "REALTIME_URL"),
        ({"REALTIME_URL": "wss://[::1/v1?api-key=hunter2"}, "REALTIME_URL"),
        ({"PUBLIC_URL": "ftp://user:hunter2@example.com"}, "PUBLIC_URL"),
        ({"STORE_URL": "mysql://app:hunter2@db/calls"}, "STORE_URL"),
        ({"STORE_URL": "host=db password=hunter2"}, "STORE_URL"),
        ({"REDIS_URL": "http://:hunter2@cache:6379/0"}, "REDIS_URL"),
        ({"REDIS_URL": "hunter2"}, "REDIS_URL"),
        ({"TWILIO_API_BASE_URL": "http://AC1:hunter2@evil.example.com"}, "TWILIO_API_BASE_URL"),
        ({"TWILIO_API_BASE_URL": "http://evil.example.com/?token=hunter2"}, "TWILIO_API_BASE_URL"),
        ({"REALTIME_URL": "ws://user:hunter2@10.0.0.5:9000/v1/realtime", "OPENAI_API_KEY": "sk-hunter2"},
         "REALTIME_URL"),
    ],
)
def test_bad_url_errors_never_quote_a_password(env, name):
    with pytest.raises(ConfigError, match=name) as caught:
        Settings.from_env(env)
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)


@hypothesis_settings(max_examples=100, deadline=None)
@given(SAFE_SECRET, st.sampled_from(["STORE_URL", "REDIS_URL", "PUBLIC_URL", "TWILIO_API_BASE_URL", "REALTIME_URL"]))
def test_no_password_ever_appears_in_a_url_error(password, name):
    # ftp:// is wrong for every URL setting.
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: f"ftp://user:{password}@host.example/path?key={password}"})
    assert password not in str(caught.value)


@pytest.mark.parametrize("host", ["10.0.0.5:9000", "models.internal", "[2001:db8::1]:9000", "localhost.evil.com"])
def test_clear_text_realtime_url_with_a_key_is_refused_off_this_machine(host):
    with pytest.raises(ConfigError, match="REALTIME_URL must be wss://"):
        Settings.from_env({"REALTIME_API_KEY": "sk-secret", "REALTIME_URL": f"ws://{host}/v1/realtime"})
    # Without a key there is nothing to leak; with wss:// the key is encrypted.
    assert Settings.from_env({"REALTIME_URL": f"ws://{host}/v1/realtime"}).uses_embedded_model
    assert Settings.from_env({"REALTIME_API_KEY": "sk-secret", "REALTIME_URL": f"wss://{host}/v1/realtime"}).api_key


@pytest.mark.parametrize("host", ["127.0.0.1:9000", "127.8.9.10", "[::1]:9000", "localhost:9000", "LOCALHOST"])
def test_clear_text_realtime_url_with_a_key_is_allowed_on_loopback(host):
    settings = Settings.from_env({"AZURE_OPENAI_API_KEY": "sk-secret", "REALTIME_URL": f"ws://{host}/v1/realtime"})
    assert settings.api_key == "sk-secret" and settings.realtime_url == f"ws://{host}/v1/realtime"


async def test_the_embedded_servers_session_limit_is_a_setting():
    from tests.conftest import start_gateway

    assert Settings.from_env({"LOCAL_SESSION_LIMIT_S": "5"}).local_session_limit_s == 5.0
    async with start_gateway(local_session_limit_s=5.0) as gateway:
        assert gateway.local_server.session_limit_s == 5.0


def test_a_worker_without_redis_or_twilio_credentials_does_not_load_their_clients():
    """The Redis client and the twilio REST client (with requests under it) cost a worker about 14 MB: only a
    deployment that configures them loads them (base RSS per worker)."""
    import subprocess
    import sys

    code = ("import sys, gateway.server.app, gateway.server.runner, gateway.media_stream; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'redis', 'requests', 'urllib3', 'scipy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"
