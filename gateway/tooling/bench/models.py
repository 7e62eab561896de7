"""The model side of a bench run, in its own process: ``python -m gateway.tooling.bench.models realtime|mirror``.

* ``realtime``: the embedded Realtime server (``gateway.local``, the echo agent), its audio paced at real time
  (``--speed 1``), for the gateway to talk to.
* ``mirror``: the model behind the null relay (:mod:`gateway.tooling.bench.relay`). It speaks Twilio's Media Streams
  protocol, since the relay forwards Twilio's frames verbatim: it runs the same voice activity detector as the
  embedded server on the caller's audio, and when the caller stops it plays back what they said as 100 ms
  ``media`` messages, each followed by a ``mark``, paced at real time (the echo agent's traffic); when the caller
  starts speaking over it, it sends ``clear`` and stops. So the phones see the same conversation either way.

Both record, for every frame of caller audio that arrives, the monotonic time it came off the socket and the
position of its end on the call's audio clock (ms of caller audio so far); ``--report FILE`` gets them as JSON
when the process is stopped (SIGTERM). All the bench's processes read the same monotonic clock.

``--tls-cert``/``--tls-key``: serve ``wss://`` (the bench makes a self-signed certificate for the run).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import signal
import ssl
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np
import orjson

MAX_ARRIVALS_PER_SESSION = 200_000  # a 60-minute call's frames, with room: bounded whatever happens
CHUNK_MS = 100
MULAW_PER_MS = 8


class ArrivalProbe:
    """Per session: (arrival, monotonic s; end of the frame's audio on the call's clock, ms)."""

    def __init__(self) -> None:
        self.sessions: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def audio_appended(self, session_id: str, arrived_ms: float, audio_end_ms: float) -> None:
        rows = self.sessions[session_id]
        if len(rows) < MAX_ARRIVALS_PER_SESSION:
            rows.append((arrived_ms / 1000.0, audio_end_ms))

    def session_closed(self, session_id: str) -> None:
        pass  # kept for the report

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({"arrivals": self.sessions}, f)


# ---------------------------------------------------------------------- the mirror (behind the null relay)


class MirrorCall:
    """One call seen through the null relay: Twilio's frames in, the echo agent's Twilio messages out."""

    def __init__(self, ws: Any, probe: ArrivalProbe, session_id: str) -> None:
        from gateway.audio.convert import mulaw_decode
        from gateway.local.vad import VoiceActivityDetector

        self.ws = ws
        self.probe = probe
        self.session_id = session_id
        self.decode = mulaw_decode
        self.vad = VoiceActivityDetector()
        self.stream_sid = ""
        self.heard = bytearray()  # the caller's current utterance (mu-law)
        self.audio_ms = 0.0
        self.reply: asyncio.Task[None] | None = None
        self.marks = 0

    async def run(self) -> None:
        try:
            async for text in self.ws:
                arrived = time.monotonic()
                message = orjson.loads(text)
                event = message.get("event")
                if event == "media":
                    audio = base64.b64decode(message["media"]["payload"])
                    self.audio_ms += len(audio) / MULAW_PER_MS
                    self.probe.audio_appended(self.session_id, arrived * 1000.0, self.audio_ms)
                    await self._caller_audio(audio)
                elif event == "start":
                    self.stream_sid = message["start"]["streamSid"]
                elif event == "stop":
                    break
        finally:
            if self.reply is not None:
                self.reply.cancel()

    async def _caller_audio(self, audio: bytes) -> None:
        if self.vad.speaking or self.heard:
            self.heard += audio
        for change in self.vad.feed(self.decode(audio)):
            if change.kind == "start":
                self.heard = bytearray(audio)
                if self.reply is not None and not self.reply.done():
                    self.reply.cancel()
                    await self.ws.send(orjson.dumps({"event": "clear", "streamSid": self.stream_sid}).decode())
            elif change.kind == "stop" and self.heard:
                said, self.heard = bytes(self.heard), bytearray()
                self.reply = asyncio.create_task(self._say(said))

    async def _say(self, audio: bytes) -> None:
        """Play ``audio`` back: a 100 ms media message and a mark, every 100 ms from now (real time)."""
        chunk = CHUNK_MS * MULAW_PER_MS
        start = time.monotonic()
        for n, offset in enumerate(range(0, len(audio), chunk)):
            await asyncio.sleep(max(0.0, start + n * CHUNK_MS / 1000 - time.monotonic()))
            payload = base64.b64encode(audio[offset : offset + chunk]).decode("ascii")
            self.marks += 1
            await self.ws.send(orjson.dumps({"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}).decode())
            await self.ws.send(orjson.dumps({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": f"m{self.marks}"}}).decode())


async def serve_mirror(host: str, port: int, probe: ArrivalProbe, tls: ssl.SSLContext | None) -> None:
    from websockets.asyncio.server import serve

    sessions = 0

    async def handle(ws: Any) -> None:
        nonlocal sessions
        sessions += 1
        with contextlib.suppress(Exception):
            await MirrorCall(ws, probe, f"mirror_{sessions}").run()

    async with serve(handle, host, port, compression=None, max_size=16 * 1024 * 1024, ssl=tls):
        await asyncio.Future()


async def serve_realtime(host: str, port: int, probe: ArrivalProbe, tls: ssl.SSLContext | None, speed: float) -> None:
    from functools import partial

    import gateway.local.server as local

    if tls is not None:
        local.serve = partial(local.serve, ssl=tls)  # this process only: wss://
    async with local.LocalRealtimeServer(host, port, speed=speed) as server:
        server.probe = probe
        await asyncio.Future()


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.tooling.bench.models")
    parser.add_argument("kind", choices=("realtime", "mirror"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--report", default="")
    parser.add_argument("--speed", type=float, default=1.0, help="realtime: response audio at this many times real time")
    parser.add_argument("--tls-cert", default="")
    parser.add_argument("--tls-key", default="")
    args = parser.parse_args(argv)
    probe = ArrivalProbe()
    tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None

    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)  # type: ignore[union-attr]
        if args.kind == "mirror":
            await serve_mirror(args.host, args.port, probe, tls)
        else:
            await serve_realtime(args.host, args.port, probe, tls, args.speed)

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(run())
    if args.report:
        probe.write(args.report)
    return 0


def inbound_delays(arrivals: dict[str, list[list[float]]], window: tuple[float, float]) -> tuple[np.ndarray, float]:
    """Per-frame delay above each session's fastest frame (ms) for the frames that arrived in ``window``
    (monotonic s), and the ms of caller audio that arrived in it.

    A frame whose audio ends at position ``p`` leaves the phone at stream time ``p`` (Twilio's schedule), so
    ``arrival - p`` is the one-way delay plus a per-session constant; its minimum over the session is the best
    case, and what a frame took beyond it is the delay the path (relay or gateway, and the phone's own lag)
    added. Caller audio held while a model session connected counts too (the first frames of a call)."""
    delays: list[np.ndarray] = []
    audio_ms = 0.0
    start, end = window
    for rows in arrivals.values():
        if len(rows) < 2:
            continue
        data = np.asarray(rows, dtype=np.float64)
        offset = data[:, 0] * 1000.0 - data[:, 1]
        inside = (data[:, 0] >= start) & (data[:, 0] < end)
        if inside.any():
            delays.append(offset[inside] - offset.min())
            ends = data[inside, 1]
            before = data[:, 1][data[:, 0] < start]
            audio_ms += ends.max() - (before.max() if before.size else 0.0)
    return (np.concatenate(delays) if delays else np.zeros(0)), audio_ms


if __name__ == "__main__":
    sys.exit(main())
