"""The gateway's Prometheus metrics (``prometheus-client``) and the ``/metrics`` endpoint.

Every metric is named ``gateway_*``. Label values come from small fixed sets or pass through :func:`label`, which
caps how many distinct values one label may take (a hostile peer must not grow the metrics without bound).

Several worker processes (``gateway serve --workers N``) share one view when ``PROMETHEUS_MULTIPROC_DIR`` names
a directory before the gateway starts (``gateway serve`` sets one up for its workers): each process writes its
samples there and ``/metrics`` adds them up (``prometheus_client.multiprocess``).
"""

from __future__ import annotations

import bisect
import hmac
import os
import threading
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import REGISTRY
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

MAX_LABEL_VALUES = 40  # distinct values one label of one metric may take; the rest are "other"
_LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)

CALLS_ACTIVE = Gauge("gateway_calls_active", "Calls in progress (media streams open).", multiprocess_mode="livesum")
CALLS = Counter("gateway_calls_total", "Calls ended, by direction and outcome.", ["direction", "outcome", "ended_by"])
CALL_DURATION = Histogram("gateway_call_duration_seconds", "Call length, from the stream's start to its end.",
                          buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200))
TURN_LATENCY = Histogram("gateway_turn_latency_seconds",
                         "From the caller's end of speech (the model's speech_stopped) to the first agent audio "
                         "sent to Twilio.", buckets=_LATENCY_BUCKETS)
MODEL_TTFA = Histogram("gateway_model_time_to_first_audio_seconds",
                       "From response.created to the response's first audio.", buckets=_LATENCY_BUCKETS)
BARGE_IN_REACTION = Histogram("gateway_barge_in_reaction_seconds",
                              "From the model's speech_started to the clear written to Twilio.", buckets=_FAST_BUCKETS)
BARGE_INS = Counter("gateway_barge_ins_total", "Agent audio interrupted by the caller (items cut).")
BARGE_IN_UNHEARD = Histogram("gateway_barge_in_unheard_seconds",
                             "Agent audio sent to Twilio but never heard, cut at a barge-in.",
                             buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
FRAME_DELAY = Histogram("gateway_frame_forward_delay_seconds",
                        "From a frame's arrival to the write of what it became, per direction.", ["direction"],
                        buckets=_FAST_BUCKETS)


class TalliedHistogram:
    """One histogram child observed for every frame, tallied here and added to the child by :meth:`flush`.

    ``Histogram.observe`` takes two locks and walks the buckets (about 2 us, twice per frame); this keeps a count
    per bucket (a bisect into the same bounds) and a sum, and :func:`flush_tallies` adds them to the child in one go:
    every call's clock does, once a second, and so does a scrape of ``/metrics``, so what Prometheus reads is the
    same histogram, at most a second late. It uses the child's ``_sum`` and ``_buckets`` (prometheus-client keeps a
    non-cumulative count per bucket); ``tests/test_observe.py`` checks the result equals observing one by one."""

    __slots__ = ("_child", "_bounds", "_counts", "_sum", "_any")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds = list(child._upper_bounds)  # the last is +Inf
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._any = False

    def observe(self, amount: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, amount)] += 1  # the first bound >= amount
        self._sum += amount
        self._any = True

    def flush(self) -> None:
        if not self._any:
            return
        counts, self._counts = self._counts, [0] * len(self._bounds)
        total, self._sum, self._any = self._sum, 0.0, False
        self._child._sum.inc(total)
        for bucket, count in zip(self._child._buckets, counts):
            if count:
                bucket.inc(count)


FRAME_DELAY_TO_MODEL = TalliedHistogram(FRAME_DELAY.labels("to_model"))  # observed for every frame
FRAME_DELAY_TO_TWILIO = TalliedHistogram(FRAME_DELAY.labels("to_twilio"))
_TALLIES = (FRAME_DELAY_TO_MODEL, FRAME_DELAY_TO_TWILIO)


def flush_tallies() -> None:
    """Add what the per-frame histograms tallied to the metrics (a call's clock, once a second; a scrape)."""
    for tally in _TALLIES:
        tally.flush()
MARKS_PENDING = Gauge("gateway_marks_pending", "Marks sent to Twilio and not yet echoed.", multiprocess_mode="livesum")
MODEL_RECONNECTS = Counter("gateway_model_reconnects_total", "Model sessions lost and replaced, by cause.", ["cause"])
MODEL_ROLLOVERS = Counter("gateway_model_rollovers_total", "Model sessions replaced ahead of their limit.", ["cause"])
DROPPED = Counter("gateway_dropped_frames_total", "Frames dropped at the edge, by source and reason.",
                  ["source", "reason"])
RECORDINGS_OVER_QUOTA = Counter("gateway_recordings_over_quota_total", "Recordings given up because "
                                "RECORD_TOTAL_MAX_BYTES was reached: not_started, truncated, wav_skipped.", ["what"])
