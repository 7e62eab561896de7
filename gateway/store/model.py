"""What the store keeps, and the rules every backend shares: pure data and pure functions, no I/O.

* :class:`OutboundCallSettings`: what ``POST /calls`` asked for, saved under the CallSid until the call's stream
  takes it (once), or it expires (:func:`settings_expiry`, :func:`settings_alive`).
* :class:`CallRecord`: one call, inbound or outbound. Twilio's status callbacks move its ``status`` forward only
  (:func:`next_status`); the live call writes the rest at its end (:func:`merge_final`): SIDs, start and end, the
  outcome and who ended it, the turns (:class:`Turn`), the tool runs (:class:`ToolRun`), the model sessions'
  reconnects and rollovers (:class:`SessionChange`), token usage and cost. Its start (:func:`merge_start`: in
  progress, the instance holding the call) and, when that instance died, the lost mark (:func:`merge_lost`) are
  merges too: each is idempotent, and none undoes a later state.
* :class:`CallQuery`: the filters and the page of ``GET /calls``, with the opaque cursor (:func:`encode_cursor`).
  SQL backends turn it into a WHERE clause (:meth:`CallQuery.where`), the memory backend into a predicate
  (:meth:`CallQuery.matches`): one definition of what a filter means.
* :func:`record_columns` / :func:`record_from_columns`: a record as table columns and back. The scalar fields live
  in the JSON ``data`` column (as they always have), copied into plain columns that listing filters and sorts on;
  the structured parts (turns, tool calls, reconnects, rollovers, usage) have JSON columns of their own.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

DEFAULT_SETTINGS_TTL_S = 1800.0  # a call queued, rung and answered within half an hour
DEFAULT_MAX_SETTINGS = 10_000
DEFAULT_MAX_CALLS = 10_000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
SORT_NAMES = ("started", "duration", "cost", "latency", "outcome")  # the SQL of each: gateway.store.figures.SORTS
MAX_OFFSET = 10_000  # a sorted listing's deepest page starts here (narrow the filter to see further)

MACHINE_DETECTION_CHOICES = ("none", "hangup", "voicemail")
FINAL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
# "lost": the instance holding the call stopped (killed, crashed) before its end was written (see merge_lost). It
# ranks after in-progress and before the final statuses: Twilio's own final status of the call (an outbound call's
# status callback) still wins, and so does the live call's final record (merge_final) if it was not lost after all.
LOST = "lost"
_STATUS_RANK = {"queued": 0, "initiated": 1, "ringing": 2, "in-progress": 3, LOST: 3.5}
CALL_STATUSES = tuple(_STATUS_RANK) + tuple(sorted(FINAL_STATUSES))
# Twilio's own words: "inbound" for a call to one of our numbers, "outbound-api" for one POST /calls placed.
INBOUND = "inbound"
OUTBOUND_API = "outbound-api"
DIRECTION_FILTERS = ("inbound", "outbound")
# Who ended a call (``CallRecord.ended_by``); the live call may add its own words (short, lowercase).
ENDED_BY = ("caller", "agent", "api", "error", "budget", "drain", "time_limit", "machine", "twilio")


def status_rank(status: str) -> float:
    return 4 if status in FINAL_STATUSES else _STATUS_RANK.get(status, -1)


def next_status(current: str, new: str) -> str:
    """``new`` if it moves the call forward, else ``current`` (out-of-order callbacks; the first final status wins)."""
    if current in FINAL_STATUSES:
        return current
    return new if status_rank(new) >= status_rank(current) else current


def settings_expiry(now: float, ttl_s: float) -> float:
    """When settings saved at ``now`` expire."""
    return now + ttl_s


def settings_alive(expires_at: float, now: float) -> bool:
    """Settings are usable strictly before their expiry (at ``expires_at`` they are gone)."""
    return expires_at > now


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``data`` that are fields of ``cls``: a record written by a newer version still loads."""
    names = {f.name for f in fields(cls)}
    return {name: value for name, value in data.items() if name in names}


