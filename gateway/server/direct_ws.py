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

The direct path overrides and reads uvicorn's private names (:data:`PRIVATE_METHODS`, :data:`PRIVATE_ATTRIBUTES`).
They are checked at import (:func:`missing_internals`): when one is missing (a uvicorn that renamed it),
:data:`WEBSOCKET_PROTOCOL` is uvicorn's own protocol unchanged, plain ASGI (the media stream then reads frames
through ``receive()``), and :func:`report_fallbacks` says so once, with a warning and the metric
``gateway_uvicorn_fallback{part="direct_ws"}``. pyproject.toml bounds uvicorn to the releases tried.
"""

from __future__ import annotations

import ast
import inspect
import logging
import textwrap
from typing import Any

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # a uvicorn without it: plain ASGI through whatever uvicorn's "auto" is
    from uvicorn.protocols.websockets.auto import (  # type: ignore[assignment]  # the same role, another class
        AutoWebSocketsProtocol as WebSocketsSansIOProtocol,
    )

from gateway.media_stream.direct import DIRECT_RECEIVE, Receiver

log = logging.getLogger("gateway.server.direct_ws")

# uvicorn's private names the direct path relies on: the methods it overrides, the attributes it reads or sets.
PRIVATE_METHODS = ("handle_connect", "send_receive_event_to_app")
PRIVATE_ATTRIBUTES = ("frames", "curr_msg_data_type", "queue", "close_sent", "scope", "transport")


def _assigned_attributes(cls: type) -> set[str] | None:
    """The names the code of ``cls`` and its bases assigns on ``self`` or in a class body; None when some source
    cannot be read (an installation without .py files: nothing to check, the version bound stands)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__ == "builtins":
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            return None
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name) and node.value.id == "self"):
                names.add(node.attr)
        for statement in tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []:
            for target in getattr(statement, "targets", [getattr(statement, "target", None)]):
                if isinstance(target, ast.Name):
                    names.add(target.id)
    return names


def missing_internals(cls: Any, methods: tuple[str, ...], attributes: tuple[str, ...]) -> list[str]:
    """The private names the gateway uses that ``cls`` does not have: of ``methods``, those it lacks; of
    ``attributes``, those its code never assigns (an instance attribute exists only once ``__init__`` ran, so
    the class's source is read instead)."""
    if not isinstance(cls, type):
        return ["(no class)"]
    missing = [name for name in methods if not callable(getattr(cls, name, None))]
    assigned = _assigned_attributes(cls)
    if assigned is not None:
        missing += [name for name in attributes if name not in assigned and not hasattr(cls, name)]
    return missing


_reported: set[str] = set()


def report_fallbacks(fallbacks: dict[str, list[str]]) -> None:
    """Each part that runs on plain uvicorn (its private names missing): a warning, once per process, and the metric
    ``gateway_uvicorn_fallback{part}`` (1 for it, 0 for a part on the gateway's own path)."""
    from gateway.observe.metrics import UVICORN_FALLBACK

    for part, missing in fallbacks.items():
        UVICORN_FALLBACK.labels(part).set(1 if missing else 0)
        if missing and part not in _reported:
            _reported.add(part)
            log.warning("uvicorn %s lacks %s, which gateway's %s uses: serving through uvicorn's plain protocol "
                        "instead (%s); install a uvicorn in pyproject.toml's bounds", _uvicorn_version(),
                        ", ".join(missing), part, FALLBACK_COST[part])


FALLBACK_COST = {
    "direct_ws": "media frames go through ASGI receive(), a task switch each",
    "http": "no request-head deadline, head-size cap or per-address connection caps: put a proxy that has them "
            "in front",
    "server": "SIGTERM stops at once, without the drain",
}


def _uvicorn_version() -> str:
    import uvicorn

    return str(getattr(uvicorn, "__version__", "?"))


class PlainWebSocketProtocol(WebSocketsSansIOProtocol):
    """The fallback: uvicorn's protocol unchanged (plain ASGI), only leaving the per-address count when its socket
    closes (as :class:`DirectWebSocketProtocol` does), through asyncio's public protocol methods alone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        server_state = kwargs.get("server_state", args[1] if len(args) > 1 else None)
        self._gateway_addresses = getattr(server_state, "gateway_addresses", None)
        self._gateway_transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self._gateway_transport = transport
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._gateway_addresses is not None and self._gateway_transport is not None:
            self._gateway_addresses.release(self._gateway_transport)


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
        # The socket came through the h11 protocol's per-address count (gateway.server.connection_caps); it leaves it when
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


MISSING = missing_internals(WebSocketsSansIOProtocol, PRIVATE_METHODS, PRIVATE_ATTRIBUTES)
# What uvicorn is given as ``ws=`` (gateway.server.runner.uvicorn_options).
WEBSOCKET_PROTOCOL: type = PlainWebSocketProtocol if MISSING else DirectWebSocketProtocol
