"""A call's record, written when its stream starts and completed at its end (:mod:`gateway.store.records`: the
spool when the store does not take it, the lost-call sweep that relies on the start record naming its holder).

A mixin of :class:`gateway.media_stream.session.MediaStreamSession`: it works on the session's own state.
"""

from __future__ import annotations

from typing import Any

from gateway.media_stream.part import SessionPart
from gateway.observe.logs import mask_number
from gateway.store.records import start_record


class CallRecordWrites(SessionPart):
    """The call's start (after its leases and registry entry) and its end, through ``services.records``."""

    async def _call_started(self) -> None:
        """Leases and the registry first (the limits may end the call), then the record of a call in progress,
        naming this instance as its holder: a record is never open without its registry entry, so no sweep takes
        a live call for lost."""
        if self.services.shared is not None:
            await self._take_leases(self.ledger.to_number)
        records = self.services.records
        if records is not None and not self._done.is_set():
            ledger, full = self.ledger, self.settings.log_full_numbers
            await records.start(start_record(
                call_sid=ledger.call_sid, stream_sid=ledger.stream_sid, direction=ledger.direction,
                from_=mask_number(ledger.from_number, full), to=mask_number(ledger.to_number, full),
                started_at=ledger.started_at, holder=self.settings.instance_id, model=ledger.model))

    async def _save_record(self, record: dict[str, Any]) -> None:
        """Keep the call's final record, whatever happened to the call (bounded; the spool when the store does
        not take it; never raises). Called before the leases go: while its registry entry lives, no sweep takes
        the call for lost."""
        if record["call_sid"] and self.services.records is not None:
            await self.services.records.finish({**record, "holder": self.settings.instance_id})
