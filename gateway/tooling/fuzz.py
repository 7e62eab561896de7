"""``gateway fuzz``: a storm of hostile Twilio-side traffic against a real gateway process, beside real calls.

What it does, in order, all on 127.0.0.1 and bounded by ``--frames`` and ``--max-seconds``:

1. **Start** the gateway as its own process (``gateway serve --host 127.0.0.1 --port <free>``) with a clean
   environment: no API key (so it runs its embedded echo model), no Twilio token, no recording, no tools.
   Wait for ``GET /healthz``. Its resident memory is read from ``/proc/<pid>/status`` (VmRSS).
2. **Baseline**: ``--calls`` real calls at once, each a replay phone (:func:`gateway.tooling.replay.run_call`) that says
   the bundled ``caller_hello`` and waits for the agent's answer, then hangs up. RSS is read once they are over.
3. **Storm**: ``--connections`` hostile workers, each holding one WebSocket at a time (reconnecting when one ends),
   send ``--frames`` frames in all, paced over about one call's length, while ``--calls`` real calls run again
   ("during"). Frames (the ``kind`` column): valid Twilio frames of their own stream (``connected``, ``start``,
   ``media`` floods), frames before ``start`` (``early``), a ``second-start``, ``media-jump`` (timestamps leaping
   forward, backward, to 0, to 10^12), ``foreign-sid`` frames, ``forged-mark`` echoes (never-sent names, real
   marks echoed twice or out of order, other generations), ``dtmf`` (good and bad digits), ``mutated`` valid frames
   (fields replaced by wrong types, huge numbers, NaN/Infinity literals, ints past Python's digit limit,
   non-base64 payloads, 10k-character strings, deep nesting; fields deleted or added), ``truncated`` JSON,
   random ``text``, random ``binary`` frames, ``deep`` nesting, ``oversized`` frames (64 KiB .. 1 MiB: dropped,
   the connection goes on), ``huge`` ones (over 1 MiB: the gateway closes with 1009) and a valid ``stop``. Some
   upgrades go to random paths (``/media-stream/<random>``, others) or carry a random ``X-Twilio-Signature``: a
   refusal (close 1008, or an HTTP 4xx at the handshake) is fine, a 5xx never. Every frame comes from a seeded
   ``random.Random`` (``--seed``): the same seed sends the same frames (timing, and so close codes, may vary).
4. **After**: the calls once more, RSS again, ``/healthz`` again, and the gateway's ``active_calls`` back to 0.

Reading the output: ``frames`` by kind and the total (must equal ``--frames``); ``connections`` opened, by path,
and how each ended: ``client 1000`` (we closed it), ``server <code>`` (the gateway closed it: 1000 after a
``stop``, 1008 a refusal or no ``start`` in time, 1009 a frame over 1 MiB; 1011 would be a crash in the
handler), ``http <status>`` (the upgrade was refused); ``calls`` per phase: how many were OK (answered, no
protocol violation, hung up normally), turn latency p50/max (caller stops -> first agent audio heard);
``RSS`` after the baseline and after the storm. Then the checks. Exit status 0 when every check passes, 1
otherwise, 2 for bad options. ``--json`` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.tooling.command import Stopped, run_command

HOST = "127.0.0.1"
RSS_TOLERANCE_MB = 20.0  # RSS after the storm (and the calls after it) minus RSS after the baseline calls
CALL_TIMEOUT_S = 30.0
HANGUP_AFTER_MS = 300.0
SEND_TIMEOUT_S = 10.0  # a hostile send that takes longer: the gateway stopped reading (a stall)
CONNECT_TIMEOUT_S = 5.0
STOP_RESERVE_S = 4.0  # of --max-seconds, kept to stop the gateway process
MIN_MAX_SECONDS = 10.0
MAX_FRAME_BYTES = 65536  # the gateway drops larger text frames
WS_MAX_SIZE = 1 << 20  # uvicorn's hard cap: larger frames close the socket with 1009
SAMPLE = "caller_hello"

# Relative weights of the frames a started hostile connection sends (the opening frames are apart).
WEIGHTS: dict[str, float] = {
    "media": 2.5,  # each pick starts a burst of 5..40 in a row: a flood
    "media-jump": 5.0,
    "mutated": 18.0,
    "truncated": 7.0,
    "text": 7.0,
    "binary": 7.0,
    "forged-mark": 7.0,
    "foreign-sid": 6.0,
    "dtmf": 3.0,
    "second-start": 2.0,
    "deep": 2.0,
    "oversized": 1.2,
    "huge": 0.12,
    "stop": 0.5,
}
ENDS_CONNECTION = frozenset({"huge", "stop"})


# ---------------------------------------------------------------------- frames


class Raw:
    """A JSON token spliced in verbatim: what json.dumps cannot write (1e999, 5000 digits, deep nesting)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r}{'...' if len(self.text) > 40 else ''})"


