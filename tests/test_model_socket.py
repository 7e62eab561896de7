"""The model session's WebSocket client (``gateway.media_stream.model_socket``), against real websockets servers on
127.0.0.1: messages by callback in order (fragments assembled), the handshake's refusal, keepalive finding a silent
peer, the closing handshake, the size limit, backpressure, and wss:// with a certificate trusted through
SSL_CERT_FILE."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, AsyncIterator, Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Response

from gateway.media_stream.model_socket import ModelSocket, ModelSocketClosed


@contextlib.asynccontextmanager
async def server(handler: Callable[[ServerConnection], Any], **options: Any) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, **options) as running:
        port = running.sockets[0].getsockname()[1]
        yield f"{'wss' if options.get('ssl') else 'ws'}://{'localhost' if options.get('ssl') else '127.0.0.1'}:{port}/v1/realtime"


async def echo(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            if message == "fragments":
                await ws.send(["frag", "ment", "ed"])  # one message in three frames
            else:
                await ws.send(message)


async def test_messages_arrive_by_callback_in_order_and_fragments_are_assembled() -> None:
    received: list[bytes] = []
    async with server(echo) as url:
        socket = await ModelSocket.connect(url, received.append, headers={"Authorization": "Bearer test"})
        for n in range(20):
            socket.send(f'{{"n":{n}}}')
        socket.send(b"fragments")
        for _ in range(100):
            if len(received) == 21:
                break
            await asyncio.sleep(0.01)
        assert received == [f'{{"n":{n}}}'.encode() for n in range(20)] + [b"fragmented"]
        await socket.close()
        assert socket.closed.result() == "code 1000" and socket.close_code == 1000
        with pytest.raises(ModelSocketClosed):
            socket.send("after the close")


async def test_the_handshake_sends_the_headers_and_a_refusal_raises_invalid_status() -> None:
    seen: list[str] = []

    def check(connection: ServerConnection, request: Any) -> Response | None:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != "Bearer right":
            return connection.respond(401, "no\n")
        return None

    async with server(echo, process_request=check) as url:
        with pytest.raises(InvalidStatus) as refused:
            await ModelSocket.connect(url, lambda data: None, headers={"Authorization": "Bearer wrong"})
        assert refused.value.response.status_code == 401
        socket = await ModelSocket.connect(url, lambda data: None, headers={"Authorization": "Bearer right"})
        await socket.close()
    assert seen == ["Bearer wrong", "Bearer right"]


async def test_a_silent_peer_is_found_by_keepalive() -> None:
    """A model that stops answering (its pongs never come: a half-open path) is dropped within interval + timeout."""
    async with server(echo, ping_interval=None) as url:
        socket = await ModelSocket.connect(url, lambda data: None, ping_interval_s=0.2, ping_timeout_s=0.3)
        socket.send("alive")
        started = time.monotonic()
        transport = socket.transport
        assert transport is not None
        transport.pause_reading()  # our side stops hearing the server: no pong arrives
        reason = await asyncio.wait_for(asyncio.shield(socket.closed), 3)
        assert "keepalive ping timeout" in reason and time.monotonic() - started < 1.5


async def test_a_server_close_and_an_oversized_message_end_the_socket_with_their_codes() -> None:
    async def closes(ws: ServerConnection) -> None:
        await ws.close(4000, "session expired")

    async with server(closes) as url:
        socket = await ModelSocket.connect(url, lambda data: None)
        assert await asyncio.wait_for(asyncio.shield(socket.closed), 3) == "code 4000 (session expired)"

    async def big(ws: ServerConnection) -> None:
        await ws.send("x" * 5000)
        with contextlib.suppress(ConnectionClosed):
            await ws.wait_closed()

    received: list[bytes] = []
    async with server(big) as url:
        socket = await ModelSocket.connect(url, received.append, max_size=4096)
        reason = await asyncio.wait_for(asyncio.shield(socket.closed), 3)
        assert received == [] and socket.close_code == 1009, reason


async def test_backpressure_is_reported_not_waited_on_and_drained_wakes_when_the_peer_reads() -> None:
    reading = asyncio.Event()

    async def slow(ws: ServerConnection) -> None:
        await reading.wait()
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass

    async with server(slow, max_queue=1) as url:
        socket = await ModelSocket.connect(url, lambda data: None)
        chunk = "a" * 65536
        sent = 0
        while not socket.paused and sent < 2000:  # every send returns at once; the buffer fills
            socket.send(chunk)
            sent += 1
        assert socket.paused
        reading.set()
        await asyncio.wait_for(socket.drained(), 5)
        assert not socket.paused
        await socket.close()


async def test_wss_verifies_the_server_against_ssl_cert_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("cryptography")
    from gateway.tooling.bench.models import tls_context
    from gateway.tooling.bench.steps import self_signed

    cert, key = self_signed(str(tmp_path))
    received: list[bytes] = []
    async with server(echo, ssl=tls_context(cert, key)) as url:
        with pytest.raises(OSError):  # not trusted yet: certificate verify failed
            await ModelSocket.connect(url, received.append)
        monkeypatch.setenv("SSL_CERT_FILE", cert)
        socket = await ModelSocket.connect(url, received.append)
        socket.send("over tls")
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.01)
        assert received == [b"over tls"]
        await socket.close()


async def test_every_frame_length_encoding_reaches_a_real_server_intact() -> None:
    """Data frames are framed by the client itself: 7-bit, 16-bit and 64-bit lengths, each masked with its own key."""
    received: list[bytes] = []
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 300_000]
    async with server(echo, max_size=None) as url:
        socket = await ModelSocket.connect(url, received.append, max_size=1 << 20)
        for size in sizes:
            socket.send("é" * (size // 2) + "x" * (size % 2))  # multi-byte UTF-8 too
        for _ in range(300):
            if len(received) == len(sizes):
                break
            await asyncio.sleep(0.01)
        assert [len(message) for message in received] == sizes
        assert all(message.decode() == "é" * (size // 2) + "x" * (size % 2) for message, size in zip(received, sizes))
        keys = {socket._masks[i : i + 4] for i in range(0, socket._mask_at, 4)}
        assert len(keys) == len(sizes)  # one key per frame, none reused
        await socket.close()
