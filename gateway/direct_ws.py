"""uvicorn's WebSocket protocol with a direct path: text messages handed to the app by callback, in the event
loop's turn that read them.

Through plain ASGI every message takes the same road: uvicorn parses the frame, puts it into a queue, pauses
reading the socket, wakes the app's task, which takes the message and resumes reading. For 50 frames a second per
call that road (a task switch, a queue and two calls into the event loop's poller per frame) costs more than what
the gateway does with a frame. This protocol is uvicorn's own ``websockets-sansio`` implementation unchanged,
plus one ASGI extension, advertised in ``scope["extensions"]`` under :data:`DIRECT_RECEIVE`: an app may attach a
receiver, and from then on each complete text message is given to it (as UTF-8 bytes) as soon as it is parsed,
instead of being queued. Everything else (the handshake, pings, the close, ``websocket.disconnect``, binary
messages, sending) goes the usual way.

The receiver must not wait (it is called from ``data_received``) and must not raise; what it does with a message
is the app's business, so the app bounds its own work (the gateway's outboxes do). A message already queued when
the receiver is attached is still received through ``receive()``: while the queue holds anything, newer messages
queue behind it, so order is kept. An app that attaches nothing (the bench's null relay) gets plain ASGI.
"""

from __future__ import annotations

from typing import Any, Callable

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

DIRECT_RECEIVE = "gateway.websocket.direct_receive"

Receiver = Callable[[bytes], None]


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    """``ws=`` for uvicorn: its websockets-sansio protocol plus the :data:`DIRECT_RECEIVE` extension."""

    _receiver: Receiver | None = None

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][DIRECT_RECEIVE] = {"attach": self._attach}

    def _attach(self, receiver: Receiver | None) -> None:
        """From now on, text messages go to ``receiver`` (None: back to the queue)."""
        self._receiver = receiver

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # The socket came through the h11 protocol's per-address count (gateway.connection_caps); it leaves it when
        # it closes, which only this protocol sees once upgraded.
        self._addresses = getattr(server_state, "gateway_addresses", None)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._addresses is not None:
            self._addresses.release(self.transport)

    def send_receive_event_to_app(self) -> None:
        receiver = self._receiver
        if receiver is None or self.close_sent or self.curr_msg_data_type != "text" or not self.queue.empty():
            super().send_receive_event_to_app()
            return
        frames, self.frames = self.frames, []
        receiver(frames[0] if len(frames) == 1 else b"".join(frames))


def direct_receive(scope: dict[str, Any]) -> Callable[[Receiver | None], None] | None:
    """The attach function of the server this connection came through, or None (another server: plain ASGI)."""
    extension = scope.get("extensions", {}).get(DIRECT_RECEIVE)
    return extension.get("attach") if isinstance(extension, dict) else None