def dumps(value: Any, ensure_ascii: bool = True) -> str:
    """json.dumps (NaN/Infinity as Python writes them) with every :class:`Raw` spliced in."""
    raws: dict[str, str] = {}
    token = uuid.uuid4().hex

    def swap(v: Any) -> Any:
        if isinstance(v, Raw):
            key = f"@@{token}:{len(raws)}@@"
            raws[f'"{key}"'] = v.text
            return key
        if isinstance(v, dict):
            return {k: swap(x) for k, x in v.items()}
        if isinstance(v, list):
            return [swap(x) for x in v]
        return v

    text = json.dumps(swap(value), ensure_ascii=ensure_ascii)
    for key, raw in raws.items():
        text = text.replace(key, raw, 1)
    return text


def _sid(rng: random.Random, prefix: str) -> str:
    return prefix + "".join(rng.choice("0123456789abcdef") for _ in range(32))


_ALPHABETS = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ",
    '{}[]":,0123456789.eE+-truefalsnulINaify \\/',
    "é漢字🙂\u200b\u202e\x00\x1f\x7f\ufeff\uffff",
)


def random_text(rng: random.Random, n: int) -> str:
    """Random text, never a lone surrogate (it could not be sent as UTF-8)."""
    pick = rng.random()
    if pick < 0.6:
        alphabet = rng.choice(_ALPHABETS)
        piece = "".join(rng.choice(alphabet) for _ in range(min(n, 64)))
    else:
        piece = "".join(chr(rng.choice((rng.randint(0x20, 0xD7FF), rng.randint(0xE000, 0x10FFFF)))) for _ in range(min(n, 64)))
    if not piece:
        return ""
    return (piece * (n // len(piece) + 1))[:n]


def _nested(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def hostile_value(rng: random.Random) -> Any:
    """A value no field expects: the mutations of tests/test_properties_edge.py."""
    choice = rng.randrange(16)
    if choice == 0:
        return rng.choice([None, True, False, 0, -1, -(2**63), 2**64, 10**30, -1.5, 1e308, [], {}, "", [1, [2, [3]]]])
    if choice == 1:
        return Raw(rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "-0", "1E400"]))
    if choice == 2:
        return Raw("9" * rng.randint(4301, 6000))  # past Python's int digit limit
    if choice == 3:
        return rng.choice([str(rng.randint(-10**6, 10**12)), "-20", " 12 ", "1_000", "0x10", "1e3", "9" * 5000])
    if choice == 4:
        return rng.choice(["!!not base64!!", "a", "AAA", "AA=A", "A A=", "=" * 8, "\u00ff\u00fe", "////" * 3 + "="])
    if choice == 5:
        return random_text(rng, 10_000)
    if choice == 6:
        return Raw(_nested(rng.randint(1, 3000), rng.choice(["list", "object"])))
    if choice == 7:
        return {random_text(rng, rng.randint(0, 12)): hostile_value(rng) for _ in range(rng.randint(0, 3))}
    if choice == 8:
        return [hostile_value(rng) for _ in range(rng.randint(0, 3))]
    if choice == 9:
        return rng.uniform(-1e300, 1e300)
    if choice == 10:
        return rng.randint(-(10**400), 10**400)
    if choice == 11:
        return _sid(rng, rng.choice(["MZ", "CA", "AC", "XX"]))
    return random_text(rng, rng.randint(0, 80))


def key_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path inside nested dicts and lists (list items by index)."""
    out: list[tuple] = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append(prefix + (k,))
            out.extend(key_paths(v, prefix + (k,)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.append(prefix + (i,))
            out.extend(key_paths(v, prefix + (i,)))
    return out


def _get(root: Any, path: tuple) -> Any:
    for key in path:
        root = root[key]
    return root


def _parent(root: Any, path: tuple) -> Any:
    for key in path[:-1]:
        root = root[key]
    return root


def mutate(frame: dict[str, Any], rng: random.Random) -> str:
    """A valid frame with one to three mutations: a field replaced by a hostile value, deleted, nested, added."""
    frame = json.loads(json.dumps(frame))
    for _ in range(rng.randint(1, 3)):
        paths = key_paths(frame)
        how = rng.choice(["replace", "replace", "replace", "delete", "add", "nest"])
        if how == "add" or not paths:
            target = _get(frame, rng.choice([()] + [p for p in paths if isinstance(_get(frame, p), dict)]))
            target[rng.choice(["event", "streamSid", "media", "mark", "start", "payload", "timestamp", "x"])] = hostile_value(rng)
            continue
        path = rng.choice(paths)
        parent = _parent(frame, path)
        if how == "delete":
            del parent[path[-1]]
        elif how == "nest":
            parent[path[-1]] = Raw(_nested(rng.randint(1, 2000), rng.choice(["list", "object"])))
        else:
            parent[path[-1]] = hostile_value(rng)
    return dumps(frame)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class HostileStream:
    """One hostile connection's Twilio identity and clocks; builds its frames."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.stream_sid = _sid(rng, "MZ")
        self.call_sid = _sid(rng, "CA")
        self.account_sid = _sid(rng, "AC")
        self.timestamp_ms = 0
        self.seq = 0
        self.started = False
        self.marks_seen: list[str] = []  # mark names the gateway sent on this connection (echoed, forged)

    def _seq(self) -> str:
        self.seq += 1
        return str(self.seq)

    def connected(self) -> dict[str, Any]:
        return {"event": "connected", "protocol": "Call", "version": "1.0.0"}

    def start(self, stream_sid: str | None = None) -> dict[str, Any]:
        rng = self.rng
        params = {random_text(rng, rng.randint(1, 12)): random_text(rng, rng.randint(0, 40)) for _ in range(rng.randint(0, 4))}
        sid = stream_sid or self.stream_sid
        return {
            "event": "start",
            "sequenceNumber": self._seq(),
            "start": {
                "accountSid": self.account_sid,
                "streamSid": sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": params,
            },
            "streamSid": sid,
        }

    def payload(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.5:
            return b"\xff" * 160  # mu-law silence
        return rng.randbytes(rng.choice([160, 160, 160, 0, 1, 80, 320, 1600]))

    def media(self, stream_sid: str | None = None, timestamp_ms: int | None = None) -> dict[str, Any]:
        audio = self.payload()
        ts = self.timestamp_ms if timestamp_ms is None else timestamp_ms
        if timestamp_ms is None:
            self.timestamp_ms += max(1, len(audio) // 8)
        return {
            "event": "media",
            "sequenceNumber": self._seq(),
            "media": {"track": "inbound", "chunk": str(self.seq), "timestamp": str(ts), "payload": _b64(audio)},
            "streamSid": stream_sid or self.stream_sid,
        }

    def mark(self, name: str, stream_sid: str | None = None) -> dict[str, Any]:
        return {"event": "mark", "sequenceNumber": self._seq(), "streamSid": stream_sid or self.stream_sid, "mark": {"name": name}}

    def dtmf(self, digit: str, stream_sid: str | None = None) -> dict[str, Any]:
        return {"event": "dtmf", "sequenceNumber": self._seq(), "streamSid": stream_sid or self.stream_sid,
                "dtmf": {"track": "inbound_track", "digit": digit}}

    def stop(self, stream_sid: str | None = None) -> dict[str, Any]:
        return {"event": "stop", "sequenceNumber": self._seq(), "streamSid": stream_sid or self.stream_sid,
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}}

    def any_valid(self, stream_sid: str | None = None) -> dict[str, Any]:
        rng = self.rng
        kind = rng.choice(["media", "media", "mark", "dtmf", "stop", "start", "connected"])
        if kind == "media":
            return self.media(stream_sid)
        if kind == "mark":
            return self.mark(self.forged_name(), stream_sid)
        if kind == "dtmf":
            return self.dtmf(rng.choice("0123456789*#"), stream_sid)
        if kind == "stop":
            return self.stop(stream_sid)
        if kind == "start":
            return self.start(stream_sid)
        return self.connected()

    def forged_name(self) -> str:
        rng = self.rng
        if self.marks_seen and rng.random() < 0.4:
            return rng.choice(self.marks_seen)  # a real mark, echoed again or out of order
        return rng.choice([
            "never-sent",
            "g0:100:item_x",
            f"g{rng.randint(0, 5)}:{rng.randint(-10, 10**6)}:item_{rng.randint(0, 9)}",
            f"g{rng.randint(0, 3)}:{rng.randint(0, 10**5)}:{random_text(rng, rng.randint(0, 240))}",
            "g" + "9" * 250 + ":1:x",
            random_text(rng, rng.randint(1, 256)),
            "g0:" + "9" * 250,
            "g1:2:",
            ":",
        ])[:256] or "x"

    # ---- one frame of a kind: (the frame, binary?)

    def frame(self, kind: str) -> str | bytes:
        rng = self.rng
        if kind == "connected":
            return json.dumps(self.connected())
        if kind == "start":
            self.started = True
            return json.dumps(self.start())
        if kind == "second-start":
            return json.dumps(self.start(rng.choice([self.stream_sid, _sid(rng, "MZ")])))
        if kind == "early":
            return json.dumps(rng.choice([self.media(), self.mark(self.forged_name()), self.dtmf("1"), self.stop()]))
        if kind == "media":
            return json.dumps(self.media())
        if kind == "media-jump":
            jump = rng.choice([1000, 60_000, 10**6, 10**9, 10**12, -1000, -(10**6)])
            ts = 0 if rng.random() < 0.2 else self.timestamp_ms + jump  # negative: the parser refuses it
            frame = self.media(timestamp_ms=ts)
            self.timestamp_ms = max(0, ts) + 20
            return json.dumps(frame)
        if kind == "foreign-sid":
            return json.dumps(self.any_valid(_sid(rng, "MZ")))
        if kind == "forged-mark":
            return json.dumps(self.mark(self.forged_name()))
        if kind == "dtmf":
            return json.dumps(self.dtmf(rng.choice(["1", "#", "*", "9", "w", "x", "12", "", "0" * 9, "A"])))
        if kind == "stop":
            return json.dumps(self.stop())
        if kind == "mutated":
            return mutate(self.any_valid(), rng)
        if kind == "truncated":
            text = json.dumps(self.any_valid())
            return text[: rng.randrange(max(1, len(text)))]
        if kind == "text":
            return random_text(rng, rng.choice([0, 1, 10, 100, 1000, rng.randint(0, 5000)]))
        if kind == "binary":
            if rng.random() < 0.2:
                return json.dumps(self.media()).encode()  # a valid frame, but binary
            return rng.randbytes(rng.choice([0, 1, 16, 160, 1000, rng.randint(0, 5000)]))
        if kind == "deep":
            depth = rng.choice([rng.randint(900, 1100), rng.randint(1000, 12_000)])
            nested = _nested(depth, rng.choice(["list", "object"]))
            if rng.random() < 0.5:
                return nested
            return f'{{"event":"media","streamSid":"{self.stream_sid}","media":{{"timestamp":"0","payload":{nested}}}}}'
        if kind == "oversized":
            n = rng.choice([MAX_FRAME_BYTES + 1, rng.randint(MAX_FRAME_BYTES + 1, 200_000), rng.randint(200_000, WS_MAX_SIZE),
                            WS_MAX_SIZE])
            return self._sized(n)
        if kind == "huge":
            return self._sized(rng.choice([WS_MAX_SIZE + 1, rng.randint(WS_MAX_SIZE + 1, WS_MAX_SIZE + 200_000)]))
        raise ValueError(kind)

    def _sized(self, n: int) -> str:
        """A text frame of exactly ``n`` characters: filler, or a media frame whose payload makes up the size."""
        if self.rng.random() < 0.5:
            return "x" * n
        head = f'{{"event":"media","streamSid":"{self.stream_sid}","media":{{"timestamp":"{self.timestamp_ms}","payload":"'
        tail = '"}}'
        return head + "A" * max(0, n - len(head) - len(tail)) + tail


# ---------------------------------------------------------------------- the storm


@dataclass
class StormStats:
    frames: Counter = field(default_factory=Counter)  # kind -> frames sent
    bytes_sent: int = 0
    connections: int = 0
    paths: Counter = field(default_factory=Counter)  # "/media-stream", "/media-stream/<random>", "other path"
    with_signature: int = 0
    endings: Counter = field(default_factory=Counter)  # "client 1000", "server 1009", "http 403", ...
    endings_after: Counter = field(default_factory=Counter)  # "server 1009 after huge on /media-stream", ...
    received: int = 0  # frames the gateway sent to hostile connections
    stalls: int = 0

    @property
    def frames_sent(self) -> int:
        return sum(self.frames.values())


def _random_path(rng: random.Random) -> tuple[str, str]:
    pick = rng.random()
    safe = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~%"
    token = "".join(rng.choice(safe) for _ in range(rng.choice([1, 8, 32, 120, 300])))
    if pick < 0.78:
        return "/media-stream", "/media-stream"
    if pick < 0.80:
        return "/media-stream?" + token, "/media-stream?<random>"
    if pick < 0.92:
        return "/media-stream/" + token, "/media-stream/<random>"
    return rng.choice(["/" + token, "/media-stream/" + token + "/x", "/healthz", "/incoming-call", "/calls",
                       "/media-streamx", "/%00", "/media-stream/%2e%2e/x"]), "other path"


async def hostile_worker(
    index: int, quota: int, seed: int, port: int, pace_s: float, stats: StormStats, deadline: float,
    force_big: bool,
) -> None:
    """Send ``quota`` frames over successive connections, paced to last about ``pace_s`` seconds."""
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.protocol import State

    rng = random.Random(f"{seed}:{index}")
    loop = asyncio.get_running_loop()
    started_at = loop.time()
    sent = 0
    failures = 0  # connections in a row that could not even be opened
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    while sent < quota and loop.time() < deadline and failures < 50:
        path, path_kind = _random_path(rng)
        headers = {}
        if rng.random() < 0.3:
            signature_alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
            headers["X-Twilio-Signature"] = "".join(rng.choice(signature_alphabet) for _ in range(rng.randint(0, 60)))
        stream = HostileStream(rng)
        # The connection's opening: maybe frames before start, then (mostly) connected + start; then the body.
        plan: list[str] = ["early"] * (rng.randint(1, 5) if rng.random() < 0.25 else 0)
        if rng.random() < 0.85:
            plan += ["connected", "start"]
        body = rng.randint(10, 250)
        if force_big:  # one run always has a frame over 64 KiB (dropped) and one over 1 MiB (closed, 1009)
            path, path_kind = "/media-stream", "/media-stream"
            plan += ["connected", "start"] * ("start" not in plan) + ["media"] * 5 + ["oversized", "media", "huge"]
            force_big = False
        stats.connections += 1
        stats.paths[path_kind] += 1
        stats.with_signature += bool(headers)
        try:
            ws = await connect(
                f"ws://{HOST}:{port}{path}", additional_headers=headers, compression=None, max_size=None,
                ping_interval=None, open_timeout=CONNECT_TIMEOUT_S, close_timeout=2, user_agent_header="Twilio.TmeWs/1.0",
            )
        except InvalidStatus as refused:
            stats.endings[f"http {refused.response.status_code}"] += 1
            continue
        except Exception as error:  # noqa: BLE001 - any failure to connect is recorded
            stats.endings[f"connect failed: {type(error).__name__}"] += 1
            failures += 1
            await asyncio.sleep(0.05)
            continue
        failures = 0

        # The socket and the stream are arguments: a closure would read the loop's next ones if this one outlived it.
        async def drain(ws: ClientConnection, stream: HostileStream) -> None:
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    stats.received += 1
                    if isinstance(message, str) and message.startswith('{"event":"mark"'):
                        with contextlib.suppress(ValueError, KeyError, TypeError):
                            stream.marks_seen.append(json.loads(message)["mark"]["name"])
                            del stream.marks_seen[:-50]

        reader = asyncio.create_task(drain(ws, stream))
        stalled = False
        kind = "nothing"
        try:
            n, burst = 0, 0
            while sent < quota and loop.time() < deadline:
                if plan:
                    kind = plan.pop(0)
                elif n >= body:
                    break
                elif burst:
                    kind, burst = "media", burst - 1
                else:
                    kind = rng.choices(kinds, weights)[0]
                    if kind == "media":
                        burst = rng.randint(5, 40)  # a flood
                    elif kind == "second-start" and not stream.started:
                        kind = "start"
                frame = stream.frame(kind)
                # Pace: frame number `sent` of `quota` goes out at started_at + pace_s * sent / quota.
                due = started_at + pace_s * sent / max(1, quota)
                if due - loop.time() > 0.002:
                    await asyncio.sleep(due - loop.time())
                if ws.state is not State.OPEN:
                    break  # the gateway closed it: the frame goes on the next connection
                try:
                    await asyncio.wait_for(ws.send(frame), SEND_TIMEOUT_S)
                except ConnectionClosed:
                    pass  # it went out while the gateway was closing: sent, and the connection is over
                except TimeoutError:
                    stalled = True  # the gateway stopped reading this socket
                sent += 1
                n += 1
                stats.frames[kind] += 1
                stats.bytes_sent += len(frame) if isinstance(frame, bytes) else len(frame.encode("utf-8"))
                if stalled:
                    break
                if kind in ENDS_CONNECTION:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(reader), 3.0)  # the gateway closes it
                    break
        finally:
            if stalled:
                ws.transport.abort()
                stats.stalls += 1
                stats.endings["stalled (send timeout)"] += 1
            else:
                by = "server" if ws.state is not State.OPEN else "client"
                with contextlib.suppress(Exception):
                    if by == "client":
                        await ws.close()
                    else:  # the close code is known once the closing handshake is over
                        await asyncio.wait_for(ws.wait_closed(), 3.0)
                ending = f"{by} {ws.close_code if ws.close_code is not None else 1006}"
                stats.endings[ending] += 1
                stats.endings_after[f"{ending} after {kind} on {path_kind}"] += 1
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 3.0)
            reader.cancel()


