"""One address cannot hold the server (``gateway.server.connection_caps``), over real sockets from several loopback
addresses (127.0.0.2 plays the attacker, 127.0.0.3 Twilio, 127.0.0.4 the health checker).

While one address holds its maximum of open sockets and of unfinished request heads, and keeps opening more, a
signed Twilio webhook from another address and ``/healthz`` still succeed, with ``MAX_CONNECTIONS=10`` and at the
default; the refused sockets are counted in ``gateway_refused_connections_total`` and logged as a summary. Behind
a trusted proxy, the proxy's own sockets are not capped as one client, the client it names is, per request.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import replace

import httpx
import pytest
import websockets
from twilio.request_validator import RequestValidator

from gateway.config import ConfigError, Settings
from gateway.server.connection_caps import address_caps

from .conftest import start_gateway
from .helpers import eventually, metric_by_label

TOKEN = "twilio-auth-token-for-caps-01234"
PUBLIC_URL = "https://gateway.example.test"
ATTACKER, TWILIO, PROBE = "127.0.0.2", "127.0.0.3", "127.0.0.4"
UNFINISHED_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
# A request whose body never comes: in progress (not an unfinished head) while the webhook waits for it.
BODY_PENDING = (b"POST /incoming-call HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 1000\r\n\r\n")


async def scrape(base: str) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=base) as http:
        return metric_by_label((await http.get("/metrics")).text, "gateway_refused_connections_total", "reason")


async def open_from(source: str, base: str, payload: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
    if payload:
        writer.write(payload)
        try:
            await writer.drain()
        except OSError:
            pass  # refused: closed by the server
    return reader, writer


async def still_open(reader: asyncio.StreamReader) -> bool:
    """Not closed by the server (nothing to read, no EOF) once the loop had its turn."""
    try:
        return await asyncio.wait_for(reader.read(1), 0.2) != b""
    except TimeoutError:
        return True
    except OSError:
        return False


def signed_webhook(call_sid: str) -> tuple[dict[str, str], dict[str, str]]:
    form = {"CallSid": call_sid, "From": "+14155550100", "To": "+14155550111", "AccountSid": "AC" + "0" * 32}
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC_URL + "/incoming-call", form)
    return form, {"X-Twilio-Signature": signature}


def from_address(source: str, base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, transport=httpx.AsyncHTTPTransport(local_address=source), timeout=10)


@pytest.mark.parametrize("max_connections", [10, 1000])
async def test_one_address_at_its_maximum_leaves_room_for_twilio_and_health_checks(max_connections, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.connections")
    settings = replace(Settings(), max_connections=max_connections)
    per_address, heads = address_caps(settings)
    assert per_address <= max_connections // 2 and heads <= per_address
    held = []
    async with start_gateway(max_connections=max_connections, twilio_auth_token=TOKEN, public_url=PUBLIC_URL,
                             http_header_timeout_s=60.0, drop_log_interval_s=600.0) as gw:
        before = await scrape(gw.http_url)
        try:
            # The attacker fills its share: requests in progress, then unfinished heads, then 12 sockets more.
            for _ in range(per_address - heads):
                held.append(await open_from(ATTACKER, gw.http_url, BODY_PENDING))
            for _ in range(heads):
                held.append(await open_from(ATTACKER, gw.http_url, UNFINISHED_HEAD))
            extra = [await open_from(ATTACKER, gw.http_url, UNFINISHED_HEAD) for _ in range(12)]
            extra.append(await open_from(ATTACKER, gw.http_url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))

            async def refused_all() -> bool:
                after = await scrape(gw.http_url)
                return sum(after.values()) - sum(before.values()) >= len(extra)

            await eventually(refused_all, what="the sockets past the attacker's share were not refused")
            for reader, _ in extra:  # closed at once, without an answer
                assert await asyncio.wait_for(reader.read(), 5) == b""
            after = await scrape(gw.http_url)
            assert sum(after.values()) - sum(before.values()) == len(extra)
            assert after.get("per_address_connections", 0) - before.get("per_address_connections", 0) == len(extra)

            # Twilio's signed webhook and the health checks, from other addresses, still get through.
            async with from_address(TWILIO, gw.http_url) as twilio:
                form, headers = signed_webhook("CA" + secrets.token_hex(16))
                response = await twilio.post("/incoming-call", data=form, headers=headers)
                assert response.status_code == 200 and "<Stream" in response.text, response.text
            async with from_address(PROBE, gw.http_url) as probe:
                assert (await probe.get("/healthz")).status_code == 200
                assert (await probe.get("/readyz")).status_code == 200
            # ... and the attacker's share was held all along.
            assert all(await asyncio.gather(*(still_open(reader) for reader, _ in held)))
        finally:
            for _, writer in held + extra:
                writer.close()
        # Refusals are a summary, not one line per socket: the first one, with its address.
        lines = [record.getMessage() for record in caplog.records if record.name == "gateway.connections"]
        assert len(lines) == 1 and "from 127.0.0.2" in lines[0] and "per_address_connections" in lines[0], lines

        # Once the attacker's sockets are gone, its share is free again (open ones and heads are counted down).
        async def share_is_free() -> bool:
            readers = [await open_from(ATTACKER, gw.http_url, UNFINISHED_HEAD) for _ in range(heads)]
            free = all(await asyncio.gather(*(still_open(reader) for reader, _ in readers)))
            for _, writer in readers:
                writer.close()
            return free

        await eventually(share_is_free, what="the attacker's closed sockets still count against its share")


async def test_twelve_unfinished_heads_from_one_address_at_max_connections_10() -> None:
    """The issue's case: a dozen unfinished heads from one address used to lock out everyone else."""
    async with start_gateway(max_connections=10, twilio_auth_token=TOKEN, public_url=PUBLIC_URL,
                             http_header_timeout_s=60.0) as gw:
        _, heads = address_caps(gw.state.settings)
        before = await scrape(gw.http_url)
        slow = [await open_from(ATTACKER, gw.http_url, UNFINISHED_HEAD) for _ in range(12)]
        try:
            async def refused() -> bool:
                after = await scrape(gw.http_url)
                return after.get("per_address_unfinished_heads", 0) - before.get("per_address_unfinished_heads", 0) \
                    >= 12 - heads

            await eventually(refused, what="unfinished heads past the per-address cap were not refused")
            async with from_address(TWILIO, gw.http_url) as twilio:
                form, headers = signed_webhook("CA" + secrets.token_hex(16))
                assert (await twilio.post("/incoming-call", data=form, headers=headers)).status_code == 200
            async with from_address(PROBE, gw.http_url) as probe:
                assert (await probe.get("/healthz")).status_code == 200
        finally:
            for _, writer in slow:
                writer.close()


