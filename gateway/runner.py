"""Run the gateway app under uvicorn, with the same server limits everywhere (``gateway serve``, demo, tests).

:func:`uvicorn_options` turns the settings into uvicorn's options, so what the tests exercise is what production
runs: a cap on open connections (``MAX_CONNECTIONS``, uvicorn answers 503 past it), a deadline for a connection to
send its request headers (``HTTP_HEADER_TIMEOUT_S``; uvicorn itself has none, so a client that opens a socket and
trickles bytes would hold it forever), a bounded header size and WebSocket pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import sys
from types import FrameType
from typing import Any, AsyncIterator, Callable

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.config import ConfigError, Settings
from gateway.direct_ws import DirectWebSocketProtocol

log = logging.getLogger("gateway.runner")

MAX_HEADER_BYTES = 16 * 1024  # Twilio's webhooks and upgrades carry a few hundred bytes of headers
# What a connection may send before its first request head is parsed: a head, plus the start of a body that came
# in the same packets (the routes accept at most 64 KiB of body).
MAX_BYTES_BEFORE_REQUEST = MAX_HEADER_BYTES + 64 * 1024


class HeaderDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with three bounds uvicorn lacks:

    * a deadline for each request head (slowloris): the first one, and every next one on a kept-alive connection
      (uvicorn's own keep-alive timer is disarmed by any byte, so a client trickling a head would hold it forever);
      a response sent before the body was read (a 401, say) re-arms it too, so an unread body cannot hold it;
    * a cap on the bytes a connection may send while no request is under way;
    * a real cap on open connections: uvicorn's ``limit_concurrency`` only answers 503 to plain HTTP requests, it
      never refuses a socket and lets WebSocket upgrades through, so past the cap a new socket is closed at once.

    Once the connection became a WebSocket, none of this applies (its frames are bounded by the gateway)."""

    header_timeout_s = 10.0

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._header_deadline: asyncio.TimerHandle | None = None
        if self.limit_concurrency is not None and len(self.connections) > self.limit_concurrency:
            transport.close()
            return
        self._arm_deadline()

    def _arm_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._head_bytes = 0
        if not self.transport.is_closing():
            self._arm_deadline()

    def data_received(self, data: bytes) -> None:
        # h11's own limit only applies while a head is incomplete; a huge head that arrives at once would pass.
        if self._waiting_for_head():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_BYTES_BEFORE_REQUEST:
                self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n"
                                     b"content-length: 0\r\n\r\n")
                self.transport.close()
                return
        super().data_received(data)

    def _headers_too_slow(self) -> None:
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return  # closed, or upgraded to a WebSocket: no longer ours
        if self._waiting_for_head():  # no complete request head within the deadline
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        super().connection_lost(exc)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for ``settings`` (host, port and app excepted)."""
    protocol = type("GatewayH11Protocol", (HeaderDeadlineH11Protocol,),
                    {"header_timeout_s": settings.http_header_timeout_s})
    return dict(
        http=protocol,
        # uvicorn's websockets-sansio protocol with a direct path for media streams (gateway.direct_ws): an app that
        # does not attach a receiver (the bench's null relay) gets plain ASGI.
        ws=DirectWebSocketProtocol,
        ws_max_size=1 << 20,  # hard cap; frames over MAX_FRAME_BYTES are dropped by the gateway itself
        ws_per_message_deflate=False,  # Twilio does not negotiate it and base64 audio barely compresses
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        # X-Forwarded-* are handled by the app itself (gateway.app), which keeps the real peer address to decide
        # whether to believe them; uvicorn's own handling would trust 127.0.0.1 by default and hide the peer.
        proxy_headers=False,
    )


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with a drain: the first SIGTERM (or Ctrl-C) does not close live calls.

    It calls ``start_drain`` (the app stops taking new calls: readiness answers 503, a new call is told politely),
    keeps serving the calls in progress until ``drained()`` says none is left or ``drain_timeout_s`` passes, and then
    shuts down as usual and exits 0. A second signal stops at once (uvicorn's own shutdown: open WebSockets get 1012).
    """

    def __init__(self, config: uvicorn.Config, *, start_drain: Callable[[], None], drained: Callable[[], bool],
                 drain_timeout_s: float) -> None:
        super().__init__(config)
        self._start_drain = start_drain
        self._drained = drained
        self.drain_timeout_s = drain_timeout_s
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_deadline is None and not self.should_exit and self.started:
            # Runs as a signal handler: only set state here; on_tick (on the loop) does the rest.
            self.drain_deadline = time.monotonic() + self.drain_timeout_s
            self._start_drain()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            if self._drained():
                log.info("drained: no call left; shutting down")
                self.should_exit = True
            elif time.monotonic() >= self.drain_deadline:
                log.warning("drain timeout (%g s) reached with calls still live; shutting down",
                            self.drain_timeout_s)
                self.should_exit = True
        return await super().on_tick(counter)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def running_app(app: Starlette, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                      settings: Settings | None = None) -> AsyncIterator[str]:
    """Serve ``app`` until the block exits; yields ``http://host:port``. ``settings`` gives the server limits
    (the app's own, when it is the gateway; the defaults otherwise)."""
    port = port or free_port(host)
    if settings is None:
        settings = getattr(app.state, "settings", None) or Settings()
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", **uvicorn_options(settings))
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the caller owns signals
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


def serve_gateway(settings: Settings, sockets: list[socket.socket] | None = None) -> int:
    """Run the gateway under uvicorn with the drain (``gateway serve``, and each of its workers); the exit status.
    ``sockets``: an already listening socket (workers share their parent's)."""
    from gateway.app import create_app

    try:
        app = create_app(settings)
    except ConfigError as error:
        print(f"gateway serve: {error}", file=sys.stderr)
        return 2
    # log_config=None: uvicorn's own lines go through the same formatter as ours (gateway.observe.logs).
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            log_config=None, **uvicorn_options(settings))
    server = DrainingServer(config, start_drain=lambda: app.state.gateway.start_drain(),
                            drained=lambda: app.state.gateway.drained(), drain_timeout_s=settings.drain_timeout_s)
    server.run(sockets=sockets)
    return 0 if server.started else 1