@dataclass(frozen=True, slots=True)
class OutboundCallSettings:
    """What ``POST /calls`` asked for; None / empty means "the gateway's default"."""

    to: str
    from_: str
    instructions: str | None = None
    voice: str | None = None
    greeting: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    machine_detection: str = "none"  # "none" | "hangup" | "voicemail"
    api_key_id: str | None = None  # the key that placed the call (its id, never the key): only it may see the call
    record: bool | None = None  # record the call's audio (gateway.recordings.wav); None: RECORD_AUDIO decides

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "OutboundCallSettings":
        return cls(**_known(cls, data))


@dataclass(frozen=True, slots=True)
class Turn:
    """One exchange: what the caller said, what the agent said of it that the caller heard, and how fast."""

    caller_transcript: str | None = None  # None when transcription is off (TRANSCRIPTION_MODEL unset)
    agent_transcript: str = ""  # cut to what was heard when the caller barged in
    latency_ms: int | None = None  # caller stopped speaking -> first agent audio sent to Twilio
    model_ttfa_ms: int | None = None  # response asked -> the model's first audio
    barged_in: bool = False  # the caller spoke over the agent, which was cut
    t_ms: int | None = None  # when the turn began, in ms since the call started
    heard_ms: int | None = None  # agent audio the caller heard, in ms
    response_id: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Turn":
        return cls(**_known(cls, data))


@dataclass(frozen=True, slots=True)
class ToolRun:
    """One tool call by the agent."""

    name: str
    outcome: str = "ok"  # "ok" | "error" | "timeout" | "cancelled" ...
    duration_ms: int | None = None
    t_ms: int | None = None  # when it was called, in ms since the call started
    arguments: str | None = None  # the model's arguments (JSON text), cut to MAX_TOOL_TEXT characters
    result: str | None = None  # what the tool returned to the model, cut the same way

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ToolRun":
        return cls(**_known(cls, data))


MAX_TOOL_TEXT = 2000  # characters of a tool run's arguments and of its result kept in the record


