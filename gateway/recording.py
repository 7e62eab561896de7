"""Call recordings: every Twilio WebSocket frame of a call, both ways, with its time (``RECORD_CALLS_DIR``).

A recording is JSON Lines, replayable by ``gateway replay`` (a scenario with ``recording = "..."``):

* line 1: ``{"type": "header", "version": 1, "call_sid": ..., "stream_sid": ..., "started_at": ISO-8601}``
* then one line per text frame: ``{"t_ms": <ms since the socket was accepted>, "dir": "in"|"out", "text": <frame>}``
  (``in`` = from Twilio, ``out`` = to Twilio), in the order they happened.

The header needs the call's SIDs, which arrive with Twilio's ``start``: the few frames before it are held
in memory (at most 256 KiB), then the file ``<dir>/<call_sid>.jsonl`` is opened and written as the call goes.
Writes go through Python's buffered file (one small write per frame into an 8 KiB buffer), so the event
loop does not wait for the disk on each frame.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

log = logging.getLogger("gateway.recording")

RECORDING_VERSION = 1
MAX_BYTES_BEFORE_START = 256 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


class CallRecorder:
    """Writes one call's frames to ``directory``; every method is safe to call after :meth:`close`."""

    def __init__(self, directory: str | Path, started_ms: float) -> None:
        self.directory = Path(directory)
        self.path: Path | None = None
        self._started_ms = started_ms
        self._started_at = datetime.now(timezone.utc).isoformat()
        self._held: list[str] = []
        self._held_bytes = 0
        self._file: IO[str] | None = None
        self._closed = False

    def record(self, direction: str, text: str, now_ms: float) -> None:
        if self._closed:
            return
        line = json.dumps({"t_ms": round(now_ms - self._started_ms, 3), "dir": direction, "text": text})
        if self._file is not None:
            self._file.write(line + "\n")
        elif self._held_bytes + len(line) <= MAX_BYTES_BEFORE_START:
            self._held.append(line)
            self._held_bytes += len(line)

    def call_started(self, call_sid: str, stream_sid: str) -> None:
        """Open the file once the SIDs are known, and write the header and the frames held so far."""
        if self._file is not None or self._closed:
            return
        name = _SAFE_NAME.sub("_", call_sid)[:64] or "call"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.path = self.directory / f"{name}.jsonl"
            self._file = self.path.open("w", encoding="utf-8")
        except OSError as error:
            log.error("cannot record call %s: %s", call_sid, error)
            self._closed = True
            return
        header = {"type": "header", "version": RECORDING_VERSION, "call_sid": call_sid,
                  "stream_sid": stream_sid, "started_at": self._started_at}
        self._file.write(json.dumps(header) + "\n")
        for line in self._held:
            self._file.write(line + "\n")
        self._held.clear()

    def close(self) -> None:
        self._closed = True
        self._held.clear()
        if self._file is not None:
            try:
                self._file.close()
            except OSError as error:
                log.error("recording %s was not fully written: %s", self.path, error)
            self._file = None
