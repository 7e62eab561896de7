"""``gateway serve``'s one process: the app under uvicorn, with the server limits and the drain on SIGTERM.

Here, not in :mod:`.runner`, because it builds the app: the runner is the plumbing the app's own metrics listener
uses too (:mod:`.metrics_listener`), and the app must not be imported by what it imports.
"""

from __future__ import annotations

import socket
import sys

import uvicorn

from gateway.config import ConfigError, Settings
from gateway.server.app import create_app
from gateway.server.runner import DrainingServer, uvicorn_options


def serve_gateway(settings: Settings, sockets: list[socket.socket] | None = None, *,
                  metrics_port: bool = True) -> int:
    """Run the gateway under uvicorn with the drain (``gateway serve``, and each of its workers); the exit status.
    ``sockets``: an already listening socket (workers share their parent's); ``metrics_port``: False in a worker
    (its parent serves METRICS_PORT for all)."""
    try:
        app = create_app(settings, metrics_port=metrics_port)
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
