"""The server's own limits, through real sockets: a slow client cannot hold a connection, the number of open
connections is capped, oversized headers are refused, and the limits match the settings (``gateway.server.runner``)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets

from gateway.config import Settings
from gateway.server.runner import MAX_HEADER_BYTES, uvicorn_options

from .conftest import start_gateway
from .helpers import eventually


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


async def _raw_response(host: str, port: int, payload: bytes) -> bytes:
    """Everything the server answers to ``payload`` before it closes (it must close: the answers here say so)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload)
        await writer.drain()
    except OSError:
        pass  # the server answered and closed before it read everything
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_an_oversized_request_head_answers_413_before_it_is_parsed() -> None:
    async with start_gateway() as gw:
        host, port = gw.http_url.removeprefix("http://").split(":")
        for size in (100_000, MAX_HEADER_BYTES + 100):  # all at once, and just past the limit
            head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
            answer = await _raw_response(host, int(port), head)
            assert answer.startswith(b"HTTP/1.1 413 "), answer[:80]
            assert answer.endswith(b"request head over 16384 bytes\n")
        # Trickled in small pieces (an incomplete head, which h11 alone would answer with 400): 413 too.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /incoming-call HTTP/1.1\r\nHost: x\r\n")
        for _ in range(40):
            writer.write(b"X-Pad: " + b"b" * 1000 + b"\r\n")
            await writer.drain()
            if writer.is_closing() or reader.at_eof():
                break
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 413 ")
        writer.close()
        # A head just under the limit, followed by its body in the same write, is served.
        body = b"x" * 20_000
        head = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\nX-Big: "
                % len(body))
        head += b"a" * (MAX_HEADER_BYTES - len(head) - 4) + b"\r\n\r\n"
        assert len(head) == MAX_HEADER_BYTES
        assert (await _raw_response(host, int(port), head + body)).startswith(b"HTTP/1.1 200 ")


async def test_a_body_answered_unread_does_not_count_against_the_next_request_head() -> None:
    async with start_gateway() as gw:
        host, port = gw.http_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        body = b"{" + b" " * 19_998 + b"}"
        # No API keys: 503 at once, before the body is read; the client sends it all the same.
        writer.write(b"POST /calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        await writer.drain()
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 503 ")
        writer.write(body)
        await writer.drain()
        await asyncio.sleep(0.3)  # not a bound: only so that the next head comes in a read of its own
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: " + b"p" * 8000 + b"\r\n\r\n")
        await writer.drain()
        answers = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert b"HTTP/1.1 200 " in answers, answers[:300]


async def test_an_oversized_body_answers_413_on_every_route_that_reads_one() -> None:
    """Each route that reads a body refuses one past its limit with 413 and a short reason, declared
    (Content-Length) or streamed (chunked), without reading it."""
    twilio = {"twilio_account_sid": "AC" + "0" * 32, "twilio_auth_token": "t" * 32,
              "twilio_from_number": "+14155550100", "twilio_caller_ids": ("+14155550100",),
              "public_url": "https://gw.example.com"}
    async with start_gateway(api_keys=("k" * 24,), **twilio) as gw:
        auth = {"Authorization": "Bearer " + "k" * 24}
        json = {"Content-Type": "application/json"}
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        routes = [("/incoming-call", form), ("/twilio/call-status", form), ("/twilio/answer", form),
                  ("/calls", {**auth, **json}), ("/calls/CA" + "0" * 32 + "/say", {**auth, **json}),
                  ("/console/login", {**form, "Origin": gw.http_url})]
        big = b"a=" + b"x" * 200_000

        async def chunked():
            for start in range(0, len(big), 10_000):
                yield big[start:start + 10_000]

        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            for path, headers in routes:
                for content in (big, chunked()):
                    response = await http.post(path, headers=headers, content=content)
                    assert response.status_code == 413, (path, response.status_code, response.text[:200])
                    assert len(response.content) < 300 and b"too large" in response.content.lower() or \
                        b"at most" in response.content, (path, response.text)


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
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            async def room() -> bool:
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.HTTPError:  # closed at once: still full
                    return False
            await eventually(room, what="room again once they are gone")


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
