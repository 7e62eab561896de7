"""Call records that survive the database: written when a call starts and when it ends, spooled when the store
cannot take them, replayed when it is back, and marked lost when the instance holding a call stops.

:class:`CallRecords` is what a live call writes through (``CallServices.records``):

* :meth:`~CallRecords.start`, once the call's stream has started and the call is registered in the shared state:
  a record in progress with what is known (SIDs, direction, numbers, the start, the model, and the instance that
  holds the call: ``holder``);
* :meth:`~CallRecords.finish`, at its end: the whole final record (:meth:`gateway.store.CallStore.finish_call`).

Each write gets a bounded time (``START_WRITE_TIMEOUT_S``, ``FINISH_WRITE_TIMEOUT_S``; the PostgreSQL store
retries a broken connection on a fresh one within it). A write the store does not take in time goes to the local
spool (:mod:`gateway.store.spool`), so a call's end never waits longer than that on the database; and for
``STORE_DOWN_HOLD_S`` after such a failure, writes go straight to the spool (an outage does not cost every call's
end the whole bound). :meth:`~CallRecords.run`, a task of the app, replays the spool at start-up and then while
anything waits in it, backing off while the store still fails, and sweeps for lost calls.

Lost calls (a worker killed with ``-9``, a crashed host). A record in progress names its holder; a live call is
in the shared state's registry of live calls (``register_call``), renewed every 10 s with a 30 s TTL
(:mod:`gateway.media_stream.leases`), and its start record is written only after it is registered. Every instance
sweeps the open records (a holder, no end; a partial index keeps this to the few live calls) every
``SWEEP_INTERVAL_S`` and at start-up, and marks lost (:func:`gateway.store.model.merge_lost`: status and outcome
``lost``, every known field kept, ``end_reason`` saying so):

* a record held by this very instance that it is not running: a restart that kept its ``INSTANCE_ID`` (a worker
  replaced by ``gateway serve --workers``), found at once;
* a record held by another instance that the registry no longer lists: that instance stopped renewing, so it is
  gone; found within the registry's 30 s TTL plus one sweep. When the shared state does not answer, the sweep
  waits for the next round (it never guesses).

The registry must therefore be shared by every instance that shares the store (``REDIS_URL``, as leases and
control already need; the workers of one host share ``STATE_SQLITE_PATH``). A call the registry lost while it was
alive (its registration failed: the registry fails open) may be marked lost too early; its own final record then
replaces the mark (:func:`~gateway.store.model.merge_final`), as does Twilio's final status of an outbound call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Iterable, Mapping

from gateway.observe import metrics
from gateway.store.base import CallStore
from gateway.store.model import INBOUND, OUTBOUND_API, CallRecord, as_final_record
from gateway.store.spool import RecordSpool

log = logging.getLogger("gateway.store")

START_WRITE_TIMEOUT_S = 3.0
FINISH_WRITE_TIMEOUT_S = 5.0
STORE_DOWN_HOLD_S = 5.0  # after a write failed: writes go straight to the spool this long (replay probes the store)
SWEEP_INTERVAL_S = 10.0
REPLAY_BACKOFF_S = (1.0, 60.0)  # first wait after a failed replay, doubling up to the second
REPLAY_WRITE_TIMEOUT_S = 5.0
LOST_REASON = ("lost: the instance holding the call ({holder}) stopped before the call's end was written; what was "
               "known at its start is kept")


def start_record(*, call_sid: str, stream_sid: str, direction: str, from_: str, to: str, started_at: float,
                 holder: str, model: str | None) -> CallRecord:
    """What is known of a call when its stream starts (``direction``: "inbound" or "outbound")."""
    return CallRecord(call_sid=call_sid, stream_sid=stream_sid or None, to=to, from_=from_, status="in-progress",
                      direction=INBOUND if direction == INBOUND else OUTBOUND_API, created_at=started_at,
                      started_at=started_at, holder=holder, model=model)


class CallRecords:
    """Writes call records through ``store``, spooling what it does not take (``spool``; None: logged as lost)."""

    def __init__(self, store: CallStore, spool: RecordSpool | None, *, instance_id: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.spool = spool if spool is not None and spool.max_bytes > 0 else None
        self.instance_id = instance_id
        self._clock = clock
        self._down_until = 0.0
        self._spooled = asyncio.Event()  # something was spooled: the replay loop looks sooner

    # ---- what a live call writes

    async def start(self, record: CallRecord) -> None:
        """The record of a call whose stream started (see the module docstring); never raises."""
        await self._write("start", record, START_WRITE_TIMEOUT_S)

    async def finish(self, record: CallRecord | Mapping[str, Any]) -> None:
        """The call's final record (a CallRecord or the live call's summary); never raises."""
        try:
            final = as_final_record(record)
        except Exception:
            log.exception("the call's final record is malformed: not written")
            return
        if final.call_sid:
            await self._write("finish", final, FINISH_WRITE_TIMEOUT_S)

    async def _apply(self, operation: str, record: CallRecord) -> None:
        if operation == "start":
            await self.store.start_call(record)
        else:
            await self.store.finish_call(record)

    async def _write(self, operation: str, record: CallRecord, timeout_s: float) -> None:
        if self._clock() >= self._down_until:
            try:
                await asyncio.wait_for(self._apply(operation, record), timeout_s)
                return
            except Exception as error:  # noqa: BLE001 - whatever the store raised: the record goes to the spool
                self._down_until = self._clock() + STORE_DOWN_HOLD_S
                log.warning("the store did not take the call record (%s) call_sid=%s: %s: %s; spooling it",
                            operation, record.call_sid[:40], type(error).__name__, str(error).strip()[:200])
        await self._to_spool(operation, record)

    async def _to_spool(self, operation: str, record: CallRecord) -> None:
        if self.spool is None:
            metrics.RECORDS_LOST.labels("no_spool").inc()
            log.error("call record LOST call_sid=%s (%s): the store did not take it and RECORD_SPOOL_MAX_MB is 0",
                      record.call_sid[:40], operation)
            return
        if await asyncio.to_thread(self.spool.append, operation, record):
            self._spooled.set()

    # ---- the spool, replayed

    async def replay(self) -> tuple[int, bool]:
        """Write what waits in the spool to the store, file by file; a file goes once all its lines are written.
        Returns (lines written, whether the store took everything). Stops at the first write the store refuses:
        the rest waits for the next replay."""
        if self.spool is None:
            return 0, True
        claims = await asyncio.to_thread(self.spool.take_claims)
        written, ok = 0, True
        try:
            for claimed in claims:
                entries = await asyncio.to_thread(claimed.entries)
                for entry in entries:
                    try:
                        await asyncio.wait_for(self._apply(entry.operation, entry.record), REPLAY_WRITE_TIMEOUT_S)
                    except Exception as error:  # noqa: BLE001 - the store is still down: later
                        log.warning("spooled call records not written yet (%s: %s); retried later",
                                    type(error).__name__, str(error).strip()[:200])
                        ok = False
                        break
                    written += 1
                    metrics.RECORDS_REPLAYED.inc()
                if not ok:
                    break
                await asyncio.to_thread(claimed.done)
        finally:
            for claimed in claims:
                claimed.release()
        if written:
            log.info("%d spooled call record write(s) written to the store", written)
        if ok:
            self._down_until = 0.0
        return written, ok

    # ---- lost calls

    async def sweep_lost(self, shared: Any, live: Callable[[], Iterable[str]]) -> list[str]:
        """Mark lost the open records whose holder is gone (see the module docstring); their call SIDs. ``live``
        gives the calls this instance holds, asked after the records are read (a call that started meanwhile is
        among them)."""
        from gateway.state import StateUnavailable

        records = await self.store.open_calls()
        live_sids = set(live())
        marked: list[str] = []
        for record in records:
            if record.call_sid in live_sids:
                continue
            if record.holder != self.instance_id:
                if shared is None:
                    continue
                try:
                    if await shared.call_holder(record.call_sid) is not None:
                        continue
                except StateUnavailable as error:
                    log.warning("lost-call sweep skipped: the shared state did not answer (%s)", error)
                    break
            if await self.store.mark_lost(record.call_sid, LOST_REASON.format(holder=record.holder)) is not None:
                marked.append(record.call_sid)
                metrics.CALLS_MARKED_LOST.inc()
                log.warning("call marked lost call_sid=%s: its instance %s stopped before the call's end was "
                            "written", record.call_sid[:40], record.holder)
        return marked

    # ---- the background task

    async def run(self, shared: Any, live: Callable[[], Iterable[str]], *,
                  sweep_interval_s: float = SWEEP_INTERVAL_S) -> None:
        """Until cancelled: replay the spool (at once, then whenever something waits in it, backing off while the
        store fails) and sweep for lost calls (at once, then every ``sweep_interval_s``). Failures are logged."""
        backoff, ok = REPLAY_BACKOFF_S[0], True
        next_replay = next_sweep = self._clock()
        while True:
            now = self._clock()
            if now >= next_replay:
                try:
                    pending = self.spool is not None and await asyncio.to_thread(self.spool.pending)
                    _, ok = await self.replay() if pending else (0, True)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("replaying the call record spool failed")
                    ok = False
                if ok:
                    backoff, next_replay = REPLAY_BACKOFF_S[0], self._clock() + sweep_interval_s
                else:
                    next_replay = self._clock() + backoff
                    backoff = min(backoff * 2, REPLAY_BACKOFF_S[1])
            if now >= next_sweep:
                try:
                    await self.sweep_lost(shared, live)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # noqa: BLE001 - the store is down: the next sweep
                    log.warning("lost-call sweep failed (retried in %g s): %s: %s", sweep_interval_s,
                                type(error).__name__, str(error).strip()[:200])
                next_sweep = self._clock() + sweep_interval_s
            wait = max(0.0, min(next_replay, next_sweep) - self._clock())
            try:
                # Something spooled wakes the replay early; while the store is failing it keeps to its backoff.
                # (asyncio.timeout, not wait_for: no task of its own while the app rests.)
                async with asyncio.timeout(wait):
                    await self._spooled.wait()
                self._spooled.clear()
                if ok:
                    next_replay = self._clock()
            except TimeoutError:
                pass