async def test_refusals_are_summarised_with_the_addresses_refused_most(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.connections")
    async with start_gateway(max_connections=10, http_header_timeout_s=60.0, drop_log_interval_s=0.3) as gw:
        sockets = [await open_from(ATTACKER, gw.http_url, UNFINISHED_HEAD) for _ in range(15)]
        try:
            async def summarised() -> bool:
                return any("since the last report" in record.getMessage() for record in caplog.records)

            await eventually(summarised, what="no summary line after the interval")  # no further refusal needed to flush it
        finally:
            for _, writer in sockets:
                writer.close()
    lines = [record.getMessage() for record in caplog.records if record.name == "gateway.connections"]
    assert len(lines) == 2, lines
    assert "most from 127.0.0.2 x" in lines[1] and "per_address_unfinished_heads x" in lines[1], lines


async def test_a_trusted_proxy_is_not_capped_as_one_client_its_clients_are_per_request() -> None:
    async with start_gateway(max_connections=10, trusted_proxy_ips=(ATTACKER,), http_header_timeout_s=60.0) as gw:
        per_address, _ = address_caps(gw.state.settings)
        # The proxy (127.0.0.2 here) holds more unfinished heads and sockets than any one client may.
        proxy_sockets = [await open_from(ATTACKER, gw.http_url, UNFINISHED_HEAD) for _ in range(per_address + 2)]
        try:
            assert all(await asyncio.gather(*(still_open(reader) for reader, _ in proxy_sockets)))
        finally:
            for _, writer in proxy_sockets:
                writer.close()
        # One client behind it: at most per_address requests in progress; another client is not affected.
        pending = [await open_from(ATTACKER, gw.http_url, BODY_PENDING.replace(
            b"Host: x\r\n", b"Host: x\r\nX-Forwarded-For: 198.51.100.7\r\n")) for _ in range(per_address)]
        try:
            async with from_address(ATTACKER, gw.http_url) as proxy:
                async def capped() -> bool:
                    response = await proxy.get("/healthz", headers={"X-Forwarded-For": "198.51.100.7"})
                    return response.status_code == 503

                await eventually(capped, what="the client behind the proxy was not capped per request")
                response = await proxy.get("/healthz", headers={"X-Forwarded-For": "198.51.100.7"})
                assert response.status_code == 503 and "from your address" in response.text
                assert (await proxy.get("/healthz", headers={"X-Forwarded-For": "203.0.113.9"})).status_code == 200
        finally:
            for _, writer in pending:
                writer.close()
        metrics = await scrape(gw.http_url)
        assert metrics.get("per_client_requests", 0) >= 2


def test_the_caps_are_a_fraction_of_max_connections_whatever_it_is_set_to() -> None:
    assert address_caps(Settings.from_env({})) == (250, 50)
    assert address_caps(Settings.from_env({"MAX_CONNECTIONS": "10"})) == (2, 1)
    # An explicit cap is lowered to half of MAX_CONNECTIONS; heads never exceed connections.
    assert address_caps(Settings.from_env({"MAX_CONNECTIONS": "10", "MAX_CONNECTIONS_PER_ADDRESS": "100",
                                           "MAX_UNFINISHED_HEADS_PER_ADDRESS": "100"})) == (5, 5)
    assert address_caps(Settings.from_env({"MAX_CONNECTIONS_PER_ADDRESS": "40",
                                           "MAX_UNFINISHED_HEADS_PER_ADDRESS": "4"})) == (40, 4)
    for bad in ({"MAX_CONNECTIONS_PER_ADDRESS": "-1"}, {"MAX_UNFINISHED_HEADS_PER_ADDRESS": "many"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Settings.from_env(bad)


def test_the_address_table_counts_per_address_ipv6_per_64_and_exempts_trusted_proxies() -> None:
    """The table itself (gateway.server.connection_caps.AddressTable), with stand-ins for transports (any hashable)."""
    from gateway.server.connection_caps import AddressTable

    table = AddressTable(replace(Settings(), max_connections=20, trusted_proxy_ips=("10.0.0.0/8",)))
    assert (table.per_address, table.heads_per_address) == (5, 1)
    first, second, third = object(), object(), object()
    assert table.admit(first, "2001:db8:1:2::1", open_now=1)
    # Another address of the same /64 is the same client: its head cap (1) is reached.
    assert not table.admit(second, "2001:db8:1:2::ffff", open_now=2)
    assert table.admit(second, "2001:db8:1:3::1", open_now=2)  # another /64
    table.waiting_for_head(first, False)  # its head arrived: a request in progress
    assert table.admit(third, "2001:db8:1:2::2", open_now=3)
    assert table.open["2001:db8:1:2::/64"] == 2 and table.waiting["2001:db8:1:2::/64"] == 1
    for transport in (first, third, first):  # released once, whatever reports it
        table.release(transport)
    assert "2001:db8:1:2::/64" not in table.open and "2001:db8:1:2::/64" not in table.waiting
    # A trusted proxy's sockets are not counted as one client's; MAX_CONNECTIONS still applies to them.
    assert all(table.admit(object(), "10.1.2.3", open_now=n) for n in range(1, 21))
    assert table.admit(object(), "::ffff:10.1.2.3", open_now=5)  # the same proxy on a dual-stack socket
    assert not table.admit(object(), "10.1.2.3", open_now=21)
    assert table.refused.totals == {"per_address_unfinished_heads": 1, "max_connections": 1}


async def test_a_websocket_keeps_its_place_in_its_address_count_until_it_closes(caplog) -> None:
    from websockets.asyncio.client import connect

    caplog.set_level(logging.WARNING)
    async with start_gateway(max_connections=10, http_header_timeout_s=60.0) as gw:
        per_address, _ = address_caps(gw.state.settings)

        def stream():
            return connect(gw.ws_url, compression=None, ping_interval=None, local_addr=(ATTACKER, 0), open_timeout=5)

        streams = [await stream().__aenter__() for _ in range(per_address)]  # upgraded: no longer unfinished heads
        reader, writer = await open_from(ATTACKER, gw.http_url, UNFINISHED_HEAD)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the address's share is held by its WebSockets
        writer.close()
        for ws in streams:
            await ws.close()

        async def room_again() -> bool:
            try:
                async with stream():
                    return True
            except (OSError, websockets.exceptions.WebSocketException):
                return False

        await eventually(room_again, what="closed WebSockets still count against their address")
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, errors


async def test_a_share_too_small_for_max_calls_is_said_at_start(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.server.app")
    async with start_gateway(max_connections=40, max_calls=30):  # a share of 10 connections, 30 calls
        pass
    assert any("fewer than MAX_CALLS=30" in record.getMessage() for record in caplog.records)
    caplog.clear()
    async with start_gateway(max_calls=30):  # the default share (250) holds them
        pass
    assert not any("MAX_CALLS" in record.getMessage() for record in caplog.records)


async def test_kept_alive_connections_idle_between_requests_are_not_unfinished_heads() -> None:
    """A proxy or a browser keeps connections open between requests: those count against the address's
    connections, not against its unfinished heads (a next head begun on one does)."""
    async with start_gateway(max_connections=40, http_header_timeout_s=60.0) as gw:
        per_address, heads = address_caps(gw.state.settings)
        assert heads < per_address - 1
        kept = []
        try:
            for _ in range(heads + 1):  # more kept-alive connections than unfinished heads allowed
                reader, writer = await open_from(ATTACKER, gw.http_url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
                kept.append((reader, writer))
            reader, writer = await open_from(ATTACKER, gw.http_url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
            writer.close()
        finally:
            for _, writer in kept:
                writer.close()


async def test_a_host_opening_100_sockets_a_second_leaves_calls_in_at_the_default() -> None:
    """The issue's case at MAX_CONNECTIONS=1000: one host opening about 100 new sockets a second (none finishing
    its head) used to fill every slot within the header deadline; now it holds its share and calls go on."""
    async with start_gateway(twilio_auth_token=TOKEN, public_url=PUBLIC_URL, http_header_timeout_s=60.0,
                             drop_log_interval_s=600.0) as gw:
        _, heads = address_caps(gw.state.settings)
        flood: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        answered = []
        try:
            async with from_address(TWILIO, gw.http_url) as twilio:
                for _second in range(3):
                    for _ in range(100):
                        flood.append(await open_from(ATTACKER, gw.http_url, UNFINISHED_HEAD))
                        await asyncio.sleep(0.01)  # pacing the flood, not a bound
                    form, headers = signed_webhook("CA" + secrets.token_hex(16))
                    response = await twilio.post("/incoming-call", data=form, headers=headers)
                    answered.append(response.status_code == 200 and "<Stream" in response.text)
            held = await asyncio.gather(*(still_open(reader) for reader, _ in flood))
        finally:
            for _, writer in flood:
                writer.close()
        assert answered == [True, True, True]
        assert sum(held) == heads, (sum(held), heads)  # the rest were closed at once
