"""Call recordings: every Twilio WebSocket frame of a call, both ways, with its time (``RECORD_CALLS_DIR``).

A recording is JSON Lines, replayable by ``gateway replay`` (a scenario with ``recording = "..."``):

* line 1: ``{"type": "header", "version": 1, "call_sid": ..., "stream_sid": ..., "started_at": ISO-8601}``
* then one line per text frame: ``{"t_ms": <ms since the socket was accepted>, "dir": "in"|"out", "text": <frame>}``
  (``in`` = from Twilio, ``out`` = to Twilio), in the order they happened;
* when the size cap was reached, a last line ``{"type": "truncated", "t_ms": ..., "reason": "size cap",
  "max_bytes": N}`` (``"reason": "total quota"`` when the directory's quota was): nothing after it was recorded
  (the replay loader skips it).

An ``in`` frame is recorded once it parsed (:meth:`CallRecorder.record_event`): the Twilio message rebuilt from
what the gateway accepted (:func:`gateway.twilio.media.accepted_message`), never a frame it dropped nor a field
it ignored, so hostile input is not kept whole. Phone numbers in the start's custom parameters are masked as in
the logs (:func:`gateway.observe.logs.redact`) unless ``LOG_FULL_NUMBERS``.

The directory as a whole is bounded too (``RECORD_TOTAL_MAX_BYTES``, :class:`RecordingsQuota`): once full, a new
call is not recorded at all (it goes on; counted, logged once until there is room again), and a recording that
reaches the quota is cut short as at its own cap. Removing the oldest recordings instead was rejected: they belong
to call records (the console's player, ``GET /calls/{sid}/recording``) and to retention's schedule, and a flood of
calls must not be able to erase the recordings of earlier ones.

The header needs the call's SIDs, which arrive with Twilio's ``start``: the few frames before it are held
in memory (at most 256 KiB), then the file ``<dir>/<call_sid>.jsonl`` is created and written as the call goes.
Writes go through Python's buffered file (one small write per frame into an 8 KiB buffer), so the event
loop does not wait for the disk on each frame.

Recordings hold the callers' voices: a file is created with mode 0600 (its directory, if the recorder
creates it, 0700), and only ever created, never opened if it exists: when ``<call_sid>.jsonl`` is there
already (the same CallSid twice, a planted file or symlink) the recording goes to ``<call_sid>-2.jsonl``,
``-3``... A file never grows past ``max_bytes`` (the truncated line included, see above; only a header
bigger than the cap on its own is written all the same): a long or flooded call cannot fill the disk.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Callable

from gateway.observe.logsafe import safe
from gateway.observe import metrics
from gateway.observe.logs import redact
from gateway.twilio import media as tw

log = logging.getLogger("gateway.recordings.frames")

RECORDING_VERSION = 1
MAX_BYTES_BEFORE_START = 256 * 1024
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # per call (RECORD_MAX_BYTES)
MAX_NAME_ATTEMPTS = 100  # <call_sid>.jsonl, <call_sid>-2.jsonl ... <call_sid>-100.jsonl, then no recording
_TRUNCATED_LINE_ROOM = 160  # bytes kept free under the cap for the truncated line
_CREATE_FLAGS = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


DEFAULT_TOTAL_MAX_BYTES = 10 * 1024 ** 3  # the whole directory (RECORD_TOTAL_MAX_BYTES)
RESCAN_S = 60.0  # how old the directory's measured size may get (retention deletes, other workers write)


class RecordingsQuota:
    """The total size of a recordings directory, against ``max_bytes`` (``RECORD_TOTAL_MAX_BYTES``).

    Measured by listing the directory (at first use, then at most every :data:`RESCAN_S`) and, in between,
    counted up by what this process writes. Each worker process counts its own writes: another worker's show at the
    next listing. Thread-safe (WAVs are written in a thread). One per directory and process: :func:`recordings_quota`.
    """

    def __init__(self, directory: str | Path, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._used = 0
        self._measured_at: float | None = None
        self._full_logged = False

    @property
    def used(self) -> int:
        with self._lock:
            self._measure()
            return self._used

    def has_room(self) -> bool:
        with self._lock:
            self._measure()
            return self._used < self.max_bytes

    def take(self, size: int) -> bool:
        """Count ``size`` bytes about to be written; False (nothing counted) when they would pass the quota."""
        with self._lock:
            self._measure()
            if self._used + size > self.max_bytes:
                return False
            self._used += size
            return True

    def refused(self, what: str, detail: str) -> None:
        """Count a recording (or its WAV) given up for the quota (``what``: a fixed label); the first of a full
        spell is logged, the rest only counted."""
        metrics.RECORDINGS_OVER_QUOTA.labels(what).inc()
        with self._lock:
            if self._full_logged:
                return
            self._full_logged = True
        log.warning("recordings: %s reached RECORD_TOTAL_MAX_BYTES (%d bytes): %s; calls go on unrecorded until "
                    "retention or an operator frees room (further ones are counted in "
                    "gateway_recordings_over_quota_total, not logged)", self.directory, self.max_bytes, detail)

    def _measure(self) -> None:
        now = self._clock()
        if self._measured_at is not None and now - self._measured_at < RESCAN_S:
            return
        total = 0
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    try:
                        if entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue  # deleted meanwhile
        except FileNotFoundError:
            total = 0
        except OSError as error:
            log.error("recordings: cannot measure %s: %s", self.directory, error)
            return
        self._used, self._measured_at = total, now
        if total < self.max_bytes:
            self._full_logged = False  # room again: the next full spell is logged


_quotas: dict[tuple[str, int], RecordingsQuota] = {}
_quotas_lock = threading.Lock()


def recordings_quota(directory: str | Path, max_bytes: int) -> RecordingsQuota:
    """This process's quota of ``directory`` (one object per directory, so every call counts against one total)."""
    key = (str(directory), max_bytes)
    with _quotas_lock:
        quota = _quotas.get(key)
        if quota is None:
            quota = _quotas[key] = RecordingsQuota(directory, max_bytes)
        return quota


