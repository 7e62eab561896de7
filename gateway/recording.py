"""Call recordings: every Twilio WebSocket frame of a call, both ways, with its time (``RECORD_CALLS_DIR``).

A recording is JSON Lines, replayable by ``gateway replay`` (a scenario with ``recording = "..."``):

* line 1: ``{"type": "header", "version": 1, "call_sid": ..., "stream_sid": ..., "started_at": ISO-8601}``
* then one line per text frame: ``{"t_ms": <ms since the socket was accepted>, "dir": "in"|"out", "text": <frame>}``
  (``in`` = from Twilio, ``out`` = to Twilio), in the order they happened;
* when the size cap was reached, a last line ``{"type": "truncated", "t_ms": ..., "reason": "size cap",
  "max_bytes": N}``: nothing after it was recorded (the replay loader skips it).

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
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from gateway.logsafe import safe

log = logging.getLogger("gateway.recording")

RECORDING_VERSION = 1
MAX_BYTES_BEFORE_START = 256 * 1024
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # per call (RECORD_MAX_BYTES)
MAX_NAME_ATTEMPTS = 100  # <call_sid>.jsonl, <call_sid>-2.jsonl ... <call_sid>-100.jsonl, then no recording
_TRUNCATED_LINE_ROOM = 160  # bytes kept free under the cap for the truncated line
_CREATE_FLAGS = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


class CallRecorder:
    """Writes one call's frames to ``directory``; every method is safe to call after :meth:`close`."""

    def __init__(self, directory: str | Path, started_ms: float, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = Path(directory)
        self.path: Path | None = None
        self.max_bytes = max_bytes
        self.truncated = False  # the size cap was reached
        self._written = 0  # bytes in the file
        self._started_ms = started_ms
        self._started_at = datetime.now(timezone.utc).isoformat()
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

    def call_started(self, call_sid: str, stream_sid: str) -> None:
        """Open the file once the SIDs are known, and write the header and the frames held so far."""
        if self._file is not None or self._closed:
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
        header = {"type": "header", "version": RECORDING_VERSION, "call_sid": call_sid,
                  "stream_sid": stream_sid, "started_at": self._started_at}
        held, self._held = self._held, []
        # The header always goes in, even past a (tiny) cap: without it the file is not a recording.
        self._write(json.dumps(header), 0.0, always=True)
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
        try:
            if always or self._written + size + _TRUNCATED_LINE_ROOM <= self.max_bytes:
                self._file.write(line + "\n")
                self._written += size
                return
            marker = {"type": "truncated", "t_ms": t_ms, "reason": "size cap", "max_bytes": self.max_bytes}
            self._file.write(json.dumps(marker) + "\n")
        except OSError as error:
            log.error("recording %s stopped: %s", self.path, error)
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
