"""One address's share of the server: per-address caps on connections and on unfinished request heads.

``MAX_CONNECTIONS`` bounds a process, but on its own one address could take every slot (a dozen sockets that
never finish their request head at ``MAX_CONNECTIONS=10``; about 100 new sockets a second at the default 1000)
and lock out Twilio's webhooks, its media streams and the health checks. So no address may hold more than a
fraction of ``MAX_CONNECTIONS``, whatever it is set to (:func:`address_caps`):

* **Socket level** (the h11 protocol of :mod:`gateway.server.runner`): from one address (IPv6: one /64, as the API's
  throttle counts it), at most ``MAX_CONNECTIONS_PER_ADDRESS`` open connections, WebSockets included (default a
  quarter of ``MAX_CONNECTIONS``), and of those at most ``MAX_UNFINISHED_HEADS_PER_ADDRESS`` with an unfinished
  request head (a new socket until its first head is complete, a kept-alive one once its next head has begun, not
  one idle between requests: a proxy keeps a pool of those; default a fifth of the first cap). A socket past
  either cap is closed at once, before a byte of it is read. Both are lowered to at most half of
  ``MAX_CONNECTIONS``, so the rest stays free for everyone else.
* **A trusted proxy** (``TRUSTED_PROXY_IPS``) carries everyone's traffic: capping its address as one client would
  lock out every caller behind it, so its sockets are exempt from both socket caps (``MAX_CONNECTIONS`` and the
  head deadline still apply). The client it names in ``X-Forwarded-For`` is capped instead, per request
  (:class:`ClientRequestCap`): at most ``MAX_CONNECTIONS_PER_ADDRESS`` requests and WebSockets in progress, 503
  (a refused upgrade for a WebSocket) past it. A client's unfinished heads never reach the gateway through a
  proxy: bounding them is the proxy's job (nginx: ``client_header_timeout``).

Every refusal counts in ``gateway_refused_connections_total{reason}`` and is logged as a summary, never one line
per socket: the first at once (with its address), then one line per ``DROP_LOG_INTERVAL_S`` with the counts by
reason and the addresses refused most (:class:`RefusedConnections`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from gateway.api.auth import client_key
from gateway.config import Settings
from gateway.observe.droplog import DropCounter
from gateway.observe import metrics
from gateway.twilio.security import PEER_SCOPE_KEY, is_trusted_proxy

log = logging.getLogger("gateway.connections")

# Reasons, also the metric's label values.
OVER_MAX_CONNECTIONS = "max_connections"
OVER_PER_ADDRESS = "per_address_connections"
OVER_HEADS_PER_ADDRESS = "per_address_unfinished_heads"
OVER_PER_CLIENT = "per_client_requests"  # a client behind a trusted proxy
OVER_HEAD_SIZE = "head_too_large"  # answered 413 and closed (gateway.server.runner)
MAX_ADDRESSES_NAMED = 256  # distinct addresses a summary keeps counts for; the rest are "other"


def address_caps(settings: Settings) -> tuple[int, int]:
    """(open connections, unfinished request heads) one address may hold under ``settings``."""
    ceiling = max(1, settings.max_connections // 2)
    connections = min(settings.max_connections_per_address or max(2, settings.max_connections // 4), ceiling)
    heads = min(settings.max_unfinished_heads_per_address or max(1, connections // 5), connections)
    return connections, heads


def startup_warning(settings: Settings) -> str | None:
    """What to say at start when one address's share cannot hold MAX_CALLS streams: Twilio may stream many calls
    from one of its addresses (behind a trusted proxy the cap applies to that address per request all the same)."""
    per_address, _ = address_caps(settings)
    if per_address >= settings.max_calls:
        return None
    return (f"one address may hold {per_address} connections (MAX_CONNECTIONS_PER_ADDRESS, at most half of "
            f"MAX_CONNECTIONS={settings.max_connections}), fewer than MAX_CALLS={settings.max_calls}: Twilio may "
            "stream many calls from one of its addresses; raise MAX_CONNECTIONS (and MAX_CONNECTIONS_PER_ADDRESS)")


class RefusedConnections(DropCounter):
    """Refused connections of one server: counted by reason (and in the metric), logged as summaries that name
    the addresses refused most. A summary is also due ``interval_s`` after a burst, not only at the next refusal."""

    def __init__(self, interval_s: float) -> None:
        super().__init__(log, "incoming connections", interval_s,
                         counted=lambda reason, n: metrics.REFUSED_CONNECTIONS.labels(reason).inc(n))
        self.addresses: Counter[str] = Counter()
        self._timer: asyncio.TimerHandle | None = None

    def refuse(self, reason: str, address: str) -> None:
        if address not in self.addresses and len(self.addresses) >= MAX_ADDRESSES_NAMED:
            address = "other"
        self.addresses[address] += 1
        self.context = f"from {address}"  # what the first line says; a summary names the most refused ones
        self.drop(reason)
        if self._pending and self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.interval_s, self.flush)
            except RuntimeError:  # no loop (a unit test): the next refusal or flush() logs it
                pass

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        top = ", ".join(f"{address} x{count}" for address, count in self.addresses.most_common(3))
        self.context = f"(most from {top})" if top else ""
        super().flush()
        if not self._pending:
            self.addresses.clear()


class AddressTable:
    """Per-address counts of one server's connections (keyed by transport, so a connection upgraded to a
    WebSocket keeps its place until its socket closes, whichever protocol sees that)."""

    def __init__(self, settings: Settings) -> None:
        self.max_connections = settings.max_connections
        self.per_address, self.heads_per_address = address_caps(settings)
        self.trusted_proxies = settings.trusted_proxy_ips
        self.open: Counter[str] = Counter()
        self.waiting: Counter[str] = Counter()
        self._entries: dict[Any, list[Any]] = {}  # transport -> [address key, waiting for a head]
        self.refused = RefusedConnections(settings.drop_log_interval_s)

    def admit(self, transport: Any, host: str | None, open_now: int) -> bool:
        """May this new socket stay? ``open_now``: the server's open connections, this one included."""
        key = client_key(host)
        if open_now > self.max_connections:
            self.refused.refuse(OVER_MAX_CONNECTIONS, key)
            return False
        if is_trusted_proxy(host, self.trusted_proxies):
            return True  # the proxy's clients are capped per request (ClientRequestCap)
        if self.open[key] >= self.per_address:
            self.refused.refuse(OVER_PER_ADDRESS, key)
            return False
        if self.waiting[key] >= self.heads_per_address:
            self.refused.refuse(OVER_HEADS_PER_ADDRESS, key)
            return False
        self._entries[transport] = [key, True]
        self.open[key] += 1
        self.waiting[key] += 1
        return True

    def waiting_for_head(self, transport: Any, waiting: bool) -> None:
        entry = self._entries.get(transport)
        if entry is None or entry[1] == waiting:
            return
        entry[1] = waiting
        self.waiting[entry[0]] += 1 if waiting else -1
        if not self.waiting[entry[0]]:
            del self.waiting[entry[0]]

    def release(self, transport: Any) -> None:
        """The socket closed (idempotent)."""
        entry = self._entries.pop(transport, None)
        if entry is None:
            return
        key, waiting = entry
        for counts, held in ((self.open, True), (self.waiting, waiting)):
            if held:
                counts[key] -= 1
                if counts[key] <= 0:
                    del counts[key]


