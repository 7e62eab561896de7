"""The model session's WebSocket: a lean client on websockets' Sans-I/O layer, built for a call's hot path.

websockets' asyncio client gives every received message to a reader task through a queue, and every send goes
through an async context manager; at 50 frames a second per call that bookkeeping costs as much as the gateway's
own work. This client uses the same library's protocol object (framing, masking, UTF-8 and size checks, the close
handshake: :class:`websockets.client.ClientProtocol`) and does its own I/O:

* a received message is handed to ``on_message`` in the event loop's own turn, as the bytes are parsed: no task
  switch, no queue (the call core is synchronous, so nothing waits there);
* :meth:`ModelSocket.send` frames a message and writes it to the transport at once; :attr:`ModelSocket.paused`
  says when the transport's buffer is over its high-water mark and :meth:`ModelSocket.drained` waits for it (the
  shell's outbox decides what to do meanwhile: drop caller audio, never wait in a reader);
* keepalive: a ping every ``ping_interval_s``; no pong within ``ping_timeout_s`` and the connection is dropped, so a
  half-open TCP path is found in seconds;
* :attr:`ModelSocket.closed` resolves, once, with why the connection ended.

Like websockets' own client it honours HTTP(S) proxies from the environment (``HTTPS_PROXY``, ``NO_PROXY``), and
``wss://`` verifies the server with the default trust store (``SSL_CERT_FILE`` to add one).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import struct
import time
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Callable, cast

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidState, InvalidStatus, ProxyError, WebSocketException
from websockets.frames import Frame, Opcode, apply_mask
from websockets.http11 import USER_AGENT, Response
from websockets.protocol import State
from websockets.uri import WebSocketURI, parse_uri

log = logging.getLogger("gateway.model_socket")

ABNORMAL_CLOSURE = 1006
INTERNAL_ERROR = 1011
_MASK_POOL_BYTES = 4096  # 1024 frames' masking keys per os.urandom call


def _text_frame_header(length: int) -> bytes:
    """FIN + text opcode, the MASK bit and the payload length (RFC 6455 5.2); the 4-byte key follows."""
    if length < 126:
        return struct.pack("!BB", 0x81, 0x80 | length)
    if length < 65536:
        return struct.pack("!BBH", 0x81, 0x80 | 126, length)
    return struct.pack("!BBQ", 0x81, 0x80 | 127, length)


# A Retry-After further out than this is taken as this (a call gives up long before; the bound keeps it a number).
MAX_RETRY_AFTER_S = 3600.0


class ModelSocketClosed(ConnectionError):
    """A send on a socket that is closed or closing."""


class UpgradeRefused(InvalidStatus):
    """The server answered the upgrade with an HTTP status (429, 503, 401...): ``status`` and ``retry_after_s``,
    its ``Retry-After`` as a delay from when the answer arrived (None: absent or unreadable)."""

    def __init__(self, response: Response, retry_after_s: float | None) -> None:
        super().__init__(response)
        self.status = response.status_code
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        after = f", Retry-After {self.retry_after_s:g} s" if self.retry_after_s is not None else ""
        return f"HTTP {self.status}: the server refused the WebSocket upgrade{after}"


def parse_retry_after(value: str | None, now_s: float | None = None) -> float | None:
    """``Retry-After`` (RFC 9110 10.2.3) as seconds from now, bounded to [0, MAX_RETRY_AFTER_S]: delay-seconds
    (``"2"``) or an HTTP-date (``"Wed, 21 Oct 2026 07:28:00 GMT"``, against ``now_s``, the wall clock). None when
    absent or unreadable (the caller logs it)."""
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > 64:
        return None
    if text.isascii() and text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # a date with no zone (asctime form, "-0000"): HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    now = time.time() if now_s is None else now_s
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER_S)


class ModelSocket(asyncio.Protocol):
    """One client WebSocket. Open with :meth:`connect`; messages arrive at ``on_message`` (text as UTF-8 bytes)."""

    def __init__(self, protocol: ClientProtocol, on_message: Callable[[bytes], None], *, ping_interval_s: float,
                 ping_timeout_s: float, close_timeout_s: float) -> None:
        self.protocol = protocol
        self.on_message = on_message  # may be replaced while the socket lives (whoever owns it now)
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.close_timeout_s = close_timeout_s
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = self._loop.create_future()
        self.closed: asyncio.Future[str] = self._loop.create_future()  # why it ended, once it has
        self.close_code: int | None = None  # once closed: the code received, else the one we sent, else 1006
        self.paused = False  # the transport's write buffer is over its high-water mark
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._fragments: list[bytes] | None = None  # a message in several frames, until its last
        self._ping: asyncio.TimerHandle | None = None
        self._pong_deadline: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._masks = b""  # masking keys for data frames, 4 bytes each, used once (refilled from os.urandom)
        self._mask_at = 0

    # ---- opening ------------------------------------------------------------------------------

    @classmethod
    async def connect(cls, url: str, on_message: Callable[[bytes], None], *, headers: dict[str, str] | None = None,
                      max_size: int = 1 << 20, open_timeout_s: float = 10.0, ping_interval_s: float = 20.0,
                      ping_timeout_s: float = 20.0, close_timeout_s: float = 1.0) -> "ModelSocket":
        """Connect and complete the opening handshake within ``open_timeout_s``, or raise (``OSError``,
        ``TimeoutError``, or websockets' ``InvalidHandshake`` family, e.g. ``InvalidStatus`` for an HTTP 401)."""
        uri = parse_uri(url)
        protocol = ClientProtocol(uri, max_size=max_size)
        loop = asyncio.get_running_loop()

        def factory() -> ModelSocket:
            return cls(protocol, on_message, ping_interval_s=ping_interval_s, ping_timeout_s=ping_timeout_s,
                       close_timeout_s=close_timeout_s)

        socket: ModelSocket | None = None
        try:
            async with asyncio.timeout(open_timeout_s):
                socket = await _open_transport(loop, uri, factory)
                request = protocol.connect()
                request.headers["User-Agent"] = USER_AGENT
                for name, value in (headers or {}).items():
                    request.headers[name] = value
                protocol.send_request(request)
                socket._flush()
                await asyncio.shield(socket.handshake)
        except BaseException:
            if socket is not None and socket.transport is not None:
                socket.transport.abort()
            raise
        socket._schedule_ping()
        return socket

    # ---- sending ------------------------------------------------------------------------------

    def send(self, message: bytes | str) -> None:
        """Frame one text message and write it now. Raises :class:`ModelSocketClosed` once closing.

        Data frames are framed here (one unfragmented, masked text frame, as RFC 6455 asks of a client), not by
        the protocol object: that costs a frame object, a header built field by field and a system call for
        each 4-byte masking key. The keys come from a pool of ``os.urandom`` bytes, each used once. Control
        frames (ping, pong, close) still go through the protocol, which is told of no data frame: it needs none
        (nothing is fragmented) and checks the state the same way."""
        transport = self.transport
        if self.protocol.state is not State.OPEN or transport is None or transport.is_closing():
            raise ModelSocketClosed(self._why_closed())
        data = message if isinstance(message, bytes) else message.encode()
        at = self._mask_at
        if at >= len(self._masks):
            self._masks, at = os.urandom(_MASK_POOL_BYTES), 0
        mask = self._masks[at : at + 4]
        self._mask_at = at + 4
        transport.write(_text_frame_header(len(data)) + mask + apply_mask(data, mask))

    async def drained(self) -> None:
        """Until the transport's buffer is under its low-water mark again (at once when it is)."""
        if not self.paused:
            return
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._drain_waiters:
                self._drain_waiters.remove(waiter)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The closing handshake, within ``close_timeout_s``; after that the connection is dropped."""
        if self.transport is None or self.closed.done():
            return
        try:
            self.protocol.send_close(code, reason)
            self._flush()
        except (InvalidState, WebSocketException):
            self.transport.abort()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), self.close_timeout_s)
        except TimeoutError:
            self.transport.abort()
            await asyncio.shield(self.closed)

    # ---- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.protocol.receive_data(data)
            events = self.protocol.events_received()
            self._flush()  # pongs to pings, the answer to a close
        except Exception:  # never expected (the protocol reports errors as state); the connection is dropped
            log.exception("model socket: the protocol failed on received data; dropping the connection")
            if self.transport is not None:
                self.transport.abort()
            return
        for event in events:
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Response):
                self._handshake_done()

    def eof_received(self) -> None:
        self.protocol.receive_eof()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        try:
            self.protocol.receive_eof()  # the protocol's state becomes CLOSED (idempotent)
        except Exception:  # whatever it says, `closed` must resolve: a call waits on it
            log.debug("model socket: the protocol failed at EOF", exc_info=True)
        received, sent = self.protocol.close_rcvd, self.protocol.close_sent
        self.close_code = received.code if received else sent.code if sent else ABNORMAL_CLOSURE
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionError("closed during the opening handshake"))
            self.handshake.exception()  # retrieved: whoever awaited it has gone (a timeout)
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(ModelSocketClosed(self._why_closed(exc)))
        if not self.closed.done():
            self.closed.set_result(self._why_closed(exc))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ---- internals ------------------------------------------------------------------------------

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        # A received frame's data is bytes (websockets parses into bytes); its type also covers frames to send.
        data = cast(bytes, frame.data)
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._deliver(data)
            else:
                self._fragments = [data]
        elif opcode is Opcode.CONT:
            if self._fragments is None:
                return  # the protocol refuses an unexpected continuation; nothing to assemble
            self._fragments.append(data)
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), None
                self._deliver(data)
        elif opcode is Opcode.PONG:
            if self._pong_deadline is not None:
                self._pong_deadline.cancel()
                self._pong_deadline = None
                self._schedule_ping()

    def _deliver(self, data: bytes) -> None:
        try:
            self.on_message(data)
        except Exception:  # the owner's bug costs one message, never the connection
            log.exception("a model message handler failed")

    def _handshake_done(self) -> None:
        if self.handshake.done():
            return
        error = self.protocol.handshake_exc
        if isinstance(error, InvalidStatus):
            # Parsed here, once, at the edge: the call core gets the status and the delay as data.
            header = error.response.headers.get("Retry-After")
            retry_after = parse_retry_after(header)
            if header is not None and retry_after is None:
                log.warning("model socket: unreadable Retry-After %r on HTTP %d; ignored", header[:64],
                            error.response.status_code)
            error = UpgradeRefused(error.response, retry_after)
        if error is not None:
            self.handshake.set_exception(error)
            if self.transport is not None:
                self.transport.abort()
        else:
            self.handshake.set_result(None)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
        if self.protocol.close_expected() and self._close_timer is None and not transport.is_closing():
            # The server closes TCP after the closing handshake; if it does not, we do.
            self._close_timer = self._loop.call_later(self.close_timeout_s, transport.abort)

    def _schedule_ping(self) -> None:
        if self.ping_interval_s and not self.closed.done():
            self._ping = self._loop.call_later(self.ping_interval_s, self._send_ping)

    def _send_ping(self) -> None:
        self._ping = None
        if self.protocol.state is not State.OPEN or self.transport is None:
            return
        self.protocol.send_ping(os.urandom(4))
        self._flush()
        self._pong_deadline = self._loop.call_later(self.ping_timeout_s, self._pong_missed)

    def _pong_missed(self) -> None:
        self._pong_deadline = None
        log.debug("model socket: no pong within %.1f s; dropping the connection", self.ping_timeout_s)
        if self.protocol.state is State.OPEN:
            self.protocol.fail(INTERNAL_ERROR, "keepalive ping timeout")
        if self.transport is not None:
            self.transport.abort()

    def _cancel_timers(self) -> None:
        for timer in (self._ping, self._pong_deadline, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._ping = self._pong_deadline = self._close_timer = None

    def _why_closed(self, exc: Exception | None = None) -> str:
        received, sent = self.protocol.close_rcvd, self.protocol.close_sent
        if received is not None:
            return f"code {received.code}" + (f" ({received.reason})" if received.reason else "")
        if sent is not None:  # we failed it (a missed pong, a message over max_size): websockets' own wording
            return str(self.protocol.close_exc)
        if exc is not None:
            return f"{type(exc).__name__}: {exc}"
        return f"code {ABNORMAL_CLOSURE}; no close frame received"


async def _open_transport(loop: asyncio.AbstractEventLoop, uri: WebSocketURI,
                          factory: Callable[[], ModelSocket]) -> ModelSocket:
    """TCP (and TLS for wss://) to the server, through an HTTP(S) proxy when the environment names one."""
    from websockets.proxy import get_proxy, parse_proxy

    context = ssl.create_default_context() if uri.secure else None
    proxy = get_proxy(uri)
    if proxy is None:
        _, socket = await loop.create_connection(factory, uri.host, uri.port, ssl=context,
                                                 server_hostname=uri.host if context else None)
        return socket
    parsed = parse_proxy(proxy)
    if not parsed.scheme.startswith("http"):
        raise ProxyError(f"{parsed.scheme} proxies are not supported for the model socket; use an HTTP(S) proxy")
    from websockets.asyncio.client import connect_http_proxy

    proxy_options = {"ssl": ssl.create_default_context()} if parsed.scheme == "https" else {}
    transport = await connect_http_proxy(parsed, uri, user_agent_header=USER_AGENT, **proxy_options)
    socket = factory()
    transport.set_protocol(socket)
    if context is not None:
        tls = await loop.start_tls(transport, socket, context, server_hostname=uri.host)
        assert tls is not None
        transport = tls
    socket.connection_made(transport)
    return socket


__all__ = ["ModelSocket", "ModelSocketClosed", "InvalidHandshake", "UpgradeRefused", "parse_retry_after"]
