"""uvicorn's WebSocket protocol with the direct path (``gateway.server.direct_ws``), under a real uvicorn with the gateway's
options: an app that attaches a receiver gets text messages by callback, in order with what was queued before it
attached, and still gets the disconnect through ``receive()``; an app that attaches nothing gets plain ASGI."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator

import uvicorn
from websockets.asyncio.client import connect

from gateway.config import Settings
from gateway.media_stream.direct import direct_receive
from gateway.server.runner import free_port, uvicorn_options


class Recorder:
    """An ASGI WebSocket app: what it got, and how."""

    def __init__(self, attach_after: int | None) -> None:
        self.attach_after = attach_after  # attach once this many messages came through receive() (None: never)
        self.got: list[tuple[str, str]] = []  # (how, text)
        self.disconnected = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        attach = direct_receive(scope)
        assert attach is not None, "the gateway's server options offer the direct path"
        attached = False
        while True:
            if not attached and self.attach_after is not None and len(self.got) >= self.attach_after:
                attach(lambda data: self.got.append(("callback", data.decode())))
                attached = True
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnected.set()
                return
            self.got.append(("receive", message["text"]))
            if message["text"] == "echo":
                await send({"type": "websocket.send", "text": "echoed"})
            if not attached and self.attach_after is not None and len(self.got) >= self.attach_after:
                await asyncio.sleep(0.05)  # the client's next messages queue meanwhile


@contextlib.asynccontextmanager
async def serving(app: Recorder) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                            **uvicorn_options(Settings.from_env(dotenv=False)))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"ws://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        await task


async def test_an_attached_receiver_gets_messages_by_callback_in_order_with_those_queued_before() -> None:
    app = Recorder(attach_after=1)
    async with serving(app) as url:
        async with connect(url) as ws:
            for n in range(30):
                await ws.send(f"m{n}")
            await asyncio.sleep(0.2)
            await ws.send("echo")  # by callback: the app does not answer it (it is the app's to handle)
            await asyncio.sleep(0.1)
        await asyncio.wait_for(app.disconnected.wait(), 5)
    assert [text for _, text in app.got] == [f"m{n}" for n in range(30)] + ["echo"]
    hows = [how for how, _ in app.got]
    assert hows[0] == "receive" and "callback" in hows
    # Once a message came by callback, none came the other way after it: queued ones were taken first.
    assert hows == sorted(hows, key=lambda how: how == "callback")


async def test_without_a_receiver_it_is_plain_asgi() -> None:
    app = Recorder(attach_after=None)
    async with serving(app) as url:
        async with connect(url) as ws:
            for n in range(5):
                await ws.send(f"m{n}")
            await ws.send("echo")
            assert await asyncio.wait_for(ws.recv(), 5) == "echoed"
        await asyncio.wait_for(app.disconnected.wait(), 5)
    assert app.got == [("receive", f"m{n}") for n in range(5)] + [("receive", "echo")]
