"""The console's views of many calls: the listing's sort orders and the overview's figures, one definition for every
backend (SQL for SQLite and PostgreSQL, a Python twin for the memory store, checked against each other by tests).

* Sorting (:data:`SORTS`): a whitelist, from a name the browser may send to an SQL expression written here; nothing
  the browser sends is ever put in SQL. NULLs sort as the smallest value in both dialects (``COALESCE``), ties by
  the newest call first. A sorted listing pages by offset (:data:`MAX_OFFSET` at most).
* The overview (:class:`Overview`): calls, outcomes, spend and barge-ins per hour (``GROUP BY`` in SQL, at most
  one row per hour and outcome), and the turn latency's p50 and p95 per bucket (an hour or a day) and over the
  range, by nearest rank (``ROW_NUMBER`` over the turns' latencies, the same rule as :func:`nearest_rank`). The
  range is bounded (:data:`MAX_RANGE_S`), so is every result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from gateway.store.model import (
    MAX_OFFSET, SORT_NAMES, CallQuery, CallRecord, call_barge_ins, call_latency_ms, nearest_rank,
)

HOUR_S, DAY_S = 3600, 86400
MAX_RANGE_S = 31 * DAY_S


def _duration(record: CallRecord) -> float:
    return record.ended_at - record.started_at if record.ended_at is not None and record.started_at is not None else -1


def _outcome(record: CallRecord) -> str:
    return record.outcome if record.outcome is not None else record.status if record.status is not None else ""


# name -> (SQL expression by dialect, the memory store's key); ties: created_at, call_sid, newest first.
SORTS: dict[str, tuple[dict[str, str], Callable[[CallRecord], Any]]] = {
    "started": ({"sqlite": "created_at", "postgresql": "created_at"}, lambda r: r.created_at),
    "duration": ({"sqlite": "COALESCE(ended_at - started_at, -1)", "postgresql": "COALESCE(ended_at - started_at, -1)"},
                 _duration),
    "cost": ({"sqlite": "COALESCE(cost_usd, -1)", "postgresql": "COALESCE(cost_usd, -1)"},
             lambda r: -1 if r.cost_usd is None else r.cost_usd),
    "latency": ({"sqlite": "COALESCE(latency_ms, -1)", "postgresql": "COALESCE(latency_ms, -1)"},
                lambda r: -1 if (value := call_latency_ms(r)) is None else value),
    "outcome": ({"sqlite": "COALESCE(outcome, status, '')", "postgresql": "COALESCE(outcome, status, '') COLLATE \"C\""},
                _outcome),
}
DEFAULT_SORT = "started"
assert tuple(SORTS) == SORT_NAMES and MAX_OFFSET


def order_by(query: CallQuery, dialect: str) -> str:
    """`` ORDER BY ...`` of ``query``'s sort, from the whitelist only."""
    expression = SORTS[query.sort][0][dialect]
    direction = "DESC" if query.descending else "ASC"
    return f" ORDER BY {expression} {direction}, created_at DESC, call_sid DESC"


def sort_records(records: Iterable[CallRecord], query: CallQuery) -> list[CallRecord]:
    """The memory store's twin of :func:`order_by` (Python's sort is stable: ties keep the newest-first order)."""
    newest_first = sorted(records, key=lambda r: (r.created_at, r.call_sid), reverse=True)
    return sorted(newest_first, key=SORTS[query.sort][1], reverse=query.descending)


# ---- the overview


@dataclass
class Bucket:
    """One hour or one day (``start``: epoch s, UTC-aligned)."""

    start: int
    calls: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    spend_usd: float = 0.0
    barge_ins: int = 0
    turns: int = 0  # turns with a measured latency
    p50_ms: float | None = None
    p95_ms: float | None = None

    def add(self, outcome: str, calls: int, spend: float, barge_ins: int) -> None:
        self.calls += calls
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + calls
        self.spend_usd += spend
        self.barge_ins += barge_ins


@dataclass
class Overview:
    """Figures of the calls created in [since, until): ``hours`` and ``days`` cover the range, empty ones included;
    the latency series is per ``bucket_s`` (an hour or a day); ``total`` is the whole range."""

    since: float
    until: float
    bucket_s: int
    total: Bucket
    hours: list[Bucket]
    days: list[Bucket]

    @property
    def latency(self) -> list[Bucket]:
        return self.hours if self.bucket_s == HOUR_S else self.days


def check_range(since: float, until: float, bucket_s: int) -> None:
    if not 0 < until - since <= MAX_RANGE_S:
        raise ValueError(f"the overview's range must be longer than 0 and at most {MAX_RANGE_S // DAY_S} days")
    if bucket_s not in (HOUR_S, DAY_S):
        raise ValueError("the overview's buckets are hours or days")