async def run_storm(frames: int, connections: int, seed: int, port: int, pace_s: float, deadline: float) -> StormStats:
    stats = StormStats()
    quotas = [frames // connections + (1 if i < frames % connections else 0) for i in range(connections)]
    await asyncio.gather(*(
        hostile_worker(i, q, seed, port, pace_s, stats, deadline, force_big=(i == 0 and q >= 20))
        for i, q in enumerate(quotas)
    ))
    return stats


# ---------------------------------------------------------------------- real calls


@dataclass
class CallOutcome:
    ok: bool
    answered: bool
    violations: int
    latency_ms: float | None
    ended_by: str
    seconds: float
    error: str = ""


@dataclass
class Phase:
    name: str
    calls: list[CallOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return sum(c.ok for c in self.calls)

    @property
    def latencies(self) -> list[float]:
        return [c.latency_ms for c in self.calls if c.latency_ms is not None]

    def to_dict(self) -> dict[str, Any]:
        lat = self.latencies
        return {
            "name": self.name,
            "calls": len(self.calls),
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "latency_ms_p50": round(statistics.median(lat), 1) if lat else None,
            "latency_ms_max": round(max(lat), 1) if lat else None,
            "outcomes": [asdict(c) for c in self.calls],
        }


async def one_call(url: str, audio: bytes) -> CallOutcome:
    from gateway.tooling.replay import CallerTurn, run_call

    t0 = time.monotonic()
    try:
        report = await run_call(
            url, [CallerTurn(audio, after_silence_ms=300, name="hello")], timeout_s=CALL_TIMEOUT_S,
            hangup_after_ms=HANGUP_AFTER_MS,
        )
    except Exception as error:  # noqa: BLE001 - a call that cannot even connect is a failed call
        return CallOutcome(False, False, 0, None, "error", time.monotonic() - t0, f"{type(error).__name__}: {error}"[:300])
    turn = report.turns[0] if report.turns else None
    answered = turn is not None and turn.completed and turn.response_ms is not None
    ok = answered and not report.violations and report.ended_by == "hangup"
    return CallOutcome(ok, answered, len(report.violations), turn.response_ms if turn else None, report.ended_by,
                       time.monotonic() - t0, "; ".join(f"{v.kind}: {v.reason}" for v in report.violations[:3]))


async def run_calls(name: str, count: int, url: str, audio: bytes) -> Phase:
    t0 = time.monotonic()
    calls = await asyncio.gather(*(one_call(url, audio) for _ in range(count)))
    return Phase(name, list(calls), time.monotonic() - t0)


# ---------------------------------------------------------------------- the run


@dataclass
class FuzzConfig:
    frames: int = 5000
    connections: int = 8
    calls: int = 4
    seed: int | None = None
    max_seconds: float = 120.0

    def validate(self) -> None:
        if self.frames < 1:
            raise ValueError("--frames must be at least 1")
        if self.connections < 1:
            raise ValueError("--connections must be at least 1")
        if self.calls < 1:
            raise ValueError("--calls must be at least 1")
        if self.max_seconds < MIN_MAX_SECONDS:
            raise ValueError(f"--max-seconds must be at least {MIN_MAX_SECONDS:g}")


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class FuzzResult:
    config: FuzzConfig
    seed: int
    gateway_pid: int | None = None
    port: int | None = None
    storm: StormStats = field(default_factory=StormStats)
    storm_seconds: float = 0.0
    phases: list[Phase] = field(default_factory=list)
    rss_mb: dict[str, float | None] = field(default_factory=dict)  # started, baseline, storm_peak, after
    healthz_status: int | None = None
    active_calls_end: int | None = None
    seconds: float = 0.0
    timed_out: bool = False
    error: str = ""
    gateway_output_tail: str = ""
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def exit_status(self) -> int:
        return 0 if self.passed else 1

    def phase(self, name: str) -> Phase | None:
        return next((p for p in self.phases if p.name == name), None)

    def evaluate(self) -> None:
        cfg, storm, checks = self.config, self.storm, []
        checks.append(Check("finished in time", not self.timed_out and not self.error,
                            self.error or (f"over --max-seconds {cfg.max_seconds:g}" if self.timed_out else f"{self.seconds:.1f} s")))
        checks.append(Check("gateway up after the storm (healthz 200)", self.healthz_status == 200,
                            f"healthz {self.healthz_status}"))
        for name in ("baseline", "during", "after"):
            phase = self.phase(name)
            got = phase.ok if phase else 0
            bad = [c for c in phase.calls if not c.ok] if phase else []
            detail = f"{got} of {cfg.calls} OK (answered, no protocol violation, hung up)" if phase else "not run"
            if bad:
                detail += "; failed: " + ", ".join(
                    f"ended_by={c.ended_by} answered={c.answered} violations={c.violations} {c.error}".strip() for c in bad[:3])
            checks.append(Check(f"calls {name} the storm" if name != "baseline" else "calls before the storm (baseline)",
                                got == cfg.calls, detail))
        checks.append(Check("every hostile frame sent", storm.frames_sent == cfg.frames,
                            f"{storm.frames_sent} of {cfg.frames}"))
        bad_ends = {k: v for k, v in storm.endings.items()
                    if k.startswith("http 5") or k == "server 1011" or k.startswith("stalled") or k.startswith("connect failed")}
        checks.append(Check("hostile connections refused or closed cleanly (no 5xx, no 1011, no stall)", not bad_ends,
                            ", ".join(f"{k}: {v}" for k, v in bad_ends.items()) or "ok"))
        base, after = self.rss_mb.get("baseline"), self.rss_mb.get("after")
        if base is None or after is None:
            checks.append(Check(f"RSS after the storm within +{RSS_TOLERANCE_MB:g} MB of the baseline", False, "RSS not read"))
        else:
            checks.append(Check(f"RSS after the storm within +{RSS_TOLERANCE_MB:g} MB of the baseline",
                                after - base < RSS_TOLERANCE_MB, f"{base:.1f} -> {after:.1f} MB ({after - base:+.1f} MB)"))
        checks.append(Check("no call left open at the end (healthz active_calls 0)", self.active_calls_end == 0,
                            f"active_calls {self.active_calls_end}"))
        self.checks = checks

    def to_dict(self) -> dict[str, Any]:
        storm = self.storm
        return {
            "result": "PASS" if self.passed else "FAIL",
            "exit_status": self.exit_status,
            "config": asdict(self.config) | {"seed": self.seed},
            "gateway": {"pid": self.gateway_pid, "port": self.port, "host": HOST},
            "frames": {"sent": storm.frames_sent, "by_kind": dict(storm.frames.most_common()), "bytes": storm.bytes_sent},
            "connections": {
                "opened": storm.connections,
                "by_path": dict(storm.paths),
                "with_random_signature": storm.with_signature,
                "ended": dict(storm.endings.most_common()),
                "ended_after_last_frame": dict(storm.endings_after.most_common()),
                "frames_received_from_gateway": storm.received,
            },
            "storm_seconds": round(self.storm_seconds, 2),
            "phases": [p.to_dict() for p in self.phases],
            "rss_mb": {k: (round(v, 1) if v is not None else None) for k, v in self.rss_mb.items()},
            "rss_tolerance_mb": RSS_TOLERANCE_MB,
            "healthz_status": self.healthz_status,
            "active_calls_end": self.active_calls_end,
            "seconds": round(self.seconds, 2),
            "timed_out": self.timed_out,
            "error": self.error,
            "checks": [asdict(c) for c in self.checks],
        }

    def format(self) -> str:
        cfg, storm = self.config, self.storm
        lines = [
            f"gateway fuzz: {'PASS' if self.passed else 'FAIL'}   seed {self.seed}   {self.seconds:.1f} s "
            f"(limit {cfg.max_seconds:g} s)",
            f"gateway pid {self.gateway_pid} on {HOST}:{self.port} (embedded model, separate process)",
            "",
            f"hostile frames: {storm.frames_sent} of {cfg.frames} sent by {cfg.connections} workers in "
            f"{self.storm_seconds:.1f} s ({storm.bytes_sent / 1e6:.1f} MB)",
            f"  {'kind':<14}{'frames':>8}",
        ]
        lines += [f"  {kind:<14}{n:>8}" for kind, n in storm.frames.most_common()]
        paths = ", ".join(f"{k}: {v}" for k, v in storm.paths.most_common()) or "none"
        lines += [
            "",
            f"connections opened: {storm.connections} ({paths}; with a random X-Twilio-Signature: {storm.with_signature}); "
            f"frames received from the gateway: {storm.received}",
            f"  {'ended':<28}{'count':>6}",
        ]
        lines += [f"  {k:<28}{v:>6}" for k, v in storm.endings.most_common()]
        lines += ["", f"  {'calls':<10}{'ok':>7}{'answered':>10}{'violations':>12}{'latency p50 / max':>22}{'phase':>9}"]
        for phase in self.phases:
            lat = phase.latencies
            latency = f"{statistics.median(lat):.0f} / {max(lat):.0f} ms" if lat else "-"
            lines.append(
                f"  {phase.name:<10}{f'{phase.ok}/{len(phase.calls)}':>7}{sum(c.answered for c in phase.calls):>10}"
                f"{sum(c.violations for c in phase.calls):>12}{latency:>22}{phase.seconds:>8.1f}s"
            )

        def mb(key: str) -> str:
            value = self.rss_mb.get(key)
            return f"{value:.1f} MB" if value is not None else "-"

        lines += [
            "",
            f"gateway RSS: {mb('started')} started, {mb('baseline')} after the baseline calls, {mb('storm_peak')} peak "
            f"during the storm, {mb('after')} after the storm and the calls after it (tolerance +{RSS_TOLERANCE_MB:g} MB)",
            "",
            "checks",
        ]
        lines += [f"  {'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}" for c in self.checks]
        if self.gateway_output_tail:
            lines += ["", "gateway output (tail):", self.gateway_output_tail]
        return "\n".join(lines)


def _clean_env() -> dict[str, str]:
    """The gateway's environment: only what runs Python, and every setting that could change the run pinned."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "VIRTUAL_ENV", "MALLOC_ARENA_MAX")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = package_root  # the gateway imports as this process does, installed or not
    env["PYTHONUNBUFFERED"] = "1"
    env["LOG_LEVEL"] = "warning"
    # Set empty, so a .env file (loaded without override) cannot bring them back.
    for name in ("OPENAI_API_KEY", "REALTIME_API_KEY", "AZURE_OPENAI_API_KEY", "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID",
                 "PUBLIC_URL", "RECORD_CALLS_DIR", "TOOLS_MODULE", "REDIS_URL", "STORE_URL", "API_KEYS",
                 "INSECURE_DEV_MODE", "REALTIME_URL"):
        env[name] = ""
    env["LOCAL_AGENT"] = "echo"
    env["STORE_URL"] = "memory://"  # records stay in the process (the default is a SQLite file in the working directory)
    env["DRAIN_TIMEOUT_S"] = "0"  # stopped by the fuzzer at the end: no drain to wait for
    return env


async def _healthz(port: int) -> tuple[int, dict[str, Any]]:
    from gateway.tooling.bench import _http_get

    status, body = await asyncio.wait_for(_http_get(HOST, port, "/healthz"), 5.0)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {}


async def _settle(port: int, timeout_s: float = 5.0) -> int | None:
    """Wait until the gateway reports no call in progress; its last active_calls."""
    deadline = time.monotonic() + timeout_s
    active = None
    while True:
        with contextlib.suppress(OSError, ValueError, IndexError, TimeoutError):
            status, body = await _healthz(port)
            active = body.get("active_calls") if status == 200 else None
            if active == 0:
                return 0
        if time.monotonic() > deadline:
            return active
        await asyncio.sleep(0.1)


async def run_fuzz(config: FuzzConfig, *, progress: bool = False) -> FuzzResult:
    """Run the whole fuzz (see the module docstring). Never raises for a gateway failure: the checks say it."""
    from gateway.tooling.bench import Child, _wait_until, process_rss_mb, stop_children
    from gateway.server.runner import free_port
    from gateway.audio.wavio import load_sample

    config.validate()
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**32)
    result = FuzzResult(config=config, seed=seed)
    say = (lambda text: print(f"fuzz: {text}", file=sys.stderr, flush=True)) if progress else (lambda text: None)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    deadline = t0 + config.max_seconds - STOP_RESERVE_S
    children: list[Any] = []
    storm_task: asyncio.Task[StormStats] | None = None
    try:
        async with asyncio.timeout_at(deadline):
            port = free_port(HOST)
            argv = [sys.executable, "-m", "gateway.cli", "serve", "--host", HOST, "--port", str(port)]
            gateway = Child("gateway", argv, _clean_env())  # its output goes to a temporary file, read on failure
            children.append(gateway)
            result.gateway_pid, result.port = gateway.pid, port

            async def healthy() -> dict[str, Any] | None:
                status, body = await _healthz(port)
                return body if status == 200 else None

            health = await _wait_until(gateway, healthy, timeout_s=max(1.0, deadline - loop.time()))
            if health.get("model") != "embedded":
                raise RuntimeError(f"the gateway is not on its embedded model: {health.get('model')!r}")
            result.rss_mb["started"] = process_rss_mb(gateway.pid)
            url = f"ws://{HOST}:{port}/media-stream"
            audio = load_sample(SAMPLE)
            say(f"gateway pid {gateway.pid} on :{port}; baseline: {config.calls} calls")

            baseline = await run_calls("baseline", config.calls, url, audio)
            result.phases.append(baseline)
            await _settle(port)
            result.rss_mb["baseline"] = process_rss_mb(gateway.pid)

            # The storm lasts about one call, so the calls beside it live it from start to end.
            pace_s = min(30.0, max(1.0, max((c.seconds for c in baseline.calls), default=5.0)))
            say(f"storm: {config.frames} frames over {config.connections} connections, paced over {pace_s:.1f} s, "
                f"with {config.calls} calls")
            peak: list[float] = []

            async def sample_rss() -> None:
                while True:
                    rss = process_rss_mb(gateway.pid)
                    if rss is not None:
                        peak.append(rss)
                    await asyncio.sleep(0.25)

            sampler = asyncio.create_task(sample_rss())
            storm_started = loop.time()
            try:
                storm_task = asyncio.create_task(run_storm(config.frames, config.connections, seed, port, pace_s, deadline))
                during = await run_calls("during", config.calls, url, audio)
                result.storm = await storm_task
            finally:
                sampler.cancel()
            result.storm_seconds = loop.time() - storm_started
            result.phases.append(during)
            result.rss_mb["storm_peak"] = max(peak) if peak else None
            gateway.check_running()
            await _settle(port)

            say(f"after the storm: {config.calls} calls")
            result.phases.append(await run_calls("after", config.calls, url, audio))
            result.active_calls_end = await _settle(port)
            result.rss_mb["after"] = process_rss_mb(gateway.pid)
            gateway.check_running()
            result.healthz_status, _ = await _healthz(port)
    except TimeoutError:
        result.timed_out = True
    except (RuntimeError, OSError) as error:
        result.error = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
    finally:
        for child in children:
            if child.proc.poll() is not None or result.error or result.timed_out:
                result.gateway_output_tail = child.output_tail(15)
        if storm_task is not None and not storm_task.done():
            storm_task.cancel()  # the run timed out mid-storm
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await storm_task
        stop_children(children, timeout_s=2.0)
        result.seconds = loop.time() - t0
    result.evaluate()
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=5000, help="hostile frames to send in all (default 5000)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent hostile connections (default 8)")
    parser.add_argument("--calls", type=int, default=4, help="real calls before, during and after the storm (default 4)")
    parser.add_argument("--seed", type=int, default=None, help="seed of every hostile frame (default: random, printed)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="hard bound on the whole run (default 120)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def main(frames: int = 5000, connections: int = 8, calls: int = 4, seed: int | None = None,
         max_seconds: float = 120.0, as_json: bool = False) -> int:
    """``gateway fuzz``: run, print the table (or JSON); 0 when every check passes, 1 otherwise, 2 bad options."""
    config = FuzzConfig(frames=frames, connections=connections, calls=calls, seed=seed, max_seconds=max_seconds)
    try:
        config.validate()
    except ValueError as error:
        print(f"gateway fuzz: {error}", file=sys.stderr)
        return 2
    try:
        result = run_command("fuzz", run_fuzz(config, progress=not as_json))
    except Stopped as stopped:
        return stopped.status
    print(json.dumps(result.to_dict(), indent=2) if as_json else result.format())
    return result.exit_status


def command(args: argparse.Namespace, settings: Any = None) -> int:
    """The CLI handler (``gateway.cli``): the gateway under test gets a clean environment, not ``settings``."""
    return main(args.frames, args.connections, args.calls, args.seed, args.max_seconds, args.json)


__all__ = ["FuzzConfig", "FuzzResult", "add_arguments", "command", "main", "run_fuzz"]
