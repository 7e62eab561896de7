"""Run the gateway app under a real uvicorn server inside a running event loop (demo, tests, benchmarks).

``gateway serve`` uses the same uvicorn options through :data:`UVICORN_OPTIONS`, so what the tests
exercise is what production runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import AsyncIterator

import uvicorn
from starlette.applications import Starlette

UVICORN_OPTIONS = dict(
    ws="websockets-sansio",
    ws_max_size=1 << 20,  # hard cap; frames over MAX_FRAME_BYTES are dropped by the gateway itself
    ws_per_message_deflate=False,  # Twilio does not negotiate it and base64 audio barely compresses
    proxy_headers=True,
)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def running_app(app: Starlette, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> AsyncIterator[str]:
    """Serve ``app`` until the block exits; yields ``http://host:port``."""
    port = port or free_port(host)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", **UVICORN_OPTIONS)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the caller owns signals
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
