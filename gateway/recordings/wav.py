"""Call recordings as audio: the call as a stereo WAV, made from its frame recording when the call ends.

``<dir>/<CallSid>.wav`` (the name of the call's ``.jsonl`` frame recording, :mod:`gateway.recordings.frames`, with
``.wav``): 8 kHz PCM16, two channels on one timeline that starts with Twilio's ``start``:

* left, the caller: each inbound ``media`` frame's mu-law decoded and placed at its own timestamp (a lost frame is
  silence);
* right, the agent as the caller heard it: outbound ``media`` played in real time from when it was sent, queued
  behind what is still playing, and cut where a ``clear`` dropped it, exactly as Twilio plays a stream (the
  model of Twilio's playback, :class:`gateway.twilio.playback.PlaybackQueue`, which the replay phone plays too).

Consent: a call is recorded when its outbound request said ``"record": true``, or said nothing and ``RECORD_AUDIO``
is on. A call whose request said ``"record": false`` keeps no audio at all: its frame recording is deleted too.
The WAV's file name goes in the call's record (``recording``); retention (:mod:`gateway.store.retention`) deletes it
with the record, and ``GET /calls/{sid}/recording`` (and the console's player) serve it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gateway.audio.convert import MULAW_BYTES_PER_MS, MULAW_SILENCE, mulaw_decode
from gateway.observe.logsafe import safe
from gateway.recordings.frames import RecordingsQuota, recordings_quota
from gateway.twilio.playback import PlaybackQueue
from gateway.audio.wavio import PHONE_RATE, wav_bytes

log = logging.getLogger("gateway.recordings.frames")

STORE_TIMEOUT_S = 5.0
# A caller frame stamped further ahead of the gateway's own clock than this is not placed (a bogus timestamp must
# not make the track hours long).
MAX_TIMESTAMP_LEAD_MS = 10_000.0
_CREATE_FLAGS = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def recording_consent(record_audio: bool, requested: bool | None) -> bool:
    """Whether a call is recorded: what its request asked for (``record``), else ``RECORD_AUDIO``."""
    return record_audio if requested is None else requested


def call_tracks(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(caller, agent as heard): mu-law 8 kHz from the stream's ``start``, equally long, from a frame recording."""
    line = PlaybackQueue()  # Twilio's playback of what the gateway sent
    caller = bytearray()
    origin: float | None = None  # the recording's t_ms of Twilio's start: t = 0 of both tracks
    now = 0.0
    with open(path, "rb") as frames:
        for raw in frames:
            try:
                entry = orjson.loads(raw)
                message = orjson.loads(entry["text"])
                t_ms, event = float(entry["t_ms"]), message["event"]
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # the header, the truncated line, a frame Twilio or the gateway got wrong
            if origin is None:
                origin = t_ms if event == "start" else None
                continue
            now = max(now, t_ms - origin)
            if event not in ("media", "clear"):
                continue
            if entry.get("dir") == "in":
                if event == "media":
                    _place(caller, message.get("media"), now)
                continue
            line.advance(now)
            if event == "clear":
                line.clear(now)
            else:
                audio = _payload(message.get("media"))
                if audio:
                    line.media(audio, now)
    line.advance(now)  # what was still queued when the stream ended was never heard
    heard = bytes(line.heard)
    n = max(len(caller), len(heard))
    pad = bytes([MULAW_SILENCE])
    return bytes(caller).ljust(n, pad), heard.ljust(n, pad)


def _payload(media: Any) -> bytes:
    try:
        return base64.b64decode(media["payload"], validate=True)
    except (binascii.Error, KeyError, TypeError, ValueError):
        return b""


def _place(caller: bytearray, media: Any, now_ms: float) -> None:
    """A caller frame's audio at its timestamp (ms since start) on the caller's track."""
    audio = _payload(media)
    try:
        ts = int(media["timestamp"])
    except (KeyError, TypeError, ValueError):
        return
    if not audio or not 0 <= ts <= now_ms + MAX_TIMESTAMP_LEAD_MS:
        return
    pos = ts * MULAW_BYTES_PER_MS
    if pos > len(caller):
        caller += bytes([MULAW_SILENCE]) * (pos - len(caller))
    caller[pos:pos + len(audio)] = audio


