"""Settings from the environment: defaults that work offline, clear errors for bad values."""

import pytest

from gateway.config import ConfigError, Settings


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
    compatible = Settings.from_env({"REALTIME_API_KEY": "k", "REALTIME_URL": "ws://10.0.0.5:9000/v1/realtime?model=x"})
    assert compatible.model_connect_url() == "ws://10.0.0.5:9000/v1/realtime?model=x"
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
