"""Run the gateway app under uvicorn, with the same server limits everywhere (``gateway serve``, demo, tests).

:func:`uvicorn_options` turns the settings into uvicorn's options, so what the tests exercise is what production
runs: a cap on open connections (``MAX_CONNECTIONS``), and on one address's share of them
(``MAX_CONNECTIONS_PER_ADDRESS``, ``MAX_UNFINISHED_HEADS_PER_ADDRESS``: :mod:`gateway.server.connection_caps`), a deadline
for a connection to send its request headers (``HTTP_HEADER_TIMEOUT_S``; uvicorn itself has none, so a client that
opens a socket and trickles bytes would hold it forever), a bounded head size (413 past it) and WebSocket pings.

The server and protocol classes here subclass uvicorn's and use private names of theirs (:data:`H11_PRIVATE`,
:data:`SERVER_PRIVATE`); like :mod:`gateway.server.direct_ws`, they are checked at import, and a part whose names are
missing runs on uvicorn's plain code instead, said once by a warning and ``gateway_uvicorn_fallback{part}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from types import FrameType
from typing import Any, AsyncIterator, Callable, Iterator

import h11
import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from gateway.api.auth import client_key
from gateway.config import Settings
from gateway.server.connection_caps import OVER_HEAD_SIZE, AddressTable, table_of
from gateway.server.direct_ws import MISSING as DIRECT_WS_MISSING
from gateway.server.direct_ws import WEBSOCKET_PROTOCOL, missing_internals, report_fallbacks

log = logging.getLogger("gateway.server.runner")

MAX_HEADER_BYTES = 16 * 1024  # a request head, up to its blank line: Twilio's carry a few hundred bytes
# What a client may go on sending of a body the app answered without reading (a 401 before the body came): the
# routes read at most 64 KiB of body.
MAX_UNREAD_BODY_BYTES = 64 * 1024
HEAD_TOO_LARGE = (b"HTTP/1.1 413 Content Too Large\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
                  b"content-length: %d\r\n\r\n%s")
HEAD_TOO_LARGE_BODY = b"request head over %d bytes\n" % MAX_HEADER_BYTES
LINGER_S, LINGER_BYTES = 2.0, 1 << 20  # after a 413, what the rest of a head may still send before the close


class HeaderDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the bounds uvicorn lacks:

    * a deadline for each request head (slowloris): the first one, and every next one on a kept-alive connection
      (uvicorn's own keep-alive timer is disarmed by any byte, so a client trickling a head would hold it forever);
      a response sent before the body was read (a 401, say) re-arms it too, so an unread body cannot hold it;
    * a cap on the size of a request head (413 as soon as it is known to be past ``MAX_HEADER_BYTES``, before h11
      parses it: h11 alone bounds only a head still incomplete, and answers 400), and on the bytes of an unread body;
    * a real cap on open connections: uvicorn's ``limit_concurrency`` only answers 503 to plain HTTP requests, it
      never refuses a socket and lets WebSocket upgrades through, so past the cap a new socket is closed at once;
    * one address's share of them (:mod:`gateway.server.connection_caps`: open connections and unfinished heads per
      address, trusted proxies exempt), when ``settings`` is set.

    Once the connection became a WebSocket, none of this applies (its frames are bounded by the gateway); its
    socket keeps its place in the per-address count until it closes."""

    header_timeout_s = 10.0
    settings: Settings | None = None  # the per-address caps (gateway.server.runner.uvicorn_options sets it)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._head_bytes = 0  # of the head under way, while no request is
        self._unread_bytes = 0  # of a body answered without being read (then, while lingering: anything)
        self._head_tail = b""  # its last 3 bytes: a blank line may straddle two reads
        self._lingering = False  # answered 413: what still comes is discarded until the close
        self._served = False  # a request head was complete on this connection
        self._header_deadline: asyncio.TimerHandle | None = None
        self._addresses: AddressTable | None = table_of(self.server_state, self.settings) if self.settings else None
        if self._addresses is not None:
            admitted = self._addresses.admit(transport, self.client[0] if self.client else None, len(self.connections))
        else:
            admitted = self.limit_concurrency is None or len(self.connections) <= self.limit_concurrency
        if not admitted:
            transport.close()
            return
        self._arm_deadline()

    def _arm_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _count_waiting(self) -> None:
        """Tell the address table whether this connection holds an unfinished request head: a new socket until its
        first head is complete, or a kept-alive one once a next head has begun. A kept-alive connection idle
        between requests is not one (a proxy keeps a pool of them; uvicorn closes them after 5 s)."""
        if self._addresses is None:
            return
        waiting = self._waiting_for_head() and self.transport.get_protocol() is self  # not upgraded
        if not waiting:
            self._served = True
        unfinished = waiting and (not self._served or self._head_bytes > 0) and not self.transport.is_closing()
        self._addresses.waiting_for_head(self.transport, unfinished)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._head_bytes, self._head_tail, self._unread_bytes = 0, b"", 0
        if not self.transport.is_closing():
            self._arm_deadline()
        self._count_waiting()

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # after a 413: discarded
            self._unread_bytes += len(data)
            if self._unread_bytes > LINGER_BYTES:
                self.transport.close()
            return
        if self._waiting_for_head():
            if self.conn.their_state is h11.IDLE:  # a new request head
                if self._head_too_large(data):
                    self._refuse_head()
                    return
            else:  # the rest of a body the app answered without reading: discarded, and bounded
                self._unread_bytes += len(data)
                if self._unread_bytes > MAX_UNREAD_BODY_BYTES:
                    self._linger()
                    return
        super().data_received(data)
        self._count_waiting()

    def _head_too_large(self, data: bytes) -> bool:
        """Is the head under way past MAX_HEADER_BYTES, counting up to its blank line (a body that came in the
        same read is not the head's)?"""
        seen = self._head_tail + data
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self._head_bytes += len(data)
            self._head_tail = seen[-3:]
            return self._head_bytes > MAX_HEADER_BYTES
        return self._head_bytes - len(self._head_tail) + end + 4 > MAX_HEADER_BYTES

    def _refuse_head(self) -> None:
        self.transport.write(HEAD_TOO_LARGE % (len(HEAD_TOO_LARGE_BODY), HEAD_TOO_LARGE_BODY))
        self._linger()
        if self._addresses is not None:
            self._addresses.refused.refuse(OVER_HEAD_SIZE, client_key(self.client[0] if self.client else None))

    def _linger(self) -> None:
        """A lingering close, once the answer is written: closing with bytes of the request unread would reset the
        connection, and the client's kernel would drop the answer with it. So: our end shut, what still comes read
        and discarded (at most LINGER_BYTES, for at most LINGER_S), then closed."""
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._unread_bytes = 0
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def _headers_too_slow(self) -> None:
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return  # closed, or upgraded to a WebSocket: no longer ours
        if self._waiting_for_head():  # no complete request head within the deadline
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        if self._addresses is not None:
            self._addresses.release(self.transport)
        super().connection_lost(exc)


