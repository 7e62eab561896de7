"""A local spool of the call records the store could not take: one JSON line per write, appended and synced.

When a record cannot be written (the database is down, restarting, failing over), it is appended here instead
(:meth:`RecordSpool.append`) and written to the store when it is back (:mod:`gateway.store.records` replays it at
start-up and in a background loop), then removed. What a line holds: the operation (``start``: what was known when
the call's stream started; ``finish``: the call's final record) and the record. Both are merges by call_sid
(:meth:`gateway.store.CallStore.start_call`, :meth:`~gateway.store.CallStore.finish_call`), so a line written twice
(a replay cut short, two workers) leaves the same record.

The file, ``records.jsonl`` in ``RECORD_SPOOL_DIR`` (under ``DATA_DIR``; the directory is made on first use, mode
0700), is created mode 0600: records carry phone numbers and what was said. The worker processes of one host share
it safely:

* a writer opens it in append mode, takes its ``flock``, checks it still holds the file of that name (a replay may
  have claimed it meanwhile: then it opens the new one), writes its line in one ``write`` and ``fsync``\\ s it;
* a replay claims the file whole: under the same lock it renames it ``claimed-<random>.jsonl``, and then works on
  the claimed file holding that file's lock, so two replays never take the same lines; a replay that died
  (killed) leaves its claimed file unlocked, and the next replay takes it.

The spool is bounded (``RECORD_SPOOL_MAX_MB``): a record that would take it past the bound is not spooled, and is
logged and counted as lost. A line that cannot be read back (cut short by a crash or a full disk) is skipped,
logged and counted; so is a record of an unknown operation.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from gateway.observe import metrics
from gateway.store.model import CallRecord

log = logging.getLogger("gateway.store")

SPOOL_FILE = "records.jsonl"
CLAIM_PREFIX = "claimed-"
OPERATIONS = ("start", "finish")


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    operation: str  # "start" | "finish"
    record: CallRecord


def _spool_file(name: str) -> bool:
    return name == SPOOL_FILE or (name.startswith(CLAIM_PREFIX) and name.endswith(".jsonl"))


class RecordSpool:
    """The spool in ``directory``, at most ``max_bytes`` (0: nothing is ever spooled). Synchronous file work: the
    caller runs it in a thread (``asyncio.to_thread``), never on the event loop."""

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.path = os.path.join(directory, SPOOL_FILE)

    # ---- writing

    def size(self) -> int:
        """The bytes the spool holds (the file and any claimed ones not yet replayed)."""
        total = 0
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    if _spool_file(entry.name):
                        try:
                            total += entry.stat(follow_symlinks=False).st_size
                        except FileNotFoundError:
                            continue
        except FileNotFoundError:
            return 0
        return total

    def append(self, operation: str, record: CallRecord) -> bool:
        """Append one record, durably (flushed to disk before this returns); False when it was not spooled (over
        the bound, or the directory cannot be written: logged and counted, the record is lost)."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown spool operation {operation!r}")
        line = json.dumps({"op": operation, "record": record.to_json(), "spooled_at": time.time()},
                          separators=(",", ":"), default=str) + "\n"
        data = line.encode("utf-8")
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            if not self._append(data):
                self._lost(record, f"the spool is full (RECORD_SPOOL_MAX_MB={self.max_bytes >> 20})")
                return False
        except OSError as error:
            self._lost(record, f"the spool cannot be written ({self.directory}: {error.strerror or error})")
            return False
        metrics.RECORDS_SPOOLED.labels(operation).inc()
        return True

    def _append(self, data: bytes) -> bool:
        """Append ``data`` under the file's lock; False (nothing written) if it would take the spool past its bound
        (checked under the lock: appenders of every process take turns, so together they never pass it)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                held = _lock_named(fd, self.path)
                if held is None:
                    continue  # claimed by a replay between our open and our lock: write to the new file
                if held.st_size and os.pread(fd, 1, held.st_size - 1) != b"\n":
                    data = b"\n" + data  # a line cut short by a crash stays alone (skipped as unreadable)
                if self.size() + len(data) > self.max_bytes:
                    return False
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
                if held.st_size == 0:  # a new file: its name must survive a crash too
                    _fsync_directory(self.directory)
                return True
            finally:
                os.close(fd)  # releases the lock

    def _lost(self, record: CallRecord, why: str) -> None:
        metrics.RECORDS_LOST.labels("spool").inc()
        log.error("call record LOST call_sid=%s: the store did not take it and %s", record.call_sid[:40] or "-", why)

    # ---- replaying

    def pending(self) -> bool:
        """Whether anything waits in the spool (cheap: a directory listing)."""
        return self.size() > 0

    def take_claims(self) -> list["ClaimedFile"]:
        """The spooled lines, claimed file by file (see the module docstring): the current file claimed, then every
        claimed file no other replay holds, oldest first, each locked until :meth:`ClaimedFile.release`. The
        caller calls :meth:`ClaimedFile.done` on a file once every line of it is written; a file not done stays
        for the next replay (its lines are merges: writing one again changes nothing)."""
        self._claim_current()
        try:
            names = sorted((entry.name for entry in os.scandir(self.directory)
                            if entry.name.startswith(CLAIM_PREFIX) and entry.name.endswith(".jsonl")),
                           key=lambda name: _mtime(os.path.join(self.directory, name)))
        except FileNotFoundError:
            return []
        return [claimed for claimed in (ClaimedFile.take(os.path.join(self.directory, name)) for name in names)
                if claimed is not None]

    def _claim_current(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            held = _lock_named(fd, self.path)
            if held is None or held.st_size == 0:
                return
            # The claimed name sorts after older claims by time (mtime), not by name: random, never reused.
            os.rename(self.path, os.path.join(self.directory, f"{CLAIM_PREFIX}{secrets.token_hex(8)}.jsonl"))
            _fsync_directory(self.directory)
        finally:
            os.close(fd)


class ClaimedFile:
    """One claimed spool file, locked by this process while it is replayed."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def take(cls, path: str) -> "ClaimedFile | None":
        """The file, locked; None if another replay holds it or it is gone."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        if os.fstat(fd).st_nlink == 0:  # replayed and removed by another process between our open and our lock
            os.close(fd)
            return None
        return cls(path, fd)

    def entries(self) -> list[SpoolEntry]:
        """Its records, in order; an unreadable line is skipped (logged and counted)."""
        with os.fdopen(os.dup(self._fd), "rb") as file:
            lines = file.read().splitlines()
        entries = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                operation = item["op"]
                if operation not in OPERATIONS:
                    raise ValueError(f"unknown operation {str(operation)[:20]!r}")
                record = CallRecord.from_json(item["record"])
                if not isinstance(record.call_sid, str) or not record.call_sid:
                    raise ValueError("no call_sid")
            except (ValueError, KeyError, TypeError) as error:
                metrics.RECORDS_LOST.labels("unreadable").inc()
                log.error("spooled call record unreadable (%s line %d: %s): skipped", self.path, number,
                          str(error)[:200])
                continue
            entries.append(SpoolEntry(operation, record))
        return entries

    def done(self) -> None:
        """Every line is written (or spooled again): the file goes."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _lock_named(fd: int, path: str) -> os.stat_result | None:
    """Lock the file open on ``fd`` (waiting for the holder); its status, or None (unlocked again by the caller's
    close) when ``path`` no longer names it: a replay renamed it between the open and the lock."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    held = os.fstat(fd)
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return None
    return held if (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino) else None


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