REFUSED_STREAMS = Counter("gateway_refused_streams_total", "Media stream upgrades refused, by reason.", ["reason"])
REFUSED_CALLS = Counter("gateway_refused_calls_total", "Calls answered with a polite refusal, by reason.", ["reason"])
REFUSED_CONNECTIONS = Counter("gateway_refused_connections_total",
                              "Sockets closed at once (or requests refused, behind a trusted proxy) past a connection "
                              "cap, by reason (gateway.server.connection_caps).", ["reason"])
TOOL_CALLS = Counter("gateway_tool_calls_total", "Tool calls, by tool and outcome.", ["tool", "outcome"])
TOOL_DURATION = Histogram("gateway_tool_duration_seconds", "Tool run time.", ["tool"],
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
TOKENS = Counter("gateway_model_tokens_total", "Model tokens, by model and kind.", ["model", "kind"])
COST = Counter("gateway_cost_usd_total", "Model cost in USD, by model.", ["model"])
CALL_COST = Histogram("gateway_call_cost_usd", "Cost of one call in USD.",
                      buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 25))
DAILY_BUDGET_USED = Gauge("gateway_daily_budget_used_ratio", "Today's cost as a fraction of DAILY_BUDGET_USD.",
                          multiprocess_mode="max")
UVICORN_FALLBACK = Gauge("gateway_uvicorn_fallback",
                         "1 when the installed uvicorn lacks a private name a part of the gateway relies on "
                         "(direct_ws, http, server) and that part runs on uvicorn's plain protocol instead.",
                         ["part"], multiprocess_mode="livemax")
DRAINING = Gauge("gateway_draining", "1 while this process drains (SIGTERM): no new calls, live ones go on.",
                 multiprocess_mode="max")
BUDGET_STOPS = Counter("gateway_budget_stops_total", "Calls wrapped up (call) or refused (daily) by a budget.",
                       ["scope"])
SHARED_STATE_UP = Gauge("gateway_shared_state_up", "1 while the shared state (REDIS_URL, STATE_SQLITE_PATH) answers "
                        "reads and writes of the daily cost total, 0 while it does not.", multiprocess_mode="livemin")
DAILY_COST_UNWRITTEN = Gauge("gateway_daily_cost_unwritten_usd", "Cost counted by this process and not yet written to "
                             "the shared daily total (the state did not answer); written when it does.",
                             multiprocess_mode="livesum")
RECORDS_SPOOLED = Counter("gateway_call_records_spooled_total", "Call record writes the store did not take, kept in "
                          "the local spool (RECORD_SPOOL_DIR) until it is back, by operation (start, finish).", ["op"])
RECORDS_REPLAYED = Counter("gateway_call_records_replayed_total", "Spooled call record writes written to the store.")
RECORDS_LOST = Counter("gateway_call_records_lost_total", "Call record writes lost: not taken by the store and not "
                       "spooled (spool full or unwritable), or unreadable in the spool, by reason.", ["reason"])
CALLS_MARKED_LOST = Counter("gateway_calls_marked_lost_total", "Records of calls whose holding instance stopped "
                            "before their end was written, marked lost.")
CONSOLE_RELAY_DROPPED = Counter("gateway_console_relay_dropped_total", "Live-view events of this instance's calls not "
                                "relayed to the other instances' consoles (queue full, or the shared state did not "
                                "answer); the calls are not affected.")

_seen: dict[tuple[str, str], set[str]] = {}
_seen_lock = threading.Lock()


def label(metric: str, name: str, value: str) -> str:
    """``value`` as a label value, or "other" once this label has taken MAX_LABEL_VALUES distinct values."""
    value = value[:60] or "none"
    key = (metric, name)
    with _seen_lock:
        seen = _seen.setdefault(key, set())
        if value in seen:
            return value
        if len(seen) >= MAX_LABEL_VALUES:
            return "other"
        seen.add(value)
        return value


def cause(reason: str) -> str:
    """A short cause for a model session's end: ``code 1001``, ``TimeoutError``, ``ConnectionClosedError``..."""
    return reason.split(":", 1)[0].strip()[:40] or "unknown"


def registry() -> CollectorRegistry:
    """The registry to expose: the process's own, or the sum over worker processes."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return REGISTRY
    from prometheus_client import multiprocess

    from gateway.observe.process_metrics import WorkerProcessCollector

    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined, path=directory)
    combined.register(WorkerProcessCollector(directory))  # process_* per worker, which the directory does not hold
    return combined


def metrics_endpoint(api_key: str = "") -> Callable[[Request], Awaitable[Response]]:
    """``GET /metrics``; with ``api_key`` (``METRICS_API_KEY``) it wants ``Authorization: Bearer <key>``."""

    async def metrics(request: Request) -> Response:
        if api_key:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return PlainTextResponse("metrics need Authorization: Bearer <METRICS_API_KEY>\n", status_code=401,
                                         headers={"WWW-Authenticate": "Bearer"})
        flush_tallies()
        return Response(generate_latest(registry()), media_type=CONTENT_TYPE_LATEST)

    return metrics