def call_wav_bytes(path: str | os.PathLike[str]) -> bytes:
    """The stereo PCM16 WAV of a frame recording (see the module docstring)."""
    caller, heard = call_tracks(path)
    stereo = np.column_stack([mulaw_decode(caller), mulaw_decode(heard)]) if caller else np.zeros((0, 2), np.int16)
    return wav_bytes(stereo, PHONE_RATE, "pcm16")


def wav_path_for(jsonl: Path) -> Path:
    """``<dir>/<CallSid>[-N].wav`` for ``<dir>/<CallSid>[-N].jsonl``: the names retention knows."""
    return jsonl.with_suffix(".wav")


def write_call_wav(jsonl: str | os.PathLike[str], quota: RecordingsQuota | None = None) -> Path | None:
    """Write the WAV of a frame recording next to it (mode 0600, never over an existing file); its path, or None
    when it could not be written (logged), or would pass the directory's ``quota`` (counted; logged once)."""
    jsonl = Path(jsonl)
    target = wav_path_for(jsonl)
    try:
        data = call_wav_bytes(jsonl)
        if quota is not None and not quota.take(len(data)):
            quota.refused("wav_skipped", f"the WAV of {jsonl.name} is not written")
            return None
        fd = os.open(target, _CREATE_FLAGS, 0o600)
    except OSError as error:
        log.error("the call's WAV recording could not be written to %s: %s", target, error)
        return None
    except Exception:  # a recording the converter cannot read costs its WAV, never the call's teardown
        log.exception("the call's WAV recording could not be made from %s", jsonl)
        return None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except OSError as error:  # a full disk: no half-written WAV is left to be served
        log.error("the call's WAV recording could not be written to %s: %s", target, error)
        target.unlink(missing_ok=True)
        return None
    return target


def recording_file(directory: str, name: str | None) -> Path | None:
    """The recording a record names, if it is a regular file in ``directory`` (RECORD_CALLS_DIR); a name with a
    directory part, or a symbolic link, is never served."""
    if not directory or not name or os.path.basename(name) != name or not name.endswith(".wav"):
        return None
    path = Path(directory) / name
    return path if path.is_file() and not path.is_symlink() else None


async def save_call_recording(store: Any, settings: Any, jsonl: Path | None, call_sid: str) -> str | None:
    """At a call's end (after its record was saved): write its WAV if it may be recorded and name it in the record;
    delete its frame recording if its request refused recording. The WAV's file name, or None."""
    if jsonl is None or not call_sid or not await asyncio.to_thread(jsonl.exists):  # a stat can block on a slow disk
        return None
    stored = None
    if store is not None:
        try:
            stored = await asyncio.wait_for(store.get_call(call_sid), STORE_TIMEOUT_S)
        except Exception:
            log.exception("the call record could not be read for its recording call_sid=%s", safe(call_sid))
    requested = getattr(stored, "record_audio", None)
    if not recording_consent(settings.record_audio, requested):
        if requested is False:  # the request said no: none of this call's audio is kept
            try:
                await asyncio.to_thread(jsonl.unlink)
            except OSError as error:
                log.error("the frame recording of a call that refused recording is still at %s: %s", jsonl, error)
        return None
    quota = recordings_quota(settings.record_calls_dir, settings.record_total_max_bytes)
    path = await asyncio.to_thread(write_call_wav, jsonl, quota)
    if path is None:
        return None
    if stored is not None:
        try:
            await asyncio.wait_for(store.finish_call(replace(stored, recording=path.name)), STORE_TIMEOUT_S)
        except Exception:
            log.exception("the recording could not be named in the call record call_sid=%s", safe(call_sid))
    log.info("call recorded call_sid=%s file=%s", safe(call_sid), path.name)
    return path.name
