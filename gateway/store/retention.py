"""Retention (``RECORD_RETENTION_DAYS``): call records older than that are deleted, and their recordings with them.

:func:`prune` runs once at start-up and then every hour (:func:`run_retention`, a task of the app's lifespan). With
several workers or instances each prunes on its own schedule: deleting what is already deleted costs nothing.

Recordings are the files the gateway writes in ``RECORD_CALLS_DIR``: ``<CallSid>.jsonl`` (and ``<CallSid>-2.jsonl``
... when the name was taken), and ``.wav`` files named the same way. A pruned record takes its call's recording
files with it (by CallSid, and the file name its ``recording`` field gives); files named like a recording whose
last change is older than the retention go too, whether or not a record still exists (the memory store forgets its
records on restart, recordings stay on disk). Nothing else in the directory is ever touched: only regular files and
symbolic links (the link, never its target) whose names are a CallSid, optionally ``-N``, then ``.jsonl`` or
``.wav``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from gateway.store.base import CallStore

log = logging.getLogger("gateway.store")

PRUNE_INTERVAL_S = 3600.0
PRUNE_BATCH = 1000  # records deleted per statement: a big backlog never holds the table for long
DAY_S = 86400.0
RECORDING_FILE = re.compile(r"(CA[0-9a-fA-F]{32})(?:-[0-9]{1,3})?\.(?:jsonl|wav)")


@dataclass(frozen=True, slots=True)
class PruneResult:
    records: int
    recordings: int


def retention_cutoff(retention_days: float, now: float) -> float | None:
    """Records created before this (epoch s) are pruned; None when kept forever (``retention_days`` 0)."""
    return now - retention_days * DAY_S if retention_days > 0 else None


def _delete_recordings(directories: Iterable[str | Path], call_sids: set[str], names: set[str],
                       cutoff: float) -> int:
    deleted = 0
    for directory in directories:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            match = RECORDING_FILE.fullmatch(entry.name)
            if match is None and entry.name not in names:
                continue
            try:
                if not (entry.is_symlink() or entry.is_file(follow_symlinks=False)):
                    continue
                old = match is not None and entry.stat(follow_symlinks=False).st_mtime < cutoff
                if old or entry.name in names or (match is not None and match.group(1) in call_sids):
                    os.unlink(entry.path)
                    deleted += 1
            except FileNotFoundError:
                continue  # gone meanwhile (another worker pruning)
            except OSError as error:
                log.error("retention: cannot delete recording %s: %s", entry.path, error)
    return deleted


async def prune(store: CallStore, *, retention_days: float, recording_dirs: Iterable[str | Path] = (),
                now: float | None = None) -> PruneResult:
    """Delete the records created more than ``retention_days`` ago and their recordings (see the module)."""
    cutoff = retention_cutoff(retention_days, time.time() if now is None else now)
    if cutoff is None:
        return PruneResult(0, 0)
    pruned: list[tuple[str, str | None]] = []
    while True:
        batch = await store.delete_calls_before(cutoff, PRUNE_BATCH)
        pruned.extend(batch)
        if len(batch) < PRUNE_BATCH:
            break
    call_sids = {call_sid for call_sid, _ in pruned}
    # Only a bare file name is looked for: a record can never point the pruner outside the recordings directory.
    names = {os.path.basename(name) for _, name in pruned if name and os.path.basename(name) == name}
    directories = [d for d in recording_dirs if d]
    recordings = await asyncio.to_thread(_delete_recordings, directories, call_sids, names, cutoff) if directories else 0
    return PruneResult(len(pruned), recordings)


async def run_retention(store: CallStore, *, retention_days: float, recording_dirs: Iterable[str | Path] = (),
                        interval_s: float = PRUNE_INTERVAL_S, clock: Callable[[], float] = time.time) -> None:
    """Prune now, then every ``interval_s``, until cancelled; a failure (database unreachable) is logged and
    retried at the next interval. Returns at once when records are kept forever."""
    if retention_days <= 0:
        return
    directories = [d for d in recording_dirs if d]
    while True:
        try:
            result = await prune(store, retention_days=retention_days, recording_dirs=directories, now=clock())
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure is logged and retried; the loop must not die
            log.error("retention: pruning call records failed (retried in %.0f s): %s: %s", interval_s,
                      type(error).__name__, error)
        else:
            if result.records or result.recordings:
                log.info("retention: pruned %d call record(s) and %d recording(s) older than %g day(s)",
                         result.records, result.recordings, retention_days)
        await asyncio.sleep(interval_s)
