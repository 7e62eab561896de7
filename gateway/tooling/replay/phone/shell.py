"""The socket shell: one ``websockets`` client connection that runs a :class:`~.core.Phone` in real time.

:func:`run_call` builds a phone and calls; :func:`call_with` connects as Twilio does (no permessage-deflate:
Twilio does not negotiate it; Twilio's user agent; optionally the signed webhook first, :mod:`..dial`);
:func:`drive` runs the phone over the open connection: a reader task, a writer task (one writer keeps the
phone's messages in the order it numbered them), and a loop that wakes on an absolute schedule (every 20 ms
frame boundary, and the exact moment a mark echo is due) to call :meth:`Phone.tick`.

Two line conditions live here, because they are about the socket: ``latency_ms`` (every message held that
long in transit, both ways) and a :class:`SlowReader` (a Twilio edge that does not read its socket for a
while, or reads it slowly, so that the gateway's writes meet TCP backpressure).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ..dial import TwilioAccount, answer_inbound
from ..report import CallReport
from .core import Phone
from .script import CallerTurn

TWILIO_USER_AGENT = "Twilio.TmeWs/1.0"


@dataclass(frozen=True, slots=True)
class SlowReader:
    """A phone that reads its socket slowly, at the TCP level: the gateway's writes back up as they would
    behind a congested Twilio edge.

    While the phone is not reading, the messages stay in the socket: websockets stops reading the socket once
    ``max_queue`` frames wait unread (1: at once), the kernel's receive buffer (``receive_buffer`` bytes asked
    for with ``SO_RCVBUF``; Linux doubles it; None keeps the system's, which can be megabytes on loopback)
    fills, TCP's window closes, and the gateway's own send buffers fill behind it. ``mss``: the TCP segment size
    the phone announces (TCP_MAXSEG), 1460 bytes as on an Ethernet path; on loopback (64 KiB segments) the
    gateway's kernel would size its send buffer for megabytes and the gateway would never feel the pause.

    * ``pause_ms`` / ``every_ms``: stop reading for ``pause_ms`` every ``every_ms`` (the first pause at
      ``every_ms`` after ``start``).
    * ``max_bytes_per_s``: read no faster than this many bytes a second (the messages' size; real-time mu-law
      audio in Twilio's JSON is about 11 kB/s).
    """

    pause_ms: float = 0.0
    every_ms: float = 0.0
    max_bytes_per_s: float | None = None
    max_queue: int = 1
    receive_buffer: int | None = 4096
    mss: int | None = 1460

    def __post_init__(self) -> None:
        if self.pause_ms < 0 or self.every_ms < 0:
            raise ValueError("pause_ms and every_ms must be >= 0")
        if self.pause_ms and not self.pause_ms < self.every_ms:
            raise ValueError("a pause of pause_ms needs every_ms longer than it")
        if self.max_bytes_per_s is not None and self.max_bytes_per_s <= 0:
            raise ValueError("max_bytes_per_s must be positive")
        if self.max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if self.receive_buffer is not None and self.receive_buffer <= 0:
            raise ValueError("receive_buffer must be positive")
        if self.mss is not None and not 88 <= self.mss <= 65535:
            raise ValueError("mss must be between 88 and 65535 bytes")

    def pause_end_ms(self, now_ms: float) -> float | None:
        """If ``now_ms`` falls in a pause, when it ends; else None."""
        if not self.pause_ms or now_ms < self.every_ms:
            return None
        start = (now_ms // self.every_ms) * self.every_ms
        return start + self.pause_ms if now_ms < start + self.pause_ms else None


async def run_call(
    url: str,
    turns: list[CallerTurn],
    *,
    custom_parameters: Mapping[str, str] | None = None,
    hangup_after_ms: float = 1000.0,
    hangup_wait_for_agent: bool = True,
    timeout_s: float = 60.0,
    extra_headers: Mapping[str, str] | None = None,
    packet_loss: float = 0.0,
    drop_frames: Collection[int] = (),
    seed: int | None = None,
    noise_snr_db: float | None = None,
    open_timeout_s: float = 10.0,
    latency_ms: float = 0.0,
    call_sid: str | None = None,
    account_sid: str | None = None,
    twilio: TwilioAccount | None = None,
    playback_delay_ms: float = 0.0,
    mark_jitter_ms: float = 0.0,
    slow_reader: SlowReader | None = None,
) -> CallReport:
    """Call a gateway's Media Stream URL (``ws://host:port/media-stream``) as Twilio would; play ``turns``.

    With ``twilio`` (the auth token a gateway checks signatures with), the call starts as Twilio's does: the signed
    ``/incoming-call`` webhook first, then the stream at the URL its TwiML gives, signed (:mod:`..dial`).

    The call ends when the phone hangs up (a ``hangup`` turn; else ``hangup_after_ms`` of silence after
    the last turn, and after the agent's answer to it when ``hangup_wait_for_agent``), at ``timeout_s``,
    or when the gateway closes the socket. A refused handshake raises the ``websockets`` exception
    (e.g. ``InvalidStatus``). ``latency_ms`` holds every message that long in transit, both ways.

    Twilio's real-world behaviour: ``playback_delay_ms`` (a jitter buffer before audio plays), ``mark_jitter_ms``
    (mark echoes 0..N ms late, in order, seeded by ``seed``), ``slow_reader`` (a :class:`SlowReader`).
    """
    phone = Phone(
        turns,
        custom_parameters=custom_parameters,
        hangup_after_ms=hangup_after_ms,
        hangup_wait_for_agent=hangup_wait_for_agent,
        timeout_ms=timeout_s * 1000.0,
        packet_loss=packet_loss,
        drop_frames=drop_frames,
        seed=seed,
        noise_snr_db=noise_snr_db,
        call_sid=call_sid,
        account_sid=account_sid,
        playback_delay_ms=playback_delay_ms,
        mark_jitter_ms=mark_jitter_ms,
    )
    return await call_with(phone, url, extra_headers=extra_headers, open_timeout_s=open_timeout_s, latency_ms=latency_ms,
                           twilio=twilio, slow_reader=slow_reader)


async def call_with(
    phone: Phone,
    url: str,
    *,
    extra_headers: Mapping[str, str] | None = None,
    open_timeout_s: float = 10.0,
    latency_ms: float = 0.0,
    twilio: TwilioAccount | None = None,
    slow_reader: SlowReader | None = None,
) -> CallReport:
    """Connect to ``url`` as Twilio does, run ``phone`` (a :class:`Phone` or a subclass) to the end, report.
    With ``twilio``, ring the gateway's webhook first and open the stream it invites to (:mod:`..dial`)."""
    from websockets.asyncio.client import connect

    if twilio is not None:
        if twilio.account_sid:
            phone.account_sid = twilio.account_sid
        invite = await answer_inbound(url, twilio, call_sid=phone.call_sid, account_sid=phone.account_sid)
        url = invite.connect_url
        extra_headers = {**dict(extra_headers or {}), **invite.headers}
        phone.custom_parameters = {**invite.parameters, **phone.custom_parameters}

    options: dict[str, Any] = {}
    if slow_reader is not None:
        options["max_queue"] = slow_reader.max_queue
        if slow_reader.receive_buffer is not None or slow_reader.mss is not None:
            options["sock"] = await asyncio.wait_for(_slow_socket(url, slow_reader), open_timeout_s)
    try:
        async with connect(
            url,
            compression=None,  # Twilio does not negotiate permessage-deflate
            additional_headers=dict(extra_headers or {}),
            user_agent_header=TWILIO_USER_AGENT,
            open_timeout=open_timeout_s,
            ping_interval=None,
            max_size=None,
            **options,
        ) as ws:
            await drive(phone, ws, latency_ms=latency_ms, slow_reader=slow_reader)
    finally:
        if "sock" in options:
            options["sock"].close()  # already closed with the connection, unless the handshake failed
    return phone.report()


async def _slow_socket(url: str, slow: SlowReader) -> socket.socket:
    """A TCP socket connected to ``url``'s host with the slow reader's receive buffer and segment size, both set
    before the TCP handshake (the window and the MSS are agreed on in it)."""
    from websockets.uri import parse_uri

    uri = parse_uri(url)
    loop = asyncio.get_running_loop()
    family, kind, proto, _, address = (await loop.getaddrinfo(uri.host, uri.port, type=socket.SOCK_STREAM))[0]
    sock = socket.socket(family, kind, proto)
    try:
        if slow.receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, slow.receive_buffer)
        if slow.mss is not None and hasattr(socket, "TCP_MAXSEG"):
            with contextlib.suppress(OSError):  # a platform that does not let it be set keeps its own
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, slow.mss)
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


