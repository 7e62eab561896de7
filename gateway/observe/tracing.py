"""OpenTelemetry traces: a span per call, with a child span per turn (the model's time to first audio), per
tool run, and an event per barge-in.

Off and free unless configured: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set (the standard OpenTelemetry variable;
``OTEL_SERVICE_NAME`` too), :func:`configure_tracing` installs the SDK with a batching OTLP/HTTP exporter.
Otherwise no tracer is made and a span costs a test of None; OpenTelemetry (the ``otel`` extra) is imported only
when traces are on. Tests install the SDK with an in-memory exporter through :func:`configure_tracing`
(``provider=``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("gateway.tracing")

_tracer: Any = None


def configure_tracing(provider: Any = None) -> bool:
    """Install ``provider`` (or, when OTEL_EXPORTER_OTLP_ENDPOINT is set, the SDK's with an OTLP exporter).
    True when traces are on."""
    global _tracer
    if provider is None:
        setting = next((name for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                        if os.environ.get(name)), None)
        if setting is None:
            _tracer = None
            return False
        from gateway.extras import require

        require("otel", setting)  # the OpenTelemetry SDK and exporter: the otel extra
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "gateway")}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        log.info("traces go to %s", os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                 or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    _tracer = provider.get_tracer("gateway")
    return True


_configured = False


def configure_tracing_once() -> None:
    """At start-up: traces on when OTEL_EXPORTER_OTLP_ENDPOINT is set; a provider a test installed stays."""
    global _configured
    if not _configured and _tracer is None:
        configure_tracing()
    _configured = True


def _ns(monotonic_ms: float, offset_ns: int) -> int:
    return int(monotonic_ms * 1_000_000) + offset_ns


class CallTrace:
    """The spans of one call; times are the core's monotonic milliseconds, mapped onto the wall clock."""

    def __init__(self) -> None:
        self._tracer = _tracer
        self._call: Any = None
        self._context: Any = None
        self._offset_ns = 0

    @property
    def on(self) -> bool:
        return self._tracer is not None

    def started(self, call_sid: str, stream_sid: str, direction: str, now_ms: float) -> None:
        if self._tracer is None:
            return
        import time

        self._offset_ns = time.time_ns() - int(now_ms * 1_000_000)
        self._call = self._tracer.start_span(
            "call", start_time=_ns(now_ms, self._offset_ns),
            attributes={"call.sid": call_sid, "call.stream_sid": stream_sid, "call.direction": direction})
        from opentelemetry import trace  # installed: a tracer is (the otel extra, or a test's provider)

        self._context = trace.set_span_in_context(self._call)

    def turn(self, start_ms: float, end_ms: float, attributes: dict[str, Any]) -> None:
        self._child("turn", start_ms, end_ms, attributes)

    def tool(self, name: str, start_ms: float, end_ms: float, outcome: str) -> None:
        self._child("tool", start_ms, end_ms, {"tool.name": name, "tool.outcome": outcome})

    def _child(self, name: str, start_ms: float, end_ms: float, attributes: dict[str, Any]) -> None:
        if self._call is None:
            return
        span = self._tracer.start_span(name, context=self._context, start_time=_ns(start_ms, self._offset_ns),
                                       attributes={k: v for k, v in attributes.items() if v is not None})
        span.end(end_time=_ns(end_ms, self._offset_ns))

    def event(self, name: str, now_ms: float, attributes: dict[str, Any]) -> None:
        if self._call is not None:
            self._call.add_event(name, attributes, timestamp=_ns(now_ms, self._offset_ns))

    def finished(self, now_ms: float, attributes: dict[str, Any]) -> None:
        if self._call is None:
            return
        self._call.set_attributes({k: v for k, v in attributes.items() if v is not None})
        self._call.end(end_time=_ns(now_ms, self._offset_ns))
        self._call = None
