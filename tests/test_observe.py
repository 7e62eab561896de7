"""Metrics, cost and budgets, end to end: scripted calls through the replay phone, then /metrics scraped and the
call's cost checked against a hand computation from the usage the embedded model reported."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from gateway.observe.cost import DEFAULT_PRICES, Usage, load_price_table, prices_for, PriceError
from gateway.observe.logs import CallContextFilter, JsonFormatter, TextFormatter, mask_number
from gateway.tooling.replay import CallerTurn, load_sample, run_call

from .conftest import PRICED_AS_GPT_REALTIME, start_gateway
from .helpers import calls_over, metric, metric_sample, scrape


def test_usage_follows_openais_billing_rule_and_prices_resolve_snapshots():
    usage = Usage.from_response({
        "input_token_details": {"text_tokens": 100, "audio_tokens": 1000, "cached_tokens": 300,
                                "cached_tokens_details": {"text_tokens": 50, "audio_tokens": 250}},
        "output_token_details": {"text_tokens": 20, "audio_tokens": 400},
    })
    assert usage.as_dict() == {"text_in": 50, "text_cached": 50, "text_out": 20, "audio_in": 750,
                               "audio_cached": 250, "audio_out": 400}
    prices = prices_for("gpt-realtime-2025-08-28", DEFAULT_PRICES)
    assert prices is DEFAULT_PRICES["gpt-realtime"]
    expected = (50 * 4 + 50 * 0.4 + 20 * 16 + 750 * 32 + 250 * 0.4 + 400 * 64) / 1e6
    assert usage.cost_usd(prices) == pytest.approx(expected)
    # Malformed usage is the model's word: counted as nothing, never a crash.
    assert Usage.from_response({"input_token_details": {"text_tokens": -5, "audio_tokens": "x"}}).as_dict() == Usage().as_dict()
    assert prices_for("unknown-model", DEFAULT_PRICES) is None


def test_prices_are_overridable_by_a_file_and_a_setting(tmp_path):
    table_file = tmp_path / "prices.json"
    table_file.write_text('{"my-model": {"text_in": 1, "text_cached": 0.1, "text_out": 2, "audio_in": 3, '
                          '"audio_cached": 0.3, "audio_out": 6}}')
    table = load_price_table(str(table_file), "audio_out=7", "my-model")
    assert table["my-model"].audio_out == 7 and table["my-model"].audio_in == 3
    with pytest.raises(PriceError):
        load_price_table("", "audio_out=lots", "gpt-realtime")
    bad = tmp_path / "bad.json"
    bad.write_text('{"m": {"audio_in": -1}}')
    with pytest.raises(PriceError):
        load_price_table(str(bad))


def test_phone_numbers_are_masked():
    assert mask_number("+14155550123") == "+1415*****23"
    assert mask_number("+14155550123", full=True) == "+14155550123"


def test_the_embedded_model_costs_nothing_unless_priced():
    free = prices_for("gpt-realtime", load_price_table("", "", "gpt-realtime", embedded=True))
    assert free is not None and Usage(text_in=10, audio_in=1000, audio_out=2000).cost_usd(free) == 0
    priced = prices_for("gpt-realtime", load_price_table("", "audio_out=64", "gpt-realtime", embedded=True))
    assert priced is not None and Usage(audio_out=1_000_000).cost_usd(priced) == 64


async def test_a_keyless_demo_call_counts_its_tokens_and_costs_nothing():
    async with start_gateway(store_url="memory://") as gw:  # no API key: the embedded model, default prices
        assert gw.state.settings.uses_embedded_model
        before = await scrape(gw.http_url)
        report = await run_call(gw.ws_url, [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)],
                                timeout_s=30, hangup_after_ms=500)
        await calls_over(gw)
        after = await scrape(gw.http_url)
        record = await gw.state.store.get_call(report.call_sid)
    assert metric(after, "gateway_model_tokens_total", kind="audio_out") > metric(before, "gateway_model_tokens_total",
                                                                               kind="audio_out")
    assert metric(after, "gateway_cost_usd_total") == metric(before, "gateway_cost_usd_total")
    assert record is not None and record.cost_usd == 0


async def test_a_scripted_call_shows_in_the_metrics_and_costs_what_its_usage_says():
    async with start_gateway(transcription_model="gpt-4o-mini-transcribe", model_prices=PRICED_AS_GPT_REALTIME) as gw:
        before = await scrape(gw.http_url)
        turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300),
                 CallerTurn(load_sample("caller_question"), after_silence_ms=2500)]
        report = await run_call(gw.ws_url, turns, timeout_s=40, hangup_after_ms=500)
        await calls_over(gw)
        after = await scrape(gw.http_url)
        sessions = list(gw.local_server.sessions)
        app_state = gw.app.state.gateway
    answered = sum(t.response_ms is not None for t in report.turns)
    assert answered == 2, report.turns

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("gateway_calls_total", direction="inbound", outcome="completed", ended_by="caller") == 1
    assert metric_sample(after, "gateway_calls_active") == 0
    assert delta("gateway_turn_latency_seconds_count") == answered
    assert delta("gateway_model_time_to_first_audio_seconds_count") >= answered
    assert delta("gateway_call_duration_seconds_count") == 1
    assert delta("gateway_frame_forward_delay_seconds_count", direction="to_model") > 100  # 20 ms frames
    assert delta("gateway_frame_forward_delay_seconds_count", direction="to_twilio") > 10
    # The cost, by hand, from what the embedded model reported in its response.done events.
    usage = Usage()
    for session in sessions:
        for response in session.responses:
            usage.add(Usage.from_response(response.get("usage")))
    expected = (usage.text_in * 4 + usage.text_out * 16 + usage.audio_in * 32 + usage.audio_out * 64) / 1e6
    assert expected > 0
    assert delta("gateway_cost_usd_total", model="gpt-realtime") == pytest.approx(expected, rel=1e-6)
    assert delta("gateway_model_tokens_total", kind="audio_out") == usage.audio_out
    assert app_state.budget is not None


async def test_metrics_can_require_a_key():
    async with start_gateway(metrics_api_key="metrics-secret-0123456789") as gw:
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            assert (await http.get("/metrics")).status_code == 401
            assert (await http.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
        await scrape(gw.http_url, Authorization="Bearer metrics-secret-0123456789")


async def test_the_call_budget_ends_the_call_after_the_goodbye_is_heard():
    # A budget far below one answer's cost: reached at the first response.done; the agent says goodbye.
    async with start_gateway(call_budget_usd=0.0001, model_prices=PRICED_AS_GPT_REALTIME) as gw:
        turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300),
                 CallerTurn(load_sample("caller_question"), after_silence_ms=8000)]
        report = await run_call(gw.ws_url, turns, timeout_s=40, hangup_after_ms=20_000)
        sessions = list(gw.local_server.sessions)
    # The call ended from the gateway's side, before the caller's second turn, after the goodbye played in full.
    assert report.ended_by in ("gateway_closed", "hangup_by_gateway"), report.ended_by
    instructions = [text for session in sessions for text in session.response_instructions.values()]
    assert any("used all the time it was allowed" in text for text in instructions), instructions
    assert report.violations == []
    goodbye = report.turns[0]
    assert goodbye.response_ms is not None


async def test_the_daily_budget_refuses_new_calls_politely():
    async with start_gateway(daily_budget_usd=0.0001, model_prices=PRICED_AS_GPT_REALTIME) as gw:
        report = await run_call(gw.ws_url, [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)],
                                timeout_s=30, hangup_after_ms=500)
        assert report.turns[0].response_ms is not None  # spends more than the whole day's budget
        await calls_over(gw)
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            twiml = (await http.post("/incoming-call", data={"CallSid": "CA" + "2" * 32})).text
        metrics_text = await scrape(gw.http_url)
    assert "<Say>" in twiml and "tomorrow" in twiml and "<Connect>" not in twiml, twiml
    assert metric(metrics_text, "gateway_refused_calls_total", reason="daily_budget") >= 1
    assert metric_sample(metrics_text, "gateway_daily_budget_used_ratio") >= 1


class _Lines(logging.Handler):
    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(formatter)
        self.addFilter(CallContextFilter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_log_lines_mask_numbers_and_stream_credentials_and_cannot_be_forged():
    record = logging.LogRecord("gateway.x", logging.INFO, __file__, 1,
                               "call from %s on %s\nFAKE LINE", ("+14155550123", "/media-stream/v1.i.CAxx.1.n.mac"), None)
    CallContextFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "call from +1415*****23 on /media-stream/<credential>\nFAKE LINE"
    text = TextFormatter().format(record)
    assert "\n" not in text and "+14155550123" not in text and "<credential>" in text
    assert "+14155550123" in JsonFormatter(full_numbers=True).format(record)


async def _json_lines_of_one_call(level: int) -> list[dict]:
    """The gateway's log lines, as JSON, of one short call through the replay phone."""
    handler = _Lines(JsonFormatter())
    handler.setLevel(level)
    logger = logging.getLogger("gateway")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        async with start_gateway() as gw:
            await run_call(gw.ws_url, [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)],
                           timeout_s=30, hangup_after_ms=500)
            await calls_over(gw)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return [json.loads(line) for line in handler.lines]


