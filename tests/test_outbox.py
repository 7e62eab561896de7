"""One writer per socket (``gateway.media_stream.outbox``): order kept, control first, a clear takes queued audio with it,
backpressure decided (drop caller audio, flag the rest), and a put never waits, even on a stalled socket."""

from __future__ import annotations

import asyncio

from gateway.media_stream.outbox import Outbox, Pacer

from .helpers import FakeClock, eventually


class SlowSocket:
    def __init__(self) -> None:
        self.written: list[str] = []
        self.open = asyncio.Event()  # writes block until the peer reads again

    async def write(self, text: str) -> None:
        await self.open.wait()
        self.written.append(text)


async def test_order_is_kept_and_control_goes_first() -> None:
    socket = SlowSocket()
    outbox = Outbox(socket.write, max_bytes=1000)
    writer = asyncio.create_task(outbox.run())
    for n in range(3):
        assert outbox.put(f"audio{n}", "media")  # returns at once: the socket is stalled
    outbox.put("mark0", "mark")
    outbox.discard(frozenset({"media", "mark"}))
    outbox.put_first("clear", "clear")
    outbox.put("audio-after", "media")
    socket.open.set()
    await eventually(lambda: "audio-after" in socket.written, what="the queue written")
    # "audio0" was already being written when the clear came; the rest of the old audio never left.
    assert socket.written in (["audio0", "clear", "audio-after"], ["clear", "audio-after"])
    outbox.close()
    await asyncio.wait_for(writer, 1)


async def test_held_audio_leaves_before_live_frames() -> None:
    socket = SlowSocket()
    socket.open.set()
    outbox = Outbox(socket.write, max_bytes=1000)
    writer = asyncio.create_task(outbox.run())
    outbox.put("session.update", "session.update")
    outbox.put("H" * 500, "input_audio_buffer.append", droppable=True)  # the audio held while connecting
    for n in range(3):
        outbox.put(f"live{n}", "input_audio_buffer.append", droppable=True)
    await eventually(lambda: len(socket.written) >= 5, what="five messages written")
    assert socket.written == ["session.update", "H" * 500, "live0", "live1", "live2"]  # in order, nothing dropped
    outbox.close()
    await asyncio.wait_for(writer, 1)


async def test_backpressure_drops_caller_audio_and_flags_the_rest() -> None:
    socket = SlowSocket()  # never reads
    outbox = Outbox(socket.write, max_bytes=100)
    writer = asyncio.create_task(outbox.run())
    accepted = [outbox.put("a" * 30, "input_audio_buffer.append", droppable=True) for _ in range(10)]
    # The first went to the socket at once (its write waits there); at most 4 more fit in the queue.
    assert accepted.count(True) <= 5 and outbox.dropped == accepted.count(False)
    assert outbox.queued_bytes <= 130 and not outbox.overflowed
    outbox.put("x" * 200, "media")
    assert outbox.overflowed  # not droppable: the shell ends the call (a peer that does not read)
    outbox.close()
    await asyncio.wait_for(writer, 1)
    assert not outbox.put("late")


async def test_paced_audio_stays_a_bounded_lead_ahead_and_a_clear_is_not_held_behind_it() -> None:
    """On a fake clock (it moves only when the test says): what leaves when is exact, whatever the machine's load."""
    clock = FakeClock()
    written: list[tuple[float, str]] = []

    async def write(text: str) -> None:
        written.append((clock(), text))

    # Durations exact in binary floating point: "at the lead" is exactly at it, not a rounding error past it.
    outbox = Outbox(write, max_bytes=1_000_000, pacer=Pacer(lead_ms=250, clock=clock))
    writer = asyncio.create_task(outbox.run())
    started = clock()
    for n in range(8):  # one second of agent audio, put at once
        outbox.put(f"audio{n}", "media", play_ms=125)
    await asyncio.sleep(0)  # the writer task takes over the held audio
    # Only the lead (and the chunk that crosses it) went at once; the rest waits in the outbox, to be cleared.
    assert [text for _, text in written] == ["audio0", "audio1", "audio2"]
    assert outbox.pacer is not None and outbox.pacer.wait_s() == 0.125
    outbox.discard(frozenset({"media", "mark"}))
    outbox.put_first("clear", "clear")
    # Not held behind the paced audio: written with the clock standing still.
    await eventually(lambda: written[-1][1] == "clear", what="the clear written")
    assert written[-1][0] == started
    # After a clear nothing is queued at the peer: new audio goes at once, then is paced again.
    for n in range(4):
        outbox.put(f"next{n}", "media", play_ms=125)
    assert [text for _, text in written[-3:]] == ["next0", "next1", "next2"]
    assert outbox.pacer.wait_s() == 0.125  # next3 is held until the clock moves
    clock.advance(0.125)
    await eventually(lambda: written[-1][1] == "next3", what="next3 released")
    times = {text: at for at, text in written}
    assert times["next0"] == times["clear"] and times["next3"] - times["next0"] == 0.125
    outbox.close()
    await writer


async def test_a_write_that_need_not_wait_costs_no_task_switch() -> None:
    """Into an idle outbox, a message is written in the putter's own turn; a write that waits is finished by the
    writer task, and what is put meanwhile queues behind it, in order."""
    socket = SlowSocket()
    socket.open.set()
    outbox = Outbox(socket.write, max_bytes=1000)
    writer = asyncio.create_task(outbox.run())
    outbox.put("first", "media")
    assert socket.written == ["first"]  # no await in between: written at once
    socket.open.clear()
    outbox.put("waits", "media")
    outbox.put("after", "media")
    outbox.put_first("clear", "clear")
    assert socket.written == ["first"]
    socket.open.set()
    await eventually(lambda: "after" in socket.written, what="the queue written")
    # "waits" was already being written when the clear came; the clear goes ahead of what is still queued.
    assert socket.written == ["first", "waits", "clear", "after"]
    outbox.put("last", "media")
    assert socket.written[-1] == "last"
    outbox.close()
    await asyncio.wait_for(writer, 1)


async def test_an_unfinished_write_is_cancelled_by_close() -> None:
    socket = SlowSocket()  # never reads
    outbox = Outbox(socket.write, max_bytes=1000)
    writer = asyncio.create_task(outbox.run())
    outbox.put("stuck", "media")
    await asyncio.sleep(0)
    outbox.close()
    await asyncio.wait_for(writer, 1)
    assert socket.written == [] and not outbox.put("late")
