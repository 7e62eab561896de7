"""The server's own limits, through real sockets: a slow client cannot hold a connection, the number of open
connections is capped, oversized headers are refused, and the limits match the settings (``gateway.runner``)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets

from gateway.config import Settings
from gateway.runner import MAX_BYTES_BEFORE_REQUEST, MAX_HEADER_BYTES, uvicorn_options

from .conftest import start_gateway


async def _closed_within(host: str, port: int, payload: bytes, seconds: float) -> bool:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(payload)
    await writer.drain()
    try:
        data = await asyncio.wait_for(reader.read(), seconds)  # b"" (EOF) once the server closes
        return data == b"" or data.startswith(b"HTTP/1.1 4")
    except TimeoutError:
        return False
    finally:
        writer.close()


async def test_a_client_that_never_finishes_its_headers_is_disconnected() -> None:
    async with start_gateway(http_header_timeout_s=1.0) as gw:
        host, port = gw.http_url.removeprefix("http://").split(":")
        # Slowloris: a request line and one header, then nothing.
        assert await _closed_within(host, int(port), b"GET /healthz HTTP/1.1\r\nHost: x\r\n", 3.0)
        # A silent connection too.
        assert await _closed_within(host, int(port), b"", 3.0)
        # A normal request on a new connection is unaffected, and so is an open WebSocket past the deadline.
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            assert (await http.get("/healthz")).status_code == 200
        from websockets.asyncio.client import connect

        async with connect(gw.ws_url, compression=None, ping_interval=None) as ws:
            await asyncio.sleep(1.5)
            await ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
            assert ws.state.name == "OPEN"


async def test_oversized_headers_are_refused() -> None:
    async with start_gateway() as gw:
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            try:
                response = await http.get("/healthz", headers={"X-Big": "a" * MAX_BYTES_BEFORE_REQUEST})
                refused = response.status_code >= 400
            except httpx.HTTPError:
                refused = True  # the server closed the connection
        assert refused


async def test_open_connections_are_capped_websockets_included() -> None:
    from websockets.asyncio.client import connect

    async with start_gateway(max_connections=10) as gw:
        host, port = gw.http_url.removeprefix("http://").split(":")
        idle = [await asyncio.open_connection(host, int(port)) for _ in range(15)]
        try:
            async def closed_by_server(reader: asyncio.StreamReader) -> bool:
                try:
                    return await asyncio.wait_for(reader.read(), 1.0) == b""
                except TimeoutError:
                    return False

            closed = await asyncio.gather(*(closed_by_server(reader) for reader, _ in idle))
            assert sum(closed) >= 5  # past the cap a socket is closed at once, not kept open
            # A WebSocket upgrade past the cap does not get through either.
            with pytest.raises((OSError, websockets.exceptions.WebSocketException)):
                async with connect(gw.ws_url, compression=None, open_timeout=2):
                    pass
        finally:
            for _, writer in idle:
                writer.close()
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            assert (await http.get("/healthz")).status_code == 200  # room again once they are gone


async def test_a_kept_alive_connection_cannot_trickle_its_next_request_forever() -> None:
    async with start_gateway(http_header_timeout_s=1.0) as gw:
        host, port = gw.http_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await reader.read(4096)  # the body
        closed = False
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n":  # one byte every 0.3 s
            if writer.is_closing():
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
                data = await asyncio.wait_for(reader.read(1), 0.3)
                if data == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        writer.close()
        assert closed, "the trickled second request head held the connection past the deadline"


async def test_an_unread_body_cannot_hold_the_connection() -> None:
    async with start_gateway(http_header_timeout_s=1.0) as gw:
        host, port = gw.http_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        # The API answers 503 (no keys) at once; the client then trickles a body it said was 1 GB.
        writer.write(b"POST /calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000000\r\n\r\n{")
        await writer.drain()
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 5")
        deadline = asyncio.get_running_loop().time() + 4
        closed = False
        while asyncio.get_running_loop().time() < deadline and not closed:
            try:
                writer.write(b"a")
                await writer.drain()
                closed = await asyncio.wait_for(reader.read(65536), 0.3) == b""
            except TimeoutError:
                pass
            except OSError:
                closed = True
        writer.close()
        assert closed


def test_the_server_options_follow_the_settings() -> None:
    settings = Settings.from_env({"MAX_CONNECTIONS": "250", "HTTP_HEADER_TIMEOUT_S": "4"})
    options = uvicorn_options(settings)
    assert options["limit_concurrency"] == 250 and options["http"].header_timeout_s == 4.0
    assert options["h11_max_incomplete_event_size"] == MAX_HEADER_BYTES and options["ws_max_size"] == 1 << 20
    assert options["proxy_headers"] is False  # X-Forwarded-* only from TRUSTED_PROXY_IPS, in the app
