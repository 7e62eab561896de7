"""``gateway bench --micro``: the hot path's pieces, in microseconds per operation (CPU time, best of 7 runs).

Codec and resampler per frame each way (a 20 ms Twilio frame in, a 100 ms model chunk out), and the parse and
encode of every message kind the gateway handles on a call. CPU time (``time.process_time``), not wall time, so
other programs on the machine disturb the figures less; they are still this machine's, at this moment.

A loop keeps every cache warm; a server does not: between two frames of a call the event loop serves others or
sleeps in the poller, and on a virtual machine an idle CPU may be handed to another guest. The ``after 0.5 ms
idle`` lines time an operation (median CPU time) when each run follows a 0.5 ms sleep, as a frame in a lightly
loaded gateway does: what numpy's large code footprint costs when it is cold.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import timeit
from typing import Any, Callable

import numpy as np

from gateway.audio.convert import Downsampler, MulawToPcm24k, Pcm24kToMulaw, Upsampler, mulaw_decode, mulaw_encode
from gateway.call import Call, CallConfig
from gateway.realtime import events as rt
from gateway.twilio import media as tw

SID = "MZ" + "0" * 32


def _us(fn: Callable[[], Any], target_s: float = 0.05) -> float:
    number = 1
    while True:  # calibrate: about target_s per run
        took = timeit.timeit(fn, number=number, timer=time.process_time)
        if took >= target_s / 5 or number >= 1 << 20:
            break
        number *= 4
    number = max(1, int(number * target_s / max(took, 1e-9)))
    return min(timeit.repeat(fn, number=number, repeat=7, timer=time.process_time)) / number * 1e6


def cases() -> list[tuple[str, Callable[[], Any]]]:
    rng = np.random.default_rng(0)
    frame8 = (rng.standard_normal(160) * 3000).astype(np.int16)
    chunk24 = (rng.standard_normal(2400) * 3000).astype(np.int16)
    mulaw = mulaw_encode(frame8)
    pcm100 = chunk24.tobytes()
    up, down, inbound, outbound = Upsampler(), Downsampler(), MulawToPcm24k(), Pcm24kToMulaw()
    media = json.dumps({"event": "media", "sequenceNumber": "42", "streamSid": SID,
                        "media": {"track": "inbound", "chunk": "41", "timestamp": "820",
                                  "payload": base64.b64encode(mulaw).decode()}})
    mark = json.dumps({"event": "mark", "sequenceNumber": "43", "streamSid": SID, "mark": {"name": "m12"}})
    ids = {"event_id": "event_1", "response_id": "resp_1", "item_id": "item_1", "output_index": 0, "content_index": 0}
    delta_pcm16 = json.dumps({"type": "response.output_audio.delta", **ids, "delta": base64.b64encode(pcm100).decode()})
    delta_pcmu = json.dumps({"type": "response.output_audio.delta", **ids,
                             "delta": base64.b64encode(mulaw * 5).decode()})
    started = json.dumps({"type": "input_audio_buffer.speech_started", "event_id": "e", "audio_start_ms": 1000,
                          "item_id": "item_2"})
    transcript = json.dumps({"type": "response.output_audio_transcript.delta", **ids, "delta": "hello there"})
    parsed_media = tw.parse_twilio_message(media)
    parsed_delta = rt.parse_model_event(delta_pcmu)
    if not isinstance(parsed_media, tw.Media) or not isinstance(parsed_delta, rt.AudioDelta):
        raise TypeError("the bench's sample frames no longer parse as a media frame and an audio delta")
    return [
        ("mu-law decode, 20 ms frame", lambda: mulaw_decode(mulaw)),
        ("mu-law encode, 20 ms frame", lambda: mulaw_encode(frame8)),
        ("upsample 8k->24k, 20 ms frame", lambda: up.process(frame8)),
        ("downsample 24k->8k, 100 ms chunk", lambda: down.process(chunk24)),
        ("inbound pcm16 convert, 20 ms frame", lambda: inbound.convert(mulaw)),
        ("outbound pcm16 convert, 100 ms chunk", lambda: outbound.convert(pcm100)),
        ("parse twilio media", lambda: tw.parse_twilio_message(media)),
        ("parse twilio mark", lambda: tw.parse_twilio_message(mark)),
        ("parse model audio delta, pcm16 100 ms", lambda: rt.parse_model_event(delta_pcm16)),
        ("parse model audio delta, pcmu 100 ms", lambda: rt.parse_model_event(delta_pcmu)),
        ("parse model speech_started", lambda: rt.parse_model_event(started)),
        ("parse model transcript delta (other)", lambda: rt.parse_model_event(transcript)),
        ("encode append, pcmu pass-through", lambda: tw.encode_message(rt.input_audio_append(parsed_media.payload))),
        ("encode append, pcm16 20 ms", lambda: tw.encode_message(rt.input_audio_append(inbound.convert(mulaw)))),
        ("encode twilio media, pcmu pass-through", lambda: tw.encode_message(tw.media_message(SID, parsed_delta.audio))),
        ("encode twilio media, 100 ms bytes", lambda: tw.encode_message(tw.media_message(SID, mulaw * 5))),
        ("encode twilio mark", lambda: tw.encode_message(tw.mark_message(SID, "m12"))),
        ("encode twilio clear", lambda: tw.encode_message(tw.clear_message(SID))),
        ("encode truncate", lambda: tw.encode_message(rt.item_truncate("item_1", 1234))),
        ("call core: caller frame, pcm16 20 ms", _caller_frames(mulaw)),
    ]


def _caller_frames(mulaw: bytes) -> Callable[[], Any]:
    """One 20 ms frame through the call core (a call with its model session up), on the stream's clock."""
    call = Call(CallConfig(session_update={"type": "session.update", "session": {}}))
    call.twilio_event(tw.Start(SID, "CA1", "AC1", "audio/x-mulaw", 8000, {}), 0.0)
    call.model_connected(0.0)
    clock = [0]

    def frame() -> Any:
        clock[0] += 20
        return call.twilio_event(tw.Media(SID, clock[0], mulaw), float(clock[0]))
    return frame


def _us_after_idle(fn: Callable[[], Any], idle_s: float = 0.0005, runs: int = 400) -> float:
    """Median CPU time of ``fn`` when each run follows ``idle_s`` of sleep (cold caches), in microseconds."""
    took = []
    for _ in range(runs):
        time.sleep(idle_s)
        started = time.thread_time()
        fn()
        took.append(time.thread_time() - started)
    return float(np.median(took)) * 1e6


COLD = ("inbound pcm16 convert, 20 ms frame", "parse twilio media", "encode append, pcmu pass-through")


def run() -> list[tuple[str, float]]:
    measured = cases()
    return [(name, _us(fn)) for name, fn in measured] + [
        (f"{name}, after 0.5 ms idle", _us_after_idle(fn)) for name, fn in measured if name in COLD]


def main(as_json: bool = False) -> int:
    results = run()
    if as_json:
        print(json.dumps({name: round(us, 2) for name, us in results}, indent=2))
    else:
        width = max(len(name) for name, _ in results)
        print(f"{'operation':<{width}}  {'us / op':>8}")
        print("-" * (width + 10))
        for name, us in results:
            print(f"{name:<{width}}  {us:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main("--json" in sys.argv))