def tool_text(value: Any) -> str | None:
    """A tool run's arguments or result as the record keeps it: text, at most MAX_TOOL_TEXT characters (a cut one
    ends with "…")."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_TOOL_TEXT else text[:MAX_TOOL_TEXT - 1] + "…"


@dataclass(frozen=True, slots=True)
class SessionChange:
    """A model session replaced during the call: a reconnect (the session died) or a rollover (its time limit)."""

    cause: str
    t_ms: int | None = None  # when, in ms since the call started

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SessionChange":
        return cls(**_known(cls, data))


# The record's structured parts: each has a JSON column of its own (migration 2), and a type for its items.
STRUCTURED: dict[str, type[Turn] | type[ToolRun] | type[SessionChange] | None] = {
    "turns": Turn, "tool_calls": ToolRun, "reconnects": SessionChange, "rollovers": SessionChange, "usage": None,
}


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call as the gateway knows it: from placement and Twilio's status callbacks (outbound), and from the
    live call, which writes what it knows at its start (:meth:`CallStore.start_call`, naming its ``holder``) and
    the whole final record at its end (:meth:`CallStore.finish_call`), or the sweep that marks it lost."""

    call_sid: str
    to: str
    from_: str
    status: str = "queued"
    direction: str = OUTBOUND_API  # "outbound-api" | "inbound"
    machine_detection: str = "none"
    metadata: dict[str, str] = field(default_factory=dict)
    answered_by: str | None = None
    duration_s: int | None = None  # Twilio's CallDuration, once the call has completed
    machine_action: str | None = None  # "voicemail" | "hangup" once the gateway acted on a machine
    api_key_id: str | None = None  # which API key placed the call (a hash prefix, never the key)
    created_at: float = field(default_factory=time.time)  # placed (outbound) or started (inbound); epoch s
    updated_at: float = field(default_factory=time.time)
    # Written by the live call at its end (merge_final):
    stream_sid: str | None = None
    started_at: float | None = None  # the media stream's start, epoch s
    ended_at: float | None = None
    outcome: str | None = None  # e.g. "completed", "error", "refused", "voicemail", "no-answer" ...
    ended_by: str | None = None  # caller | agent | api | error | budget | drain | time_limit | machine | twilio
    end_reason: str | None = None  # the gateway's words for why the call ended (bounded, for operators)
    model: str | None = None  # the Realtime model that answered
    turns: tuple[Turn, ...] = ()
    turns_not_recorded: int = 0  # turns past the live call's bound on a very long call
    tool_calls: tuple[ToolRun, ...] = ()
    reconnects: tuple[SessionChange, ...] = ()
    rollovers: tuple[SessionChange, ...] = ()
    usage: dict[str, int] = field(default_factory=dict)  # tokens by kind: input_audio, output_text, ...
    cost_usd: float | None = None
    recording: str | None = None  # the recording's file name in RECORD_CALLS_DIR, if the call was recorded
    record_audio: bool | None = None  # POST /calls' "record" (recording consent); None: RECORD_AUDIO decides
    holder: str | None = None  # the instance (INSTANCE_ID) whose live call wrote the record at its start

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CallRecord":
        known = _known(cls, data)
        for name, item_type in STRUCTURED.items():
            value = known.get(name)
            if value is None:
                known.pop(name, None)
            elif item_type is None:
                known[name] = {str(k): v for k, v in dict(value).items()}
            else:
                known[name] = tuple(item if isinstance(item, item_type) else item_type.from_json(item)
                                    for item in value)
        return cls(**known)

    def summary_json(self) -> dict[str, Any]:
        """The record as ``GET /calls`` lists it: everything but the turns, tool calls and timeline."""
        return {
            "call_sid": self.call_sid,
            "stream_sid": self.stream_sid,
            "status": self.status,
            "direction": self.direction,
            "to": self.to,
            "from": self.from_,
            "answered_by": self.answered_by,
            "duration": self.duration_s,
            "machine_detection": self.machine_detection,
            "machine_action": self.machine_action,
            "metadata": dict(self.metadata),
            "api_key_id": self.api_key_id,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "outcome": self.outcome,
            "ended_by": self.ended_by,
            "end_reason": self.end_reason,
            "model": self.model,
            "turn_count": len(self.turns) + self.turns_not_recorded,
            "barge_ins": sum(1 for turn in self.turns if turn.barged_in),
            "tool_call_count": len(self.tool_calls),
            "reconnects": _changes_json(self.reconnects),
            "rollovers": _changes_json(self.rollovers),
            "usage": dict(self.usage),
            "cost_usd": self.cost_usd,
            "recording": self.recording is not None,
            "holder": self.holder,
        }

    def public_json(self) -> dict[str, Any]:
        """The record as ``GET /calls/{sid}`` shows it: the summary, the turns, the tool calls and a timeline."""
        return {
            **self.summary_json(),
            "turns": [asdict(turn) for turn in self.turns],
            "tool_calls": [asdict(run) for run in self.tool_calls],
            "timeline": timeline(self),
        }


def _changes_json(changes: tuple[SessionChange, ...]) -> dict[str, Any]:
    causes: dict[str, int] = {}
    for change in changes:
        causes[change.cause] = causes.get(change.cause, 0) + 1
    return {"count": len(changes), "causes": causes, "events": [asdict(change) for change in changes]}


def timeline(record: CallRecord) -> list[dict[str, Any]]:
    """Everything that happened at a known time, in order: turns (with barge-ins), tool calls, reconnects and
    rollovers. ``t_ms`` counts from the start of the call; entries without a time are left out."""
    entries: list[dict[str, Any]] = []
    for index, turn in enumerate(record.turns):
        if turn.t_ms is not None:
            entries.append({"t_ms": turn.t_ms, "kind": "turn", "turn": index, "latency_ms": turn.latency_ms,
                            "barged_in": turn.barged_in})
    for run in record.tool_calls:
        if run.t_ms is not None:
            entries.append({"t_ms": run.t_ms, "kind": "tool_call", "name": run.name, "outcome": run.outcome,
                            "duration_ms": run.duration_ms})
    for kind, changes in (("reconnect", record.reconnects), ("rollover", record.rollovers)):
        for change in changes:
            if change.t_ms is not None:
                entries.append({"t_ms": change.t_ms, "kind": kind, "cause": change.cause})
    entries.sort(key=lambda entry: entry["t_ms"])  # stable: a turn before the tool call it asked for
    return entries


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# ---- read-modify-write: the pure functions every backend applies inside its own atomic step