# uvicorn's private names used here: (methods, attributes) of H11Protocol (HeaderDeadlineH11Protocol overrides
# on_response_complete and reads the rest), of its RequestResponseCycle, and of uvicorn.Server (QuietServer and
# DrainingServer override capture_signals, handle_exit and on_tick, and read or set started and should_exit).
H11_PRIVATE = (("on_response_complete",), ("server_state", "client", "connections", "limit_concurrency", "loop",
                                           "cycle", "conn", "transport"))
CYCLE_PRIVATE = ((), ("response_complete",))
SERVER_PRIVATE = (("capture_signals", "handle_exit", "on_tick"), ("started", "should_exit"))
FALLBACKS: dict[str, list[str]] = {
    "direct_ws": DIRECT_WS_MISSING,
    "http": missing_internals(H11Protocol, *H11_PRIVATE) + [
        f"RequestResponseCycle.{name}" for name in missing_internals(RequestResponseCycle, *CYCLE_PRIVATE)],
    "server": missing_internals(uvicorn.Server, *SERVER_PRIVATE),
}


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for ``settings`` (host, port and app excepted)."""
    report_fallbacks(FALLBACKS)
    protocol = type("GatewayH11Protocol", (HeaderDeadlineH11Protocol,),
                    {"header_timeout_s": settings.http_header_timeout_s, "settings": settings})
    return dict(
        # uvicorn's h11 protocol with the bounds it lacks; uvicorn's own when its private names are missing.
        http="h11" if FALLBACKS["http"] else protocol,
        # uvicorn's websockets-sansio protocol with a direct path for media streams (gateway.server.direct_ws): an app
        # that does not attach a receiver (the bench's null relay) gets plain ASGI, and so does every app when uvicorn
        # lacks a private name the direct path uses.
        ws=WEBSOCKET_PROTOCOL,
        ws_max_size=1 << 20,  # hard cap; frames over MAX_FRAME_BYTES are dropped by the gateway itself
        ws_per_message_deflate=False,  # Twilio does not negotiate it and base64 audio barely compresses
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        # X-Forwarded-* are handled by the app itself (gateway.server.app), which keeps the real peer address to decide
        # whether to believe them; uvicorn's own handling would trust 127.0.0.1 by default and hide the peer.
        proxy_headers=False,
    )


class QuietServer(uvicorn.Server):
    """uvicorn without its signal handling, for a server beside the process's own (tests, the metrics listener):
    uvicorn >= 0.29 takes SIGINT and SIGTERM for the whole ``serve`` and re-raises them at its end."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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
    server = QuietServer(config)  # the caller owns signals
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