async def test_every_line_of_a_call_carries_its_sids_as_json():
    lines = await _json_lines_of_one_call(logging.INFO)
    ended = [line for line in lines if line["msg"].startswith("call ended")]
    assert ended and ended[0]["call_sid"].startswith("CA") and ended[0]["stream_sid"].startswith("MZ"), lines
    assert "cost_usd=" in ended[0]["msg"]


async def test_lines_logged_while_handling_frames_by_callback_carry_the_calls_sids():
    """Frames from both sockets are handled in the event loop's callbacks, not the call's tasks: what is logged
    there (the core's per-event debug lines) still names the call."""
    lines = await _json_lines_of_one_call(logging.DEBUG)
    events = [line for line in lines if line["msg"].startswith("call event") and "TranscriptReceived" in line["msg"]]
    assert events, "no per-event debug line was logged"
    assert all(line["call_sid"].startswith("CA") and line["stream_sid"].startswith("MZ") for line in events), events


async def test_traces_have_a_span_per_call_and_per_turn_when_configured():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gateway.observe import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure_tracing(provider)
    try:
        async with start_gateway() as gw:
            turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300),
                     CallerTurn(load_sample("caller_bargein"), after_silence_ms=1200)]
            report = await run_call(gw.ws_url, turns, timeout_s=30, hangup_after_ms=2500)
            await calls_over(gw)
    finally:
        tracing.configure_tracing(None)  # off again (no OTLP endpoint here)
    spans = exporter.get_finished_spans()
    calls = [s for s in spans if s.name == "call"]
    turn_spans = [s for s in spans if s.name == "turn"]
    assert len(calls) == 1 and calls[0].attributes["call.outcome"] == "completed"
    assert len(turn_spans) == sum(t.response_ms is not None for t in report.turns) >= 1
    assert all(s.parent.span_id == calls[0].context.span_id for s in turn_spans)
    assert all(s.attributes["turn.latency_ms"] > 0 for s in turn_spans[:1])
    assert all(calls[0].start_time <= s.start_time and s.end_time <= calls[0].end_time for s in turn_spans)
    if any(t.barge_in for t in report.turns):
        assert any(e.name == "barge_in" for e in calls[0].events)