UPDATABLE = frozenset({"answered_by", "duration_s", "machine_action", "metadata"})
# What the live call knows better than anyone: merge_final takes these from the final record.
CALL_OWNED = ("stream_sid", "started_at", "ended_at", "outcome", "ended_by", "end_reason", "model", "turns",
              "turns_not_recorded", "tool_calls", "reconnects", "rollovers", "usage", "cost_usd", "recording")
MAX_SESSION_CHANGES = 1000  # reconnects or rollovers kept per call (a reconnect loop is bounded upstream anyway)


def apply_status(record: CallRecord, status: str | None, changes: dict[str, Any], now: float) -> CallRecord:
    """``record`` after a status callback: the status moved forward only, ``changes`` (UPDATABLE fields) set."""
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise TypeError(f"update_status: unknown fields {sorted(unknown)}")
    new_status = next_status(record.status, status) if status else record.status
    return replace(record, status=new_status, updated_at=now, **changes)


def claim_action(record: CallRecord | None, action: str, now: float) -> CallRecord | None:
    """``record`` with ``machine_action`` set, or None when there is no record or an action was claimed before."""
    if record is None or record.machine_action is not None:
        return None
    return replace(record, machine_action=action, updated_at=now)


def _int_or_none(value: Any) -> int | None:
    return None if value is None or isinstance(value, bool) else round(float(value))


def _changes(value: Any, default_cause: str) -> tuple[SessionChange, ...]:
    """Reconnects or rollovers as the live call counts them: {cause: count}, a count, or a list of changes."""
    if isinstance(value, Mapping):
        pairs = [(str(cause), int(count)) for cause, count in value.items()]
    elif isinstance(value, int) and not isinstance(value, bool):
        pairs = [(default_cause, value)]
    else:
        return tuple(item if isinstance(item, SessionChange) else SessionChange.from_json(item)
                     for item in (value or ())[:MAX_SESSION_CHANGES])
    changes: list[SessionChange] = []
    for cause, count in pairs:
        changes.extend(SessionChange(cause=cause) for _ in range(max(0, min(count, MAX_SESSION_CHANGES - len(changes)))))
    return tuple(changes)


def as_final_record(final: CallRecord | Mapping[str, Any]) -> CallRecord:
    """The record :meth:`CallStore.finish_call` writes, from a CallRecord or from the live call's own summary
    (``gateway.observe.ledger.CallLedger.finish``: ``from``/``to``, ``direction`` "inbound"/"outbound", turns with
    ``at_s``/``caller``/``agent``, ``tools``, reconnects by cause, a rollover count, usage and cost)."""
    if isinstance(final, CallRecord):
        return final
    data = dict(final)
    direction = str(data.get("direction") or INBOUND)
    if direction == "outbound":
        direction = OUTBOUND_API
    turns = []
    for turn in data.get("turns") or ():
        if isinstance(turn, Turn):
            turns.append(turn)
            continue
        at_s = turn.get("at_s")
        turns.append(Turn(
            caller_transcript=turn.get("caller", turn.get("caller_transcript")),
            agent_transcript=turn.get("agent", turn.get("agent_transcript")) or "",
            latency_ms=_int_or_none(turn.get("latency_ms")), model_ttfa_ms=_int_or_none(turn.get("model_ttfa_ms")),
            barged_in=bool(turn.get("barged_in")), heard_ms=_int_or_none(turn.get("heard_ms")),
            t_ms=_int_or_none(at_s * 1000) if at_s is not None else _int_or_none(turn.get("t_ms")),
            response_id=turn.get("response_id"),
        ))
    tools = [item if isinstance(item, ToolRun) else ToolRun(
        name=str(item.get("name", "")), outcome=str(item.get("outcome", "ok")),
        duration_ms=_int_or_none(item.get("duration_ms")), t_ms=_int_or_none(item.get("t_ms")),
        arguments=tool_text(item.get("arguments")), result=tool_text(item.get("result")))
        for item in data.get("tools", data.get("tool_calls")) or ()]
    started_at = data.get("started_at")
    now = time.time()
    return CallRecord(
        call_sid=str(data.get("call_sid") or ""),
        to=str(data.get("to") or ""), from_=str(data.get("from", data.get("from_")) or ""),
        # The stream is over; an outbound call's final status is Twilio's to say (its status callback).
        status=str(data.get("status") or ("completed" if direction == INBOUND else "in-progress")),
        direction=direction,
        created_at=started_at if started_at is not None else now, updated_at=now,
        stream_sid=data.get("stream_sid") or None, started_at=started_at, ended_at=data.get("ended_at"),
        outcome=data.get("outcome"), ended_by=data.get("ended_by"),
        end_reason=data.get("end_reason"), model=data.get("model"),
        turns=tuple(turns), turns_not_recorded=int(data.get("turns_not_recorded") or 0),
        tool_calls=tuple(tools),
        reconnects=_changes(data.get("reconnects"), "session lost"),
        rollovers=_changes(data.get("rollovers"), "session limit"),
        usage={str(kind): int(count) for kind, count in (data.get("usage") or {}).items()},
        cost_usd=data.get("cost_usd"), recording=data.get("recording"),
        metadata=dict(data.get("metadata") or {}), api_key_id=data.get("api_key_id"), holder=data.get("holder"),
    )


