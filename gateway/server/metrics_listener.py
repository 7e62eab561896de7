"""``/metrics`` on a listener of its own (``METRICS_PORT`` on ``METRICS_HOST``), off the public port.

Where ``/metrics`` is served (:func:`public_metrics`):

* ``METRICS_PORT`` set: only here, on ``METRICS_HOST`` (default 127.0.0.1: nothing is exposed by accident; a
  container that Prometheus scrapes from another pod or host sets 0.0.0.0, and keeps that port unpublished or
  behind a NetworkPolicy). The public port answers 404.
* else ``METRICS_API_KEY`` set: on the public port, behind ``Authorization: Bearer <key>``.
* else, with a real model: nowhere (404 on the public port, and the start-up log says how to turn it on): call
  volume and spend are nobody's business but the operator's.
* else (the keyless embedded demo): on the public port, open, as before.

With ``METRICS_API_KEY`` and ``METRICS_PORT`` both set, the key is asked on the metrics port too.

One process (``gateway serve``) runs the listener on its own event loop, started with the app (:func:`serving`).
With ``--workers N`` the parent process runs it in a thread (:class:`MetricsThread`), and since the workers write
their samples to ``PROMETHEUS_MULTIPROC_DIR``, that one port answers with every worker's metrics added up; a worker
never binds it. The listener is uvicorn with the gateway's own protocol limits (header deadline, head size, a small
connection cap), serving ``GET /metrics`` and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import replace

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.config import Settings
from gateway.observe import metrics

log = logging.getLogger("gateway.metrics")

MAX_METRICS_CONNECTIONS = 16  # scrapers, not callers: a handful at once


def public_metrics(settings: Settings) -> bool:
    """Is ``GET /metrics`` served on the gateway's public port?"""
    if settings.metrics_port:
        return False
    return bool(settings.metrics_api_key) or settings.uses_embedded_model


def startup_notice(settings: Settings) -> str | None:
    """What the start-up log says about ``/metrics`` when it is served nowhere (a real model, neither setting)."""
    if settings.metrics_port or public_metrics(settings):
        return None
    return ("GET /metrics is off on the public port (a real model: call volume and spend are private). To scrape "
            "it, set METRICS_PORT (a listener of its own on METRICS_HOST, 127.0.0.1 by default; 0.0.0.0 in a "
            "container) or METRICS_API_KEY (Authorization: Bearer <key> on this port)")


def _bind(settings: Settings) -> socket.socket:
    host, port = settings.metrics_host, settings.metrics_port
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"METRICS_PORT {port} on METRICS_HOST {host} cannot be listened on: {error.strerror or error}"
                      ) from None
    sock.listen(64)
    sock.setblocking(False)
    return sock


def _server(settings: Settings) -> uvicorn.Server:
    """Beside the gateway's server (or in a thread of the workers' parent), whose signals are its owner's."""
    from gateway.server.runner import QuietServer, uvicorn_options

    # A scraper may still hold its kept-alive connection when it opens the next one: a few heads per address.
    limits = replace(settings, max_connections=MAX_METRICS_CONNECTIONS, trusted_proxy_ips=(),
                     max_connections_per_address=MAX_METRICS_CONNECTIONS // 2, max_unfinished_heads_per_address=4)
    app = Starlette(routes=[Route("/metrics", metrics.metrics_endpoint(settings.metrics_api_key), methods=["GET"])])
    config = uvicorn.Config(app, lifespan="off", log_config=None, log_level=settings.log_level, access_log=False,
                            **uvicorn_options(limits))
    return QuietServer(config)


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[None]:
    """The metrics listener on the running loop while the block runs (nothing without METRICS_PORT)."""
    if not settings.metrics_port:
        yield
        return
    sock = _bind(settings)
    server = _server(settings)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    log.info("GET /metrics on http://%s:%d/metrics (METRICS_PORT), not on the public port",
             settings.metrics_host, settings.metrics_port)
    try:
        yield
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
            await asyncio.wait_for(task, 5)
        sock.close()


class MetricsThread:
    """The metrics listener in a thread of its own (the workers' parent: its main thread waits on processes)."""

    def __init__(self, settings: Settings) -> None:
        self.sock = _bind(settings)  # now, so that a port in use stops the start with a clear error
        self.server = _server(settings)
        self.settings = settings
        self._thread = threading.Thread(target=self._run, name="gateway-metrics", daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self) -> MetricsThread:
        self._thread.start()
        log.info("GET /metrics of every worker on http://%s:%d/metrics (METRICS_PORT)",
                 self.settings.metrics_host, self.settings.metrics_port)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(5)
        self.sock.close()
