"""The console's listing of past calls: its query parameters, its pages and its CSV export.

The filters and paging are the API's (``GET /calls``, :func:`gateway.api.requests.parse_call_query`); the console
adds ``sort`` (one of :data:`gateway.store.model.SORT_NAMES`, a whitelist: the store holds the SQL of each),
``order`` (``asc``/``desc``) and ``offset`` (the pages of a sorted listing). Anything else in them is a 400.

The CSV export (``/console/calls.csv``) holds the calls of the current filter and sort, scoped like the listing,
at most :data:`CSV_MAX_ROWS` of them, read page by page. Its cells are guarded against formula injection: a cell
that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'`` (a spreadsheet then
shows it as text; caller numbers such as ``+14155550100`` included).
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from typing import Any, AsyncIterator

from gateway.api.errors import ApiError
from gateway.api.requests import parse_call_query
from gateway.store import MAX_PAGE_SIZE, CallQuery, CallRecord
from gateway.store.model import MAX_OFFSET, SORT_NAMES, call_barge_ins, call_latency_ms
from gateway.store.model import _iso as iso_utc

ORDERS = {"asc": False, "desc": True}
CONSOLE_PARAMETERS = ("sort", "order", "offset")
CSV_MAX_ROWS = 10_000
NOT_EXPORTED = ("cursor", "offset", "limit")  # the export is every matching call, not the listing's page
CSV_COLUMNS = ("call_sid", "started_at_utc", "ended_at_utc", "direction", "from", "to", "outcome", "status",
               "ended_by", "end_reason", "turns", "barge_ins", "latency_ms", "duration_s", "cost_usd", "model",
               "recording")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _bad(name: str, message: str) -> ApiError:
    return ApiError(400, "invalid_parameter", f"{name}: {message}", fields=[name])


def parse_listing(params: dict[str, str], api_key_id: str | None) -> CallQuery:
    """The listing's parameters (the API's filters, plus sort, order and offset) as a CallQuery, or ApiError 400."""
    own = {name: params[name] for name in CONSOLE_PARAMETERS if name in params}
    query = parse_call_query([(n, v) for n, v in params.items() if n not in own], api_key_id=api_key_id)
    sort = own.get("sort", "started")
    if sort not in SORT_NAMES:
        raise _bad("sort", f"must be one of {', '.join(SORT_NAMES)}")
    order = own.get("order", "desc")
    if order not in ORDERS:
        raise _bad("order", "must be asc or desc")
    raw = own.get("offset", "0")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 5 and int(raw) <= MAX_OFFSET):
        raise _bad("offset", f"must be a whole number from 0 to {MAX_OFFSET}")
    query = replace(query, sort=sort, descending=ORDERS[order], offset=int(raw))
    return replace(query, after=None) if query.by_offset else query


def next_page(params: dict[str, str], page: Any) -> dict[str, str] | None:
    """The query string of the listing's next page, or None."""
    if page.next_cursor is None and page.next_offset is None:
        return None
    following = {name: value for name, value in params.items() if name not in ("cursor", "offset")}
    if page.next_offset is not None:
        following["offset"] = str(page.next_offset)
    else:
        following["cursor"] = page.next_cursor
    return following


def csv_cell(value: Any) -> str:
    """A cell's text, with a leading ``'`` if a spreadsheet would read it as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def csv_row(record: CallRecord) -> list[str]:
    duration = (round(record.ended_at - record.started_at, 3)
                if record.ended_at is not None and record.started_at is not None else None)
    values = (record.call_sid, iso_utc(record.started_at if record.started_at is not None else record.created_at),
              iso_utc(record.ended_at), record.direction, record.from_, record.to, record.outcome, record.status,
              record.ended_by, record.end_reason, len(record.turns) + record.turns_not_recorded,
              call_barge_ins(record), call_latency_ms(record), duration, record.cost_usd, record.model,
              "yes" if record.recording else "no")
    return [csv_cell(value) for value in values]


def _line(cells: list[str] | tuple[str, ...]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue()


async def csv_lines(store: Any, query: CallQuery) -> AsyncIterator[str]:
    """The CSV, a page of records at a time: the header, then at most CSV_MAX_ROWS rows."""
    yield _line(CSV_COLUMNS)
    query = replace(query, limit=MAX_PAGE_SIZE, after=None, offset=0)
    written = 0
    while written < CSV_MAX_ROWS:
        page = await store.list_calls(query)
        rows = page.records[:CSV_MAX_ROWS - written]
        if rows:
            yield "".join(_line(csv_row(record)) for record in rows)
        written += len(rows)
        if page.next_offset is not None:
            query = replace(query, offset=page.next_offset)
        elif page.next_cursor is not None and not query.by_offset:
            query = replace(query, after=(page.records[-1].created_at, page.records[-1].call_sid))
        else:
            return
