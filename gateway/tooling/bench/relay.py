"""The null relay: the cheapest thing that moves the gateway's messages, on the gateway's own stack.

A Starlette WebSocket endpoint (``/media-stream``) under uvicorn with the gateway's server options
(:func:`gateway.server.runner.uvicorn_options`: the same WebSocket implementation, limits and pings). For each Twilio
connection it opens one WebSocket to the model (``--upstream``, as the gateway connects: no compression) and
forwards every Twilio frame verbatim to it and every model frame verbatim back. It parses nothing, keeps no
accounting and makes no decision: what the gateway costs beyond it is what its work (parsing, the call core,
transcoding, barge-in accounting) costs. ``python -m gateway.tooling.bench.relay --port P --upstream ws://...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


def relay_app(upstream: str) -> Starlette:
    from websockets.asyncio.client import connect

    async def media_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        async with connect(upstream, compression=None, max_size=16 * 1024 * 1024) as model:

            async def to_model() -> None:
                with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                    while True:
                        await model.send(await websocket.receive_text())

            async def to_twilio() -> None:
                async for frame in model:
                    await websocket.send_text(frame if isinstance(frame, str) else frame.decode())

            tasks = [asyncio.create_task(to_model()), asyncio.create_task(to_twilio())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await websocket.close()

    return Starlette(routes=[WebSocketRoute("/media-stream", media_stream)])


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from gateway.config import Settings
    from gateway.server.runner import uvicorn_options

    parser = argparse.ArgumentParser(prog="python -m gateway.tooling.bench.relay")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the model's WebSocket URL")
    args = parser.parse_args(argv)
    settings = Settings.from_env(dotenv=False)
    config = uvicorn.Config(relay_app(args.upstream), host=args.host, port=args.port, log_level="warning",
                            log_config=None, **uvicorn_options(settings))
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