def merge_final(existing: CallRecord | None, final: CallRecord, now: float) -> CallRecord:
    """The record to store when a call ends: ``final`` (what the live call knows) over ``existing`` (what
    placement and Twilio's callbacks wrote).

    The live call's own fields (CALL_OWNED) come from ``final``. Who placed the call, how and with what metadata,
    Twilio's answer and duration stay as stored; the status still only moves forward; an empty ``to``/``from``
    keeps the stored number. A call with no record yet (inbound) is stored as ``final``, its ``created_at`` the
    start of its stream when that is earlier.
    """
    if existing is None:
        created = min(final.created_at, final.started_at) if final.started_at is not None else final.created_at
        return replace(final, created_at=created, updated_at=now)
    changes: dict[str, Any] = {name: getattr(final, name) for name in CALL_OWNED}
    # A record marked lost while its call was alive (its holder looked gone: see merge_lost) is the live call's
    # to correct: "lost" gives way to whatever the call's own end says.
    stored_status = "in-progress" if existing.status == LOST else existing.status
    return replace(
        existing, **changes,
        to=existing.to or final.to, from_=existing.from_ or final.from_,
        holder=existing.holder or final.holder,
        status=next_status(stored_status, final.status),
        metadata={**final.metadata, **existing.metadata},
        answered_by=existing.answered_by or final.answered_by,
        duration_s=existing.duration_s if existing.duration_s is not None else final.duration_s,
        machine_action=existing.machine_action or final.machine_action,
        api_key_id=existing.api_key_id or final.api_key_id,
        updated_at=now,
    )


def is_open(record: CallRecord) -> bool:
    """A call whose stream started on an instance (``holder``) and whose end is not written yet: live, or lost."""
    return record.holder is not None and record.ended_at is None and record.outcome is None


def merge_start(existing: CallRecord | None, start: CallRecord, now: float) -> CallRecord | None:
    """The record to store when a call's stream starts, from ``start`` (what is known then: the SIDs, direction,
    numbers, the start, the holder, the model). A record placement or Twilio's callbacks wrote keeps what they
    wrote; a record already ended (its final record or a lost mark came first: a spooled start replayed late)
    is left alone. Returns ``existing`` itself when there is nothing to write (:meth:`StoreBase._modify`)."""
    if existing is None:
        return replace(start, updated_at=now)
    if existing.ended_at is not None or existing.outcome is not None:
        return existing
    return replace(
        existing, stream_sid=existing.stream_sid or start.stream_sid, holder=start.holder,
        started_at=existing.started_at if existing.started_at is not None else start.started_at,
        model=existing.model or start.model, to=existing.to or start.to, from_=existing.from_ or start.from_,
        status=next_status(existing.status, start.status), updated_at=now,
    )