def table_of(server_state: Any, settings: Settings | None = None) -> AddressTable | None:
    """The address table of one uvicorn server (kept on its shared state); made on first use when ``settings``
    is given."""
    table = getattr(server_state, "gateway_addresses", None)
    if table is None and settings is not None:
        table = AddressTable(settings)
        server_state.gateway_addresses = table
    return table


class ClientRequestCap:
    """ASGI middleware, after X-Forwarded-For was applied: a client behind a trusted proxy may have at most
    ``limit`` requests and WebSockets in progress at once (its socket-level caps do not reach it: the proxy's
    sockets are exempt). Direct clients pass through: their sockets are capped already."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.limit = address_caps(settings)[0]
        self.trusted_proxies = settings.trusted_proxy_ips
        self.in_progress: Counter[str] = Counter()
        self.refused = RefusedConnections(settings.drop_log_interval_s)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or not is_trusted_proxy(scope.get(PEER_SCOPE_KEY), self.trusted_proxies):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = client_key(client[0] if client else None)
        if self.in_progress[key] >= self.limit:
            self.refused.refuse(OVER_PER_CLIENT, key)
            await _refuse(scope, send)
            return
        self.in_progress[key] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress[key] -= 1
            if self.in_progress[key] <= 0:
                del self.in_progress[key]


async def _refuse(scope: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})  # before accept: a 403 to the upgrade
        return
    body = b"too many requests in progress from your address\n"
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"1"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
