"""The gateway a replay calls when it is given no URL: ours, in-process on 127.0.0.1, with the embedded model.

It also collects the assistant's transcripts per call (from the gateway's call events), so that
``agent_says`` / ``agent_never_says`` can be checked. A gateway at a URL gives no transcripts.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.config import Settings
from gateway.tooling.replay.dial import TwilioAccount

REPLAY_PUBLIC_URL = "https://gateway.tooling.replay.invalid"  # .invalid: a name that can never resolve (RFC 2606)


@dataclass
class Target:
    """Where calls go: ``ws_url``; ``in_process`` when it is our own gateway started for the replay."""

    ws_url: str
    in_process: bool = False
    audio_format: str | None = None  # the in-process gateway's mode
    app: Any = None  # the in-process gateway's Starlette app
    twilio: TwilioAccount | None = None  # sign like Twilio (webhook first, then the signed stream)
    _transcripts: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def transcripts(self, call_sid: str) -> list[str] | None:
        """The assistant's transcripts of one call (by its callSid), or None when the gateway is not ours."""
        return list(self._transcripts.get(call_sid, [])) if self.in_process else None

    @property
    def local_server(self) -> Any:
        """The in-process gateway's embedded model server (None for a gateway at a URL)."""
        state = getattr(getattr(self.app, "state", None), "gateway", None)
        return getattr(state, "local_server", None)


@contextlib.asynccontextmanager
async def local_gateway(
    audio_format: str | None = None, settings: Settings | None = None, observer: Any = None
) -> AsyncIterator[Target]:
    """Serve our gateway with the embedded model (any API key is ignored) until the block exits.

    ``observer`` also sees every call event (as ``gateway.server.app.create_app``'s observer does)."""
    from gateway.server.app import create_app
    from gateway.call import Call, CallEvent, TranscriptReceived
    from gateway.server.runner import running_app

    base = settings if settings is not None else Settings.from_env()
    base = replace(base, api_key="", audio_format=audio_format or base.audio_format)
    target = Target("", in_process=True, audio_format=base.audio_format)
    if base.twilio_auth_token:
        # The gateway checks signatures: call it the way Twilio does, with the same token. Signatures are made over
        # its public URL; without one, a name of our own (the phone calls 127.0.0.1 anyway and signs over this).
        if not base.public_url:
            base = replace(base, public_url=REPLAY_PUBLIC_URL)
        target.twilio = TwilioAccount(base.twilio_auth_token, base.public_url, base.twilio_account_sid)

    def observe(call: Call, event: CallEvent) -> None:
        if isinstance(event, TranscriptReceived) and event.role == "assistant":
            target._transcripts[call.call_sid].append(event.text)
        if observer is not None:
            observer(call, event)

    target.app = create_app(base, observer=observe)
    async with running_app(target.app) as http_url:
        target.ws_url = http_url.replace("http://", "ws://", 1) + "/media-stream"
        yield target