def _series(since: float, until: float, size: int) -> list[Bucket]:
    return [Bucket(start) for start in range(int(since // size) * size, int(until), size)]


def assemble(since: float, until: float, bucket_s: int, hourly: Iterable[tuple[int, str, int, float, int]],
             latencies: Iterable[tuple[int | None, int, float | None, float | None]]) -> Overview:
    """The overview from rows: ``hourly`` (hour index, outcome, calls, spend, barge-ins), ``latencies`` (bucket index
    or None for the whole range, turns, p50, p95)."""
    hours, days = _series(since, until, HOUR_S), _series(since, until, DAY_S)
    total = Bucket(int(since))
    by_hour = {bucket.start: bucket for bucket in hours}
    by_day = {bucket.start: bucket for bucket in days}
    for hour, outcome, calls, spend, barge_ins in hourly:
        start = int(hour) * HOUR_S
        values = (str(outcome), int(calls), float(spend or 0), int(barge_ins or 0))
        for bucket in (by_hour.get(start), by_day.get(start // DAY_S * DAY_S), total):
            if bucket is not None:
                bucket.add(*values)
    series = by_hour if bucket_s == HOUR_S else by_day
    for index, turns, p50, p95 in latencies:
        bucket = total if index is None else series.get(int(index) * bucket_s)
        if bucket is not None:
            bucket.turns, bucket.p50_ms, bucket.p95_ms = int(turns), p50, p95
    return Overview(since, until, bucket_s, total, hours, days)


def overview_of_records(records: Iterable[CallRecord], since: float, until: float, bucket_s: int) -> Overview:
    """The memory store's overview: the same figures as :func:`overview_sql`'s, from records in hand."""
    check_range(since, until, bucket_s)
    hourly: dict[tuple[int, str], list[Any]] = {}
    turns: dict[int | None, list[float]] = {None: []}
    for record in records:
        if not since <= record.created_at < until:
            continue
        row = hourly.setdefault((int(record.created_at // HOUR_S), _outcome(record) or "unknown"), [0, 0.0, 0])
        row[0] += 1
        row[1] += record.cost_usd or 0.0
        row[2] += call_barge_ins(record)
        measured = [float(turn.latency_ms) for turn in record.turns if turn.latency_ms is not None]
        turns[None].extend(measured)
        turns.setdefault(int(record.created_at // bucket_s), []).extend(measured)
    return assemble(since, until, bucket_s, [(h, o, *row) for (h, o), row in hourly.items()],
                    [(index, len(values), nearest_rank(values, 50), nearest_rank(values, 95))
                     for index, values in turns.items() if values or index is None])


# SQL, for a WHERE clause from CallQuery.where (the range and the key's scope); {bucket} is a whitelisted number.
_BUCKET = {"sqlite": "CAST(created_at / {size} AS INTEGER)", "postgresql": "FLOOR(created_at / {size})::bigint"}
_HOURLY = ("SELECT {hour} AS hour, COALESCE(outcome, status, 'unknown') AS outcome, COUNT(*), "
           "COALESCE(SUM(cost_usd), 0), COALESCE(SUM(barge_ins), 0) FROM calls{where} GROUP BY 1, 2")
_TURN_LATENCIES = {
    "sqlite": "SELECT {bucket} AS bucket, CAST(json_extract(t.value, '$.latency_ms') AS REAL) AS ms "
              "FROM (SELECT created_at, turns FROM calls{where}) AS c, json_each(c.turns) AS t "
              "WHERE json_valid(c.turns) AND json_extract(t.value, '$.latency_ms') IS NOT NULL",
    "postgresql": "SELECT {bucket} AS bucket, (t.value->>'latency_ms')::double precision AS ms "
                  "FROM (SELECT created_at, turns FROM calls{where}) AS c, jsonb_array_elements(CASE WHEN "
                  "jsonb_typeof(c.turns) = 'array' THEN c.turns ELSE '[]'::jsonb END) AS t(value) "
                  "WHERE t.value->>'latency_ms' IS NOT NULL",
}
# Nearest rank: the value of rank ceil(p * n / 100), in integer arithmetic (the same in both dialects).
_PERCENTILES = ("SELECT bucket, n, MAX(CASE WHEN rn = (50 * n + 99) / 100 THEN ms END), "
                "MAX(CASE WHEN rn = (95 * n + 99) / 100 THEN ms END) FROM ("
                "SELECT bucket, ms, ROW_NUMBER() OVER (PARTITION BY bucket ORDER BY ms) AS rn, "
                "COUNT(*) OVER (PARTITION BY bucket) AS n FROM ({turns}) AS l) AS r GROUP BY bucket, n")


def overview_sql(dialect: str, query: CallQuery, bucket_s: int) -> list[tuple[str, list[Any]]]:
    """The overview's statements with their parameters: hourly figures, latency per bucket, latency overall."""
    placeholder = "?" if dialect == "sqlite" else "%s"
    where, params = query.where(placeholder)
    hour = _BUCKET[dialect].format(size=HOUR_S)
    per_bucket = _TURN_LATENCIES[dialect].format(bucket=_BUCKET[dialect].format(size=int(bucket_s)), where=where)
    overall = _TURN_LATENCIES[dialect].format(bucket="NULL", where=where)
    return [(_HOURLY.format(hour=hour, where=where), params),
            (_PERCENTILES.format(turns=per_bucket), params),
            (_PERCENTILES.format(turns=overall), params)]


def overview_query(since: float, until: float, api_key_id: str | None, bucket_s: int) -> CallQuery:
    check_range(since, until, bucket_s)
    return CallQuery(since=since, until=until, api_key_id=api_key_id)


def overview_from_rows(since: float, until: float, bucket_s: int, results: list[list[Any]]) -> Overview:
    hourly, per_bucket, overall = results
    latencies = [(row[0], row[1], row[2], row[3]) for row in per_bucket]
    latencies += [(None, row[1], row[2], row[3]) for row in overall] or [(None, 0, None, None)]
    return assemble(since, until, bucket_s, [tuple(row) for row in hourly], latencies)
