"""Helpers shared by the test files: waiting for a condition, a clock a test moves by hand, test audio, and reading
the Prometheus text format. One copy of each, so a fix (a longer poll on a slow machine, a parsing detail) is made
once.

Waiting: a test waits for the condition it needs (:func:`eventually`), never for a fixed time that happens to be
long enough on a quiet machine; a fixed sleep stays only where the pause *is* the scenario (a caller who says
nothing for a while, a TTL that must run out).
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from typing import Any, Awaitable, Callable

import numpy as np

from gateway.audio.convert import mulaw_encode

# Generous: a condition that holds is seen within one interval, so a long timeout costs nothing when all is well
# and keeps a loaded 2-core machine (two xdist workers, other engineers' runs) from failing a correct test.
DEFAULT_TIMEOUT_S = 10.0


async def eventually(condition: Callable[[], Any | Awaitable[Any]], timeout_s: float = DEFAULT_TIMEOUT_S,
                     what: str = "", interval_s: float = 0.02) -> Any:
    """Poll ``condition`` (a function, sync or async) until it returns something truthy; that value.
    Raises AssertionError naming ``what`` (or the condition) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what or getattr(condition, '__name__', condition)}")
        await asyncio.sleep(interval_s)


def eventually_sync(condition: Callable[[], Any], timeout_s: float = DEFAULT_TIMEOUT_S, what: str = "",
                    interval_s: float = 0.05) -> Any:
    """:func:`eventually` for code outside an event loop (a subprocess's output, a thread)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what or getattr(condition, '__name__', condition)}")
        time.sleep(interval_s)


class FakeClock:
    """A ``time.monotonic`` stand-in that moves only when the test says so (``advance``): timing decisions are then
    checked exactly, whatever the machine's load."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


# ---------------------------------------------------------------------- a gateway under test (tests/conftest.py)


async def call_sid_of(gw: Any, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """The CallSid of the first call the gateway started."""
    from gateway.call import CallStarted

    started = await eventually(lambda: gw.of_type(CallStarted), timeout_s, "a call started")
    return started[0].call_sid


async def registered(gw: Any, call_sid: str) -> None:
    """The call holds its leases and is in the shared registry of live calls (the session does this in the
    background, once the call started): controllable from any instance."""
    await eventually(lambda: gw.state.shared.call_holder(call_sid), what=f"{call_sid} registered")


async def unregistered(gw: Any, call_sid: str) -> None:
    """The call is out of the shared registry of live calls."""
    async def gone() -> bool:
        return await gw.state.shared.call_holder(call_sid) is None
    await eventually(gone, what=f"{call_sid} out of the registry")


async def calls_over(gw: Any) -> None:
    """The phone hung up; the gateway ends its side a moment later (its record and metrics then)."""
    await eventually(lambda: not gw.state.active_calls, what="the gateway letting go of its calls")


async def scrape(http_url: str, **headers: str) -> str:
    """The gateway's ``/metrics`` text."""
    import httpx

    async with httpx.AsyncClient(base_url=http_url) as http:
        response = await http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    return response.text


async def serving(url: str, process: Any, path: str = "/healthz", timeout_s: float = 40.0) -> None:
    """A gateway started as a subprocess (``process``, a Popen) answers 200 on ``path``; fails at once, with what it
    wrote on a piped stderr, if it exits first."""
    import httpx

    async with httpx.AsyncClient() as http:
        async def answering() -> bool:
            if process.poll() is not None:
                said = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise AssertionError(f"the gateway exited during start-up ({process.returncode}): {said}")
            try:
                return (await http.get(url + path, timeout=1)).status_code == 200
            except httpx.HTTPError:
                return False
        await eventually(answering, timeout_s, f"{url}{path} answering 200", 0.05)


# ---------------------------------------------------------------------- audio


def pcm_tone(freq: float, rate: int, seconds: float, amplitude: float = 20000) -> np.ndarray:
    """A sine as 16-bit samples at ``rate``."""
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * freq * t) * amplitude).astype(np.int16)


def mulaw_tone(ms: float, freq: float = 440.0, amp: float = 8000.0) -> bytes:
    """``ms`` of a sine as Twilio's audio (8 kHz mu-law)."""
    n = int(ms * 8)
    return mulaw_encode((amp * np.sin(2 * np.pi * freq * np.arange(n) / 8000)).astype(np.int16))


# ---------------------------------------------------------------------- Prometheus text format


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` (no suffix added) whose labels include ``labels``; 0 when none."""
    out = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            out += float(line.rsplit(" ", 1)[1])
    return out


def metric_sample(text: str, name: str, labels: str = "") -> float:
    """One sample's value, its label set written out exactly as a regular expression (``labels``); 0 when absent."""
    pattern = re.escape(name) + (r"\{" + labels + r"\}" if labels else r"(?:\{\})?") + r" ([0-9.e+-]+)"
    found = re.search("^" + pattern + "$", text, re.M)
    return float(found.group(1)) if found else 0.0


def metric_by_label(text: str, name: str, label: str) -> dict[str, float]:
    """``name``'s samples by the value of one label."""
    pattern = rf'^{re.escape(name)}\{{(?:[^}}]*,)?{re.escape(label)}="([^"]*)"[^}}]*\}} ([0-9.e+-]+)$'
    found: dict[str, float] = {}
    for match in re.finditer(pattern, text, re.MULTILINE):
        found[match[1]] = found.get(match[1], 0.0) + float(match[2])
    return found
