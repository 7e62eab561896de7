"""What the parts of a :class:`~gateway.media_stream.session.MediaStreamSession` (ModelLinks, CallLeases,
CallRecordWrites) read of the session they make up, declared once for the type checker. At run time this class adds
nothing: ``MediaStreamSession.__init__`` sets every attribute and each part defines its methods."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.call import Call, Output
    from gateway.config import Settings
    from gateway.media_stream.services import CallServices
    from gateway.observe.droplog import DropCounter
    from gateway.observe.ledger import CallLedger
    from gateway.twilio.security import StreamGrant


class SessionPart:
    """The state of one media stream (see ``MediaStreamSession.__init__`` for what each attribute holds)."""

    settings: Settings
    services: CallServices
    grant: StreamGrant | None
    call: Call
    ledger: CallLedger
    _done: asyncio.Event
    _log_context: dict[str, str]
    _model_drops: DropCounter
    _dropped_audio_frames: int
    _arrived: float
    _speech_started_at: float
    _leases: list[str]
    _registered: bool

    if TYPE_CHECKING:  # defined by the session or by one of its parts
        def _dispatch(self, outputs: list[Output]) -> None: ...

        async def _take_leases(self, number: str) -> None: ...