def _unread_bytes(ws: Any) -> int | None:
    """Bytes waiting in the connection's kernel receive buffer (FIONREAD), where the platform tells."""
    try:
        import fcntl
        import termios

        sock = ws.transport.get_extra_info("socket")
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", raw)[0])
    except (ImportError, AttributeError, OSError, ValueError):
        return None


async def drive(phone: Phone, ws: Any, *, latency_ms: float = 0.0, slow_reader: SlowReader | None = None) -> None:
    """Run ``phone`` over an open ``websockets`` asyncio connection until the call ends.

    The phone's messages are dicts (serialized compactly here) or ready-made text frames (sent as they are).
    ``latency_ms`` simulates the network between Twilio and the gateway: every message, both ways, is
    held that long in transit (in order), as on a real line to a distant gateway. ``slow_reader``: the
    phone leaves its socket unread for a while, or reads it slowly (:class:`SlowReader`); its pauses go
    in the report (``reader_paused_ms``, ``max_unread_bytes``).
    """
    from websockets.exceptions import ConnectionClosed

    loop = asyncio.get_running_loop()
    outbox: asyncio.Queue[tuple[float, str] | None] = asyncio.Queue()
    inbox: asyncio.Queue[tuple[float, str | bytes] | None] = asyncio.Queue()
    ending = asyncio.Event()  # the call is over: the slow reader reads again, so the close handshake goes through
    t0 = loop.time()
    delay_s = max(0.0, latency_ms) / 1000.0
    next_read_ms = 0.0  # the rate cap: when the next message may be read

    def now_ms() -> float:
        return (loop.time() - t0) * 1000.0

    def post(messages: list[dict[str, Any]] | list[str]) -> None:
        due = loop.time() + delay_s
        for message in messages:
            text = message if isinstance(message, str) else json.dumps(message, separators=(",", ":"))
            outbox.put_nowait((due, text))

    async def until(due: float) -> None:
        if due > loop.time():
            await asyncio.sleep(due - loop.time())

    async def write() -> None:
        # One writer keeps the messages in the order the phone numbered them.
        while (entry := await outbox.get()) is not None:
            await until(entry[0])
            try:
                await ws.send(entry[1])
            except ConnectionClosed:
                return

    async def hold_back(slow: SlowReader) -> None:
        # Not reading: the socket fills. Resume at the pause's end, or when the rate cap allows the next byte.
        now = now_ms()
        resume = max(slow.pause_end_ms(now) or now, next_read_ms)
        if resume <= now or ending.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ending.wait(), (resume - now) / 1000.0)
        phone.reader_paused_ms += now_ms() - now
        unread = _unread_bytes(ws)
        if unread is not None:
            phone.max_unread_bytes = max(phone.max_unread_bytes, unread)

    async def read() -> None:
        nonlocal next_read_ms
        try:
            while True:
                if slow_reader is not None:
                    await hold_back(slow_reader)
                message = await ws.recv()
                if slow_reader is not None:
                    if slow_reader.max_bytes_per_s is not None:  # no credit saved up while idle: a steady rate
                        next_read_ms = max(next_read_ms, now_ms()) + len(message) / slow_reader.max_bytes_per_s * 1000.0
                    await hold_back(slow_reader)  # a message that came in as a pause began waits it out
                if delay_s:
                    inbox.put_nowait((loop.time() + delay_s, message))
                else:
                    post(phone.receive(message, now_ms()))
        except ConnectionClosed:
            pass
        inbox.put_nowait(None)

    async def deliver() -> None:
        # Messages from the gateway reach the phone after the simulated transit time.
        while (entry := await inbox.get()) is not None:
            await until(entry[0])
            post(phone.receive(entry[1], now_ms()))

    post(phone.open(0.0))
    writer = asyncio.create_task(write())
    reader = asyncio.create_task(read())
    deliverer = asyncio.create_task(deliver()) if delay_s else None
    try:
        while not phone.done:
            delay = phone.next_wakeup_ms() / 1000.0 - (loop.time() - t0)
            if delay > 0:
                await asyncio.wait({reader}, timeout=delay)
            if reader.done():
                phone.gateway_closed(now_ms())
                break
            post(phone.tick(now_ms()))
        ending.set()
        outbox.put_nowait(None)
        await writer  # the stop, if the phone hung up, goes out before the close
        await ws.close()
        await reader
    finally:
        ending.set()
        if deliverer is not None:
            deliverer.cancel()
        for task in (writer, reader):
            task.cancel()


__all__ = ["TWILIO_USER_AGENT", "SlowReader", "call_with", "drive", "run_call"]