async def test_audio_held_by_the_pacer_does_not_count_as_forwarding_delay():
    async with start_gateway() as gw:
        before = await scrape(gw.http_url)
        await run_call(gw.ws_url, [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)],
                       timeout_s=30, hangup_after_ms=500)
        await calls_over(gw)
        after = await scrape(gw.http_url)
    # The echo answer (~3 s of audio) is paced 500 ms ahead of playback: most chunks wait in the gateway on purpose.
    slow = (metric(after, "gateway_frame_forward_delay_seconds_count", direction="to_twilio")
            - metric(after, "gateway_frame_forward_delay_seconds_bucket", direction="to_twilio", le="0.1")) \
        - (metric(before, "gateway_frame_forward_delay_seconds_count", direction="to_twilio")
           - metric(before, "gateway_frame_forward_delay_seconds_bucket", direction="to_twilio", le="0.1"))
    assert slow == 0


def test_a_tallied_histogram_flushes_to_exactly_what_observing_one_by_one_gives() -> None:
    """The per-frame delay histograms are tallied and flushed (gateway.observe.metrics.TalliedHistogram): the buckets,
    count and sum Prometheus reads are those of plain observe() calls, bounds included."""
    from prometheus_client import CollectorRegistry, Histogram

    from gateway.observe.metrics import TalliedHistogram

    registry = CollectorRegistry()
    plain = Histogram("plain_seconds", "x", ["d"], buckets=(0.001, 0.01, 0.1), registry=registry).labels("a")
    tallied_parent = Histogram("tallied_seconds", "x", ["d"], buckets=(0.001, 0.01, 0.1), registry=registry)
    tallied = TalliedHistogram(tallied_parent.labels("a"))
    values = [0.0, 0.0005, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.100001, 3.0, 0.002] * 7
    for value in values:
        plain.observe(value)
        tallied.observe(value)
    assert registry.get_sample_value("tallied_seconds_count", {"d": "a"}) == 0  # nothing until flushed
    tallied.flush()
    tallied.flush()  # nothing more to add
    for suffix, le in [("_bucket", "0.001"), ("_bucket", "0.01"), ("_bucket", "0.1"), ("_bucket", "+Inf"),
                       ("_count", None), ("_sum", None)]:
        labels = {"d": "a", **({"le": le} if le else {})}
        assert registry.get_sample_value("tallied_seconds" + suffix, labels) == pytest.approx(
            registry.get_sample_value("plain_seconds" + suffix, labels)), (suffix, le)