def merge_lost(existing: CallRecord | None, reason: str, now: float) -> CallRecord | None:
    """``existing`` marked lost (its holder is gone, the end never written), keeping everything known; itself
    (nothing to write) unless it is still open. Twilio's final status of the call, if it came first, stays."""
    if existing is None or not is_open(existing):
        return existing
    return replace(existing, status=next_status(existing.status, LOST), outcome=LOST, end_reason=reason[:200],
                   updated_at=now)


# ---- a record as table columns (SQLite and PostgreSQL share the layout; migrations 1 and 2)

JSON_COLUMNS = ("data", *STRUCTURED)
# Plain columns copied from the record for listing, filtering, sorting and pruning.
PROJECTED = {"status": "status", "updated_at": "updated_at", "stream_sid": "stream_sid", "direction": "direction",
             "from_number": "from_", "to_number": "to", "api_key_id": "api_key_id", "outcome": "outcome",
             "ended_by": "ended_by", "created_at": "created_at", "started_at": "started_at",
             "ended_at": "ended_at", "cost_usd": "cost_usd", "recording": "recording", "holder": "holder"}


def nearest_rank(values: list[float] | tuple[float, ...], percent: int) -> float | None:
    """The ``percent``-th percentile by nearest rank (the value of rank ceil(percent * n / 100), counting from 1, in
    ascending order); None for no value. The SQL backends compute it the same way (gateway.store.figures)."""
    if not values:
        return None
    return sorted(values)[(percent * len(values) + 99) // 100 - 1]


def call_latency_ms(record: CallRecord) -> float | None:
    """A call's turn latency: the median (nearest rank) of its turns' latencies."""
    return nearest_rank([turn.latency_ms for turn in record.turns if turn.latency_ms is not None], 50)


def call_barge_ins(record: CallRecord) -> int:
    return sum(1 for turn in record.turns if turn.barged_in)


# Figures computed from the turns, in plain columns (migration 4) for sorting the listing and for the overview.
FIGURES = {"latency_ms": call_latency_ms, "barge_ins": call_barge_ins}
CALL_COLUMNS = ("call_sid", *PROJECTED, *FIGURES, *JSON_COLUMNS)
# SELECT this, in this order, and hand the row to record_from_columns.
RECORD_SELECT = ", ".join(JSON_COLUMNS)


def record_columns(record: CallRecord) -> dict[str, Any]:
    """Column -> value, in CALL_COLUMNS order; JSON columns hold plain Python values (the backend encodes them)."""
    data = record.to_json()
    structured = {name: data.pop(name) for name in STRUCTURED}
    columns: dict[str, Any] = {"call_sid": record.call_sid}
    columns.update({column: getattr(record, name) for column, name in PROJECTED.items()})
    columns.update({column: figure(record) for column, figure in FIGURES.items()})
    columns["data"] = data
    columns.update(structured)
    return columns


def record_from_columns(values: tuple[Any, ...] | list[Any]) -> CallRecord:
    """A record from the RECORD_SELECT columns (decoded JSON). A row written before migration 2 has only ``data``
    (the whole record, then); its structured columns are NULL."""
    data = dict(values[0])
    for name, value in zip(STRUCTURED, values[1:]):
        if value is not None:
            data[name] = value
    return CallRecord.from_json(data)


# ---- listing: filters and the opaque cursor


def encode_cursor(record: CallRecord) -> str:
    """Where the next page starts: after ``record`` in (created_at, call_sid) descending order."""
    raw = json.dumps([record.created_at, record.call_sid], separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The position :func:`encode_cursor` wrote; ValueError for anything else."""
    if not isinstance(cursor, str) or not 1 <= len(cursor) <= 256:
        raise ValueError("bad cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw.decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("bad cursor") from None
    if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], (int, float))
            or isinstance(value[0], bool) or not math.isfinite(value[0]) or not isinstance(value[1], str)
            or len(value[1]) > 64):
        raise ValueError("bad cursor")
    return float(value[0]), value[1]


@dataclass(frozen=True, slots=True)
class CallQuery:
    """Which records ``list_calls`` returns, newest first (created_at, then call_sid, descending)."""

    since: float | None = None  # created_at >= since (epoch s)
    until: float | None = None  # created_at < until
    direction: str | None = None  # "inbound" | "outbound" (any outbound-*)
    outcome: str | None = None
    number: str | None = None  # matches from or to, exactly
    api_key_id: str | None = None  # only the calls this key placed; None: every call
    after: tuple[float, str] | None = None  # the decoded cursor: records after this (created_at, call_sid)
    limit: int = DEFAULT_PAGE_SIZE
    open_only: bool = False  # only open records (is_open): the lost-call sweeper's query, not an API filter
    # Another order than the newest first (the console's sortable columns): a name of gateway.store.figures.SORTS,
    # paged by offset instead of the cursor.
    sort: str = "started"
    descending: bool = True
    offset: int = 0

    @property
    def by_offset(self) -> bool:
        return self.sort != "started" or not self.descending or self.offset > 0

    def __post_init__(self) -> None:
        if self.sort not in SORT_NAMES:
            raise ValueError(f"sort must be one of {', '.join(SORT_NAMES)}, got {str(self.sort)[:40]!r}")
        if not 0 <= self.offset <= MAX_OFFSET:
            raise ValueError(f"offset must be between 0 and {MAX_OFFSET}, got {self.offset}")
        if not 1 <= self.limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {self.limit}")
        if self.direction is not None and self.direction not in DIRECTION_FILTERS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTION_FILTERS)}, got {self.direction!r}")

    def matches(self, record: CallRecord) -> bool:
        """The memory backend's filter; the same meaning as :meth:`where`."""
        if self.since is not None and not record.created_at >= self.since:
            return False
        if self.until is not None and not record.created_at < self.until:
            return False
        if self.direction == "inbound" and record.direction != INBOUND:
            return False
        if self.direction == "outbound" and not record.direction.startswith("outbound"):
            return False
        if self.outcome is not None and record.outcome != self.outcome:
            return False
        if self.number is not None and self.number not in (record.to, record.from_):
            return False
        if self.api_key_id is not None and record.api_key_id != self.api_key_id:
            return False
        if self.after is not None and not (record.created_at, record.call_sid) < self.after:
            return False
        return not self.open_only or is_open(record)

    def where(self, placeholder: str) -> tuple[str, list[Any]]:
        """``WHERE ...`` (or "") and its parameters, for SQLite (``?``) and psycopg (``%s``) alike."""
        clauses: list[str] = []
        params: list[Any] = []
        p = placeholder
        if self.since is not None:
            clauses.append(f"created_at >= {p}")
            params.append(self.since)
        if self.until is not None:
            clauses.append(f"created_at < {p}")
            params.append(self.until)
        if self.direction == "inbound":
            clauses.append(f"direction = {p}")
            params.append(INBOUND)
        elif self.direction == "outbound":
            clauses.append(f"direction LIKE {p}")
            params.append("outbound%")
        if self.outcome is not None:
            clauses.append(f"outcome = {p}")
            params.append(self.outcome)
        if self.number is not None:
            clauses.append(f"(from_number = {p} OR to_number = {p})")
            params.extend([self.number, self.number])
        if self.api_key_id is not None:
            clauses.append(f"api_key_id = {p}")
            params.append(self.api_key_id)
        if self.after is not None:
            clauses.append(f"(created_at, call_sid) < ({p}, {p})")
            params.extend(self.after)
        if self.open_only:  # the predicate of the partial index calls_open (migration 3)
            clauses.append("holder IS NOT NULL AND ended_at IS NULL AND outcome IS NULL")
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def page(self, records: list[CallRecord]) -> "CallPage":
        """The page from up to ``limit + 1`` matching records, newest first (one more tells a next page exists)."""
        if len(records) > self.limit and self.by_offset:
            following = self.offset + self.limit
            return CallPage(records[:self.limit], None, following if following <= MAX_OFFSET else None)
        if len(records) > self.limit:
            records = records[:self.limit]
            return CallPage(records, encode_cursor(records[-1]))
        return CallPage(records, None)


ORDER_BY = " ORDER BY created_at DESC, call_sid DESC"


@dataclass(frozen=True, slots=True)
class CallPage:
    records: list[CallRecord]
    next_cursor: str | None  # pass as ``cursor`` for the next page; None: this was the last
    next_offset: int | None = None  # a sorted listing's next page (CallQuery.offset); None: this was the last