class CallRecorder:
    """Writes one call's frames to ``directory``; every method is safe to call after :meth:`close`."""

    def __init__(self, directory: str | Path, started_ms: float, max_bytes: int = DEFAULT_MAX_BYTES, *,
                 quota: RecordingsQuota | None = None, full_numbers: bool = False) -> None:
        self.directory = Path(directory)
        self.path: Path | None = None
        self.max_bytes = max_bytes
        self.quota = quota
        self.full_numbers = full_numbers  # LOG_FULL_NUMBERS: numbers in the start's parameters kept whole
        self.truncated = False  # the size cap (or the directory's quota) was reached
        self.over_quota = False  # not started: the directory was full
        self._written = 0  # bytes in the file
        self._started_ms = started_ms
        self._started_at = datetime.now(UTC).isoformat()
        self._held: list[tuple[str, float]] = []  # (line, t_ms) before the file exists
        self._held_bytes = 0
        self._file: IO[str] | None = None
        self._closed = False

    def record(self, direction: str, text: str, now_ms: float) -> None:
        if self._closed:
            return
        t_ms = round(now_ms - self._started_ms, 3)
        line = json.dumps({"t_ms": t_ms, "dir": direction, "text": text})
        if self._file is not None:
            self._write(line, t_ms)
        elif self._held_bytes + len(line) <= MAX_BYTES_BEFORE_START:
            self._held.append((line, t_ms))
            self._held_bytes += len(line)

    def record_event(self, event: tw.TwilioEvent, now_ms: float) -> None:
        """Record a frame from Twilio that parsed, as the gateway accepted it (numbers masked unless
        ``full_numbers``)."""
        if self._closed:
            return
        message = tw.accepted_message(event)
        if isinstance(event, tw.Start) and not self.full_numbers:
            start = message["start"]
            start["customParameters"] = {key: redact(value) for key, value in start["customParameters"].items()}
        self.record("in", tw.encode_message(message), now_ms)

    def call_started(self, call_sid: str, stream_sid: str) -> None:
        """Open the file once the SIDs are known, and write the header and the frames held so far."""
        if self._file is not None or self._closed:
            return
        header = json.dumps({"type": "header", "version": RECORDING_VERSION, "call_sid": call_sid,
                             "stream_sid": stream_sid, "started_at": self._started_at})
        # The header and the room for a truncated line are counted before the file exists: a full directory gets
        # no new file at all (not an empty recording), and what a recording writes past the quota's count (that
        # line) was counted in advance, so the directory never passes RECORD_TOTAL_MAX_BYTES.
        if self.quota is not None and not self.quota.take(len(header) + 1 + _TRUNCATED_LINE_ROOM):
            self.over_quota = True
            self.quota.refused("not_started", f"call {safe(call_sid)} is not recorded")
            self.close()
            return
        name = _SAFE_NAME.sub("_", call_sid)[:64] or "call"
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.path, fd = self._create(name)
        except OSError as error:
            log.error("cannot record call %s: %s", safe(call_sid), error)
            self._closed = True
            return
        if fd is None:
            log.error("cannot record call %s: %s and %d more names like it exist in %s", safe(call_sid),
                      f"{name}.jsonl", MAX_NAME_ATTEMPTS - 1, self.directory)
            self.path = None
            self._closed = True
            return
        self._file = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        held, self._held = self._held, []
        # The header always goes in, even past a (tiny) cap: without it the file is not a recording. (Its room in the
        # quota is taken above.)
        self._write(header, 0.0, always=True)
        for line, t_ms in held:
            if self._file is None:  # the cap was reached
                break
            self._write(line, t_ms)

    def _create(self, name: str) -> tuple[Path, int | None]:
        """A new file ``<name>.jsonl`` (``<name>-2.jsonl``... if taken), mode 0600; never an existing one."""
        path = self.directory / f"{name}.jsonl"  # O_EXCL: an existing file or symlink is never opened
        for attempt in range(1, MAX_NAME_ATTEMPTS + 1):
            path = self.directory / (f"{name}.jsonl" if attempt == 1 else f"{name}-{attempt}.jsonl")
            try:
                return path, os.open(path, _CREATE_FLAGS, 0o600)
            except FileExistsError:
                continue
        return path, None

    def _write(self, line: str, t_ms: float, *, always: bool = False) -> None:
        """Write one line, unless it would take the file past the cap: then the truncated line, and stop."""
        assert self._file is not None
        size = len(line) + 1  # json.dumps writes ASCII: characters are bytes
        within_cap = always or self._written + size + _TRUNCATED_LINE_ROOM <= self.max_bytes
        # The directory's quota keeps room for the truncated line too (it is written past the quota's count).
        within_quota = self.quota is None or always or self.quota.take(size)
        try:
            if within_cap and within_quota:
                self._file.write(line + "\n")
                self._written += size
                return
            reason = "size cap" if not within_cap else "total quota"
            marker = {"type": "truncated", "t_ms": t_ms, "reason": reason,
                      "max_bytes": self.max_bytes if not within_cap else self.quota.max_bytes}  # type: ignore[union-attr]
            self._file.write(json.dumps(marker) + "\n")
        except OSError as error:
            log.error("recording %s stopped: %s", self.path, error)
        else:
            if within_cap and self.quota is not None:
                self.quota.refused("truncated", f"recording {self.path} cut short")
            else:
                log.warning("recording %s reached its size cap (%d bytes): the rest of the call is not recorded",
                            self.path, self.max_bytes)
            self.truncated = True
        self.close()

    def close(self) -> None:
        self._closed = True
        self._held.clear()
        if self._file is not None:
            try:
                self._file.close()
            except OSError as error:
                log.error("recording %s was not fully written: %s", self.path, error)
            self._file = None
