"""The direct-receive ASGI extension: how the shell takes Twilio's frames by callback, without a task per frame.

A server that offers it (the gateway's own, :mod:`gateway.server.direct_ws`) advertises it in
``scope["extensions"]`` under :data:`DIRECT_RECEIVE` with an ``attach`` function; the app attaches a
:data:`Receiver`, and from then on each complete text message is given to it (as UTF-8 bytes) as soon as it is
parsed. The contract lives here, with the shell that uses it, so the shell imports nothing of the server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

DIRECT_RECEIVE = "gateway.websocket.direct_receive"

Receiver = Callable[[bytes], None]


def direct_receive(scope: Mapping[str, Any]) -> Callable[[Receiver | None], None] | None:
    """The attach function of the server this connection came through, or None (another server: plain ASGI)."""
    extension = scope.get("extensions", {}).get(DIRECT_RECEIVE)
    return extension.get("attach") if isinstance(extension, dict) else None
