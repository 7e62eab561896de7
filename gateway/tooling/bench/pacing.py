"""``python -m gateway.tooling.bench.pacing``: how long the agent keeps talking after a barge-in, with the audio to Twilio
paced at several leads (``TWILIO_AUDIO_LEAD_MS``), on a fast path and on slow ones.

For each lead and each path, a call with a barge-in is played by the replay phone against the gateway with the
embedded model (one process, 127.0.0.1): the barge-in stop time (caller starts -> agent audio stops, caller's side),
the longest silence the caller heard (an underrun would show there) and where the model's item was truncated.
The slow paths are the phone reading its socket at 12 kB/s, and pausing 400 ms in every 800 ms (``SlowReader``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import replace

from gateway.server.app import create_app
from gateway.config import Settings
from gateway.tooling.replay import CallerTurn, load_sample, run_call
from gateway.tooling.replay.phone import SlowReader
from gateway.server.runner import running_app

PATHS = {
    "fast": None,
    "read 12 kB/s": SlowReader(max_bytes_per_s=12_000),
    "pauses 400/800 ms": SlowReader(pause_ms=400, every_ms=800),
}


async def one_call(lead_ms: int, slow_reader: SlowReader | None, seed: int) -> tuple[float | None, float, int | None]:
    """(barge-in stop ms, longest silence ms, truncated at ms) of one call."""
    settings = replace(Settings.from_env({}), twilio_audio_lead_ms=lead_ms, store_url="memory://")
    app = create_app(settings)
    async with running_app(app) as http_url:
        turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300, name="hello"),
                 CallerTurn(load_sample("caller_bargein"), after_agent_heard_ms=1200, name="barge-in")]
        report = await run_call(http_url.replace("http://", "ws://") + "/media-stream", turns, timeout_s=40,
                                hangup_after_ms=500, seed=seed, slow_reader=slow_reader)
        truncations = app.state.gateway.local_server.sessions[-1].truncations
    return report.turns[1].stop_ms, report.longest_silence_ms, truncations[0][1] if truncations else None


async def run(leads: list[int], runs: int) -> None:
    print(f"{'lead ms':>8} {'path':<18} {'barge-in stop ms':<22} {'longest silence ms':<22} truncated at ms")
    for lead in leads:
        for name, reader in PATHS.items():
            rows = [await one_call(lead, reader, seed) for seed in range(1, runs + 1)]
            stops = ", ".join(f"{stop:.0f}" if stop is not None else "-" for stop, _, _ in rows)
            silences = ", ".join(f"{silence:.0f}" for _, silence, _ in rows)
            cut = ", ".join(str(at) for _, _, at in rows)
            print(f"{lead:>8} {name:<18} {stops:<22} {silences:<22} {cut}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.tooling.bench.pacing",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", default="0,1000,500", help="TWILIO_AUDIO_LEAD_MS values (default 0,1000,500)")
    parser.add_argument("--runs", type=int, default=2, help="calls per lead and path (default 2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(run([int(lead) for lead in args.leads.split(",")], args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
