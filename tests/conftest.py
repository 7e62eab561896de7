"""Shared fixtures: a real gateway under uvicorn on 127.0.0.1 with the embedded Realtime server behind it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator

import pytest

from gateway.server.app import create_app
from gateway.call import Call, CallEvent
from gateway.config import Settings
from gateway.server.runner import running_app


# The embedded model costs nothing; tests of cost accounting price it as gpt-realtime (USD per million tokens).
PRICED_AS_GPT_REALTIME = "text_in=4,text_cached=0.4,text_out=16,audio_in=32,audio_cached=0.4,audio_out=64"


@dataclass
class GatewayUnderTest:
    http_url: str
    app: Any
    events: list[tuple[str, CallEvent]] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return self.http_url.replace("http://", "ws://") + "/media-stream"

    @property
    def state(self) -> Any:
        return self.app.state.gateway

    @property
    def local_server(self) -> Any:
        return self.state.local_server

    def of_type(self, kind: type) -> list[Any]:
        return [event for _, event in self.events if isinstance(event, kind)]


@contextlib.asynccontextmanager
async def start_gateway(**overrides: Any) -> AsyncIterator[GatewayUnderTest]:
    """The gateway with the embedded model (no API key); ``overrides`` are Settings fields."""
    overrides.setdefault("store_url", "memory://")  # a test's records stay in the test (SQLite is the default)
    settings = replace(Settings.from_env({}), **overrides)
    holder: list[GatewayUnderTest] = []

    def observe(call: Call, event: CallEvent) -> None:
        holder[0].events.append((call.call_sid, event))

    app = create_app(settings, observer=observe)
    async with running_app(app) as http_url:
        running = GatewayUnderTest(http_url, app)
        holder.append(running)
        local_server = running.local_server
        if local_server is not None:
            # Every event the embedded model sends is checked against the official openai models.
            local_server.validate_events = True
        yield running
        if local_server is not None:
            assert local_server.validation_failures == [], local_server.validation_failures


@pytest.fixture
async def gateway() -> AsyncIterator[GatewayUnderTest]:
    async with start_gateway() as running:
        yield running


# Modules whose tests all start no server (no gateway, no embedded model, no subprocess serving) and wait for no
# real time: the `fast` marker (`pytest -m fast`, under a minute in all; CI runs them on the minimum versions too).
# A module joins when every test in it is such a test; a fast test elsewhere carries @pytest.mark.fast itself.
FAST_MODULES = frozenset({
    "test_audio", "test_audio_passthrough", "test_audio_polyphase", "test_call", "test_call_contracts",
    "test_call_reconnect", "test_logsafe", "test_messages", "test_outbox", "test_properties_api",
    "test_properties_edge", "test_properties_security", "test_settings_declared", "test_store_figures",
    "test_store_spool",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in FAST_MODULES:
            item.add_marker(pytest.mark.fast)


@pytest.fixture(scope="session", autouse=True)
def _load_openai_models_before_any_call(request: pytest.FixtureRequest) -> None:
    """Importing openai and building its models takes seconds; do it once, before a call's clock runs,
    so the first validated event of the run does not stall a live call's event loop."""
    if all(item.get_closest_marker("fast") for item in request.session.items):
        return  # no call in this run (pytest -m fast): nothing to warm up
    from gateway.local.schema import EventSchemaError, validate_server_event

    try:
        validate_server_event({"type": "input_audio_buffer.cleared", "event_id": "event_warm"})
    except EventSchemaError:
        pass
