"""One Realtime session of the local server, as a state machine free of sockets and clocks.

The shell feeds it client messages (:meth:`RealtimeSession.receive`) and the time (:meth:`tick`, at
:meth:`next_deadline`); each call returns the server events to send, in order. Time only paces the
audio deltas of a response (``speed`` x real time); voice activity runs on the input-audio clock
(samples appended), exactly like the service's ``audio_start_ms`` / ``audio_end_ms``.

What it emulates (GA protocol): session config, the input buffer with server VAD (speech started /
stopped / committed, auto response, barge-in cancellation), manual commit/clear, conversation items
(create / delete / retrieve / truncate, with the service's validation), one response at a time
streamed as ``response.output_audio.delta``, ``response.cancel``, and usage by the billing rule.
Not emulated: text-only output, out-of-band ``response.input``, ``idle_timeout_ms``.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from typing import Any, Callable

import numpy as np

from gateway.audio.convert import Downsampler, Upsampler, mulaw_decode, pcm16_from_bytes

from .agents import Agent, CallerTurn, EchoAgent, Reply
from .config import SessionConfig, TurnDetection, apply_update, format_wire
from .errors import ClientError, check_type, require
from .items import SAMPLES_PER_MS, Item, decode_b64, encode_audio, item_tokens, parse_client_item, text_tokens
from .responses import CHUNK_MS, PendingCall, ResponseStream, copy_json, function_call_response
from .vad import FRAME_SAMPLES, START_WINDOW, VoiceActivityDetector

log = logging.getLogger(__name__)

MIN_COMMIT_MS = 100
MAX_BUFFER_SAMPLES = 600 * 8000  # the uncommitted buffer: at most 10 minutes, oldest audio dropped
SESSION_LIMIT_S = 3600.0  # the service's session limit (60 minutes); the server may set a shorter one
MAX_CLIENT_TEXTS_KEPT = 100  # the texts of client-created items kept per session (a test sees what was carried)


class RealtimeSession:
    """Events in, events out; see the module docstring."""

    def __init__(self, agent: Agent | None = None, *, speed: float = 8.0, model: str = "gpt-realtime",
                 limit_s: float = SESSION_LIMIT_S) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.agent = agent or EchoAgent()
        self.speed = speed
        self._prefix = secrets.token_hex(4)
        self._counter = 0
        self.id = "sess_" + secrets.token_hex(10)
        self.conversation_id = "conv_" + secrets.token_hex(10)
        self.expires_at = int(time.time() + limit_s)  # what session.created says; the server enforces it
        self.config = SessionConfig(model=model)
        self.items: list[Item] = []
        self._by_id: dict[str, Item] = {}
        # Input audio: everything is 8 kHz int16 from here on; the clock counts samples appended.
        self._downsampler = Downsampler()
        self._odd_byte = b""
        self._vad = VoiceActivityDetector()
        self._clock = 0
        self._buffer = bytearray()  # uncommitted input audio, int16 little-endian
        self._buffer_start = 0  # clock position of the buffer's first sample
        self._speech_item_id: str | None = None
        self._response: ResponseStream | None = None
        self._voice_locked = False
        self._outbox: list[dict[str, Any]] = []
        # For tests and metrics.
        self.truncations: list[tuple[str, int, int]] = []  # (item_id, audio_end_ms, item_audio_ms) accepted
        self.errors: list[dict[str, Any]] = []  # error events sent
        self.responses: list[dict[str, Any]] = []  # the response object of every response.done
        self.response_instructions: dict[str, str] = {}  # response id -> the instructions the agent got
        self.events_sent = 0  # counted by the shell once sent
        self.opened_at_ms: float | None = None  # set by the shell when the socket is accepted (monotonic ms)
        self.closed_at_ms: float | None = None  # set by the shell when the socket is done (monotonic ms)
        self.client_items_added = 0  # conversation.item.create accepted (kept after release, for tests)
        self.client_texts: list[tuple[str, str]] = []  # (role, text) of the first client-created message items
        self._handlers: dict[str, Callable[[dict[str, Any], float], None]] = {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.delete": self._on_item_delete,
            "conversation.item.retrieve": self._on_item_retrieve,
            "conversation.item.truncate": self._on_truncate,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
            "output_audio_buffer.clear": self._on_output_audio_buffer_clear,
        }

    # ----------------------------------------------------------------- shell interface

    def open(self) -> list[dict[str, Any]]:
        """The events a new connection gets first."""
        self._emit("session.created", session=self.config.wire(self.id, self.expires_at))
        return self._drain()

    def receive(self, message: str | bytes, now_ms: float) -> list[dict[str, Any]]:
        """Handle one client WebSocket message; returns the events to send."""
        client_event_id = None
        try:
            event = self._parse(message)
            if isinstance(event.get("event_id"), str):
                client_event_id = event["event_id"]
            self._dispatch(event, now_ms)
        except ClientError as error:
            self._error(error, client_event_id)
        except Exception:  # never let one bad event end the session
            log.exception("local realtime: error handling a client event")
            self._error(ClientError("The server had an error while processing your request.", None, None, "server_error"), client_event_id)
        self._pump(now_ms)
        return self._drain()

    def tick(self, now_ms: float) -> list[dict[str, Any]]:
        """Emit whatever is due at ``now_ms`` (response audio)."""
        self._pump(now_ms)
        return self._drain()

    def release(self) -> None:
        """The socket is gone: drop the conversation and audio; keep only the small records tests read
        (truncations, errors, counters), so a long-running server does not hold ended calls' audio."""
        self.items = []
        self._buffer = bytearray()
        self._response = None

    @property
    def input_audio_ms(self) -> float:
        """Caller audio appended so far, in ms (the session's input-audio clock)."""
        return self._clock * 1000 / 8000

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to emit (ms, same clock as ``now_ms``), or None."""
        return None if self._response is None else self._response.next_deadline

    def expire(self) -> list[dict[str, Any]]:
        """The error the service sends when the session reaches its maximum duration (then it closes 1001)."""
        self._error(ClientError("Your session hit the maximum duration of 60 minutes.", "session_expired", None), None)
        return self._drain()

    @property
    def active_response_id(self) -> str | None:
        return self._response.id if self._response else None

    # ----------------------------------------------------------------- plumbing

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._prefix}{self._counter:07d}"

    def _emit(self, kind: str, **fields: Any) -> None:
        self._outbox.append({"type": kind, "event_id": self._next_id("event"), **fields})

    def _drain(self) -> list[dict[str, Any]]:
        out, self._outbox = self._outbox, []
        return out

    def _error(self, error: ClientError, client_event_id: str | None) -> None:
        body = {"type": error.kind, "code": error.code, "message": error.message, "param": error.param, "event_id": client_event_id}
        self._emit("error", error=body)
        self.errors.append(self._outbox[-1])

    @staticmethod
    def _parse(message: str | bytes) -> dict[str, Any]:
        if isinstance(message, bytes):
            raise ClientError("Binary frames are not supported: send each client event as a JSON text frame.", "invalid_binary_frame")
        try:
            event = json.loads(message)
        except ValueError:
            raise ClientError("We could not parse the JSON body of your request.", "invalid_json") from None
        if not isinstance(event, dict):
            raise ClientError("Invalid client event: expected a JSON object.", "invalid_json")
        return event

    def _dispatch(self, event: dict[str, Any], now_ms: float) -> None:
        kind = require(event, "type", str, "type")
        handler = self._handlers.get(kind)
        if handler is None:
            raise ClientError(
                f"Invalid value: '{kind}'. Supported values are: {', '.join(repr(k) for k in self._handlers)}.",
                "invalid_value",
                "type",
            )
        handler(event, now_ms)

    # ----------------------------------------------------------------- session

    def _on_session_update(self, event: dict[str, Any], now_ms: float) -> None:
        old = self.config
        self.config = apply_update(old, require(event, "session", dict, "session"), voice_locked=self._voice_locked)
        if self.config.input_format != old.input_format:
            self._downsampler.reset()
            self._odd_byte = b""
        td = self.config.turn_detection
        if td is None:
            self._vad.reset()
            self._speech_item_id = None
        else:
            self._vad.configure(td.threshold, td.effective_silence_ms)
        self._emit("session.updated", session=self.config.wire(self.id, self.expires_at))

    # ----------------------------------------------------------------- input audio

    def _on_append(self, event: dict[str, Any], now_ms: float) -> None:
        raw = decode_b64(require(event, "audio", str, "audio"), "audio")
        if self.config.input_format == "pcmu":
            samples = mulaw_decode(raw)
        else:
            if self._odd_byte:
                raw = self._odd_byte + raw
            self._odd_byte = raw[len(raw) - (len(raw) % 2) :]
            samples = self._downsampler.process(pcm16_from_bytes(raw))
        if len(samples):
            self._append_input(samples, now_ms)

    def _append_input(self, samples: np.ndarray, now_ms: float) -> None:
        self._buffer += samples.astype("<i2", copy=False).tobytes()
        self._clock += len(samples)
        overflow = len(self._buffer) // 2 - MAX_BUFFER_SAMPLES
        if overflow > 0:  # without VAD, or one endless "utterance" (a noisy line): keep the latest 10 minutes
            self._drop_before(self._buffer_start + overflow)
        td = self.config.turn_detection
        if td is None:
            self._vad.skip(len(samples))
            return
        for vad_event in self._vad.feed(samples):
            if vad_event.kind == "start":
                self._on_speech_started(td, vad_event.sample, now_ms)
            else:
                self._on_speech_stopped(vad_event.sample, now_ms)
        if self._speech_item_id is None:
            # Outside speech only the prefix padding (plus the detector's look-back) can still be needed.
            keep = td.prefix_padding_ms * SAMPLES_PER_MS + (START_WINDOW + 1) * FRAME_SAMPLES
            if len(self._buffer) // 2 > keep + 8000:  # trim in 1 s steps, not on every frame
                self._drop_before(self._clock - keep)

    def _drop_before(self, position: int) -> None:
        count = position - self._buffer_start
        if count > 0:
            del self._buffer[: count * 2]
            self._buffer_start = position

    def _on_speech_started(self, td: TurnDetection, sample: int, now_ms: float) -> None:
        start = max(self._buffer_start, sample - td.prefix_padding_ms * SAMPLES_PER_MS)
        self._drop_before(start)
        self._speech_item_id = self._next_id("item")
        self._emit("input_audio_buffer.speech_started", audio_start_ms=start // SAMPLES_PER_MS, item_id=self._speech_item_id)
        if td.interrupt_response and self._response is not None:
            self._finish_response("cancelled", "turn_detected")

    def _on_speech_stopped(self, sample: int, now_ms: float) -> None:
        item_id = self._speech_item_id or self._next_id("item")
        self._speech_item_id = None
        self._emit("input_audio_buffer.speech_stopped", audio_end_ms=sample // SAMPLES_PER_MS, item_id=item_id)
        self._commit(sample, item_id)
        td = self.config.turn_detection
        if td is not None and td.create_response and self._response is None:
            self._start_response({}, now_ms)

    def _on_commit(self, event: dict[str, Any], now_ms: float) -> None:
        held_ms = len(self._buffer) / 2 / SAMPLES_PER_MS
        if held_ms < MIN_COMMIT_MS:
            raise ClientError(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {held_ms:.2f}ms of audio.",
                "input_audio_buffer_commit_empty",
            )
        item_id = self._speech_item_id or self._next_id("item")
        self._speech_item_id = None
        self._vad.reset()
        self._commit(self._clock, item_id)

    def _on_clear(self, event: dict[str, Any], now_ms: float) -> None:
        self._drop_before(self._clock)
        self._speech_item_id = None
        self._vad.reset()
        self._emit("input_audio_buffer.cleared")

    def _commit(self, end: int, item_id: str) -> None:
        count = max(0, end - self._buffer_start)
        audio = np.frombuffer(bytes(self._buffer[: count * 2]), dtype="<i2").astype(np.int16)
        self._drop_before(self._buffer_start + count)
        previous = self.items[-1].id if self.items else None
        wire = {
            "id": item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self._add_item(Item(wire, audio, len(audio)))
        self._emit("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        self._emit("conversation.item.added", previous_item_id=previous, item=copy_json(wire))
        self._emit("conversation.item.done", previous_item_id=previous, item=copy_json(wire))
        if self.config.transcription is not None:
            seconds = len(audio) / 8000
            self._emit(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=f"[{int(seconds * 1000)} ms of caller audio]",
                usage={"type": "duration", "seconds": seconds},
            )

    # ----------------------------------------------------------------- conversation items

    def _add_item(self, item: Item, after: str | None = None, at_start: bool = False) -> None:
        if at_start:
            self.items.insert(0, item)
        elif after is None:
            self.items.append(item)
        else:
            index = next(i for i, it in enumerate(self.items) if it.id == after)
            self.items.insert(index + 1, item)
        self._by_id[item.id] = item

    def _on_item_create(self, event: dict[str, Any], now_ms: float) -> None:
        item = parse_client_item(
            require(event, "item", dict, "item"), lambda: self._next_id("item"), self.config.input_format, self.config.output_format
        )
        if item.id in self._by_id:
            raise ClientError(f"Item with id '{item.id}' already exists.", "item_already_exists", "item.id")
        after = event.get("previous_item_id")
        if after is not None:
            check_type(after, str, "previous_item_id")
            if after != "root" and after not in self._by_id:
                raise ClientError(f"Item with item_id not found: {after}", "item_not_found", "previous_item_id")
        if after == "root":
            self._add_item(item, at_start=True)
        else:
            self._add_item(item, after)
        index = self.items.index(item)
        previous = self.items[index - 1].id if index else None
        self._emit("conversation.item.added", previous_item_id=previous, item=copy_json(item.wire))
        self._emit("conversation.item.done", previous_item_id=previous, item=copy_json(item.wire))
        self.client_items_added += 1
        if len(self.client_texts) < MAX_CLIENT_TEXTS_KEPT:
            wire = item.wire
            text = "".join(part.get("text") or "" for part in wire.get("content") or () if isinstance(part, dict))
            self.client_texts.append((str(wire.get("role", "")), text[:200]))

    def _find_item(self, event: dict[str, Any]) -> Item:
        item_id = require(event, "item_id", str, "item_id")
        item = self._by_id.get(item_id)
        if item is None:
            raise ClientError(f"Item with item_id not found: {item_id}", "item_not_found", "item_id")
        return item

    def _on_item_delete(self, event: dict[str, Any], now_ms: float) -> None:
        item = self._find_item(event)
        if self._response is not None and self._response.item is item:
            raise ClientError("Cannot delete an item while its response is in progress.", "item_in_progress", "item_id")
        self.items.remove(item)
        del self._by_id[item.id]
        self._emit("conversation.item.deleted", item_id=item.id)

    def _on_item_retrieve(self, event: dict[str, Any], now_ms: float) -> None:
        item = self._find_item(event)
        wire = copy_json(item.wire)
        if item.audio is not None:
            audio_format = self.config.output_format if wire.get("role") == "assistant" else self.config.input_format
            for part in wire["content"]:
                if part.get("type") in ("input_audio", "output_audio"):
                    part["audio"] = base64.b64encode(encode_audio(item.held_audio(), audio_format)).decode("ascii")
                    break
        self._emit("conversation.item.retrieved", item=wire)

    def _on_truncate(self, event: dict[str, Any], now_ms: float) -> None:
        item = self._find_item(event)
        content_index = require(event, "content_index", int, "content_index")
        audio_end_ms = require(event, "audio_end_ms", int, "audio_end_ms")
        if item.wire.get("role") != "assistant" or item.audio is None:
            raise ClientError("Only model output audio messages can be truncated", "invalid_value", "item_id")
        if content_index != 0:
            raise ClientError(f"Invalid content_index: {content_index}. The item has no audio there.", "invalid_value", "content_index")
        if audio_end_ms < 0:
            raise ClientError("Invalid 'audio_end_ms': must not be negative.", "invalid_value", "audio_end_ms")
        held_ms = item.audio_ms
        if audio_end_ms * SAMPLES_PER_MS > item.audio_samples:
            raise ClientError(f"Audio content of {held_ms}ms is already shorter than {audio_end_ms}ms", "invalid_value", "audio_end_ms")
        item.audio_samples = audio_end_ms * SAMPLES_PER_MS
        for part in item.wire.get("content", ()):
            if part.get("type") == "output_audio":
                part["transcript"] = ""  # the service drops the transcript: no unheard text stays in context
        self.truncations.append((item.id, audio_end_ms, held_ms))
        self._emit("conversation.item.truncated", item_id=item.id, content_index=content_index, audio_end_ms=audio_end_ms)

    # ----------------------------------------------------------------- responses

    def _on_response_create(self, event: dict[str, Any], now_ms: float) -> None:
        if self._response is not None:
            raise ClientError(
                f"Conversation already has an active response in progress: {self._response.id}. "
                "Wait until the response is finished before creating a new one.",
                "conversation_already_has_active_response",
            )
        params = event.get("response") or {}
        check_type(params, dict, "response")
        self._start_response(params, now_ms)

    def _on_response_cancel(self, event: dict[str, Any], now_ms: float) -> None:
        response_id = event.get("response_id")
        if response_id is not None:
            check_type(response_id, str, "response_id")
        if self._response is None or (response_id is not None and response_id != self._response.id):
            raise ClientError("Cancellation failed: no active response found", "response_cancel_not_active")
        self._finish_response("cancelled", "client_cancelled")

    def _on_output_audio_buffer_clear(self, event: dict[str, Any], now_ms: float) -> None:
        raise ClientError("output_audio_buffer.clear is only supported for WebRTC and SIP connections.", "invalid_value", "type")

    def _caller_turn(self, instructions: str) -> CallerTurn:
        turn = CallerTurn(instructions=instructions, tools=list(self.config.tools), items=[copy_json(i.wire) for i in self.items])
        for item in reversed(self.items):
            if item.wire["type"] == "message" and item.wire.get("role") == "user":
                if item.audio is not None:
                    turn.audio = item.held_audio()
                else:
                    turn.text = " ".join(p["text"] for p in item.wire["content"] if p.get("type") == "input_text") or None
                break
        return turn

    def _start_response(self, params: dict[str, Any], now_ms: float) -> None:
        instructions = params.get("instructions")
        if instructions is not None:
            check_type(instructions, str, "response.instructions")
        else:
            instructions = self.config.instructions
        in_conversation = params.get("conversation", "auto") != "none"
        metadata = params.get("metadata")
        if metadata is not None:
            check_type(metadata, dict, "response.metadata")
        # The whole conversation so far is the response's input.
        input_text, input_audio = text_tokens(instructions), 0
        for item in self.items:
            text, audio_tokens = item_tokens(item)
            input_text += text
            input_audio += audio_tokens
        reply: Reply = self.agent.reply(self._caller_turn(instructions))
        response_id = self._next_id("resp")
        self.response_instructions[response_id] = instructions
        wire = {
            "object": "realtime.response",
            "id": response_id,
            "status": "in_progress",
            "status_details": None,
            "output": [],
            "conversation_id": self.conversation_id if in_conversation else None,
            "output_modalities": list(self.config.output_modalities),
            "max_output_tokens": self.config.max_output_tokens,
            "audio": {"output": {"format": format_wire(self.config.output_format), "voice": self.config.voice}},
            "usage": None,
            "metadata": metadata,
        }
        self._emit("response.created", response=copy_json(wire))
        previous = self.items[-1].id if (self.items and in_conversation) else None
        audio = np.ascontiguousarray(reply.audio, dtype=np.int16)
        if reply.function_call is not None and not len(audio) and not reply.transcript:
            item, done = function_call_response(
                wire,
                reply.function_call,
                self._next_id("item"),
                "call_" + secrets.token_hex(8),
                previous,
                in_conversation,
                (input_text, input_audio),
                self._emit,
            )
            if in_conversation:
                self._add_item(item)
            self.responses.append(done)
            return
        item_wire = {
            "id": self._next_id("item"),
            "type": "message",
            "object": "realtime.item",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        item = Item(item_wire, audio, 0)
        if in_conversation:
            self._add_item(item)
        pending = None
        if reply.function_call is not None:  # said after the audio, in the same response
            pending = PendingCall(
                reply.function_call,
                self._next_id("item"),
                "call_" + secrets.token_hex(8),
                self._append_output_item if in_conversation else None,
            )
        self._response = ResponseStream(
            id=response_id,
            wire=wire,
            item=item,
            in_conversation=in_conversation,
            previous_item_id=previous,
            transcript=reply.transcript,
            started_ms=now_ms,
            interval_ms=CHUNK_MS / self.speed,
            input_tokens=(input_text, input_audio),
            upsampler=Upsampler() if self.config.output_format == "pcm16" else None,
            pending_call=pending,
        )
        self._response.begin(self._emit)
        self._pump(now_ms)

    def _append_output_item(self, item: Item) -> str | None:
        """Add a later output item of the response to the conversation; the id of the item before it."""
        previous = self.items[-1].id if self.items else None
        self._add_item(item)
        return previous

    def _pump(self, now_ms: float) -> None:
        try:
            if self._response is not None and self._response.pump(now_ms, self._emit):
                self._finish_response("completed", None)
        except Exception:  # a broken response must not take the session (or the pacer loop) down with it
            log.exception("local realtime: streaming a response failed; dropping it")
            self._response = None

    def _finish_response(self, status: str, reason: str | None) -> None:
        stream, self._response = self._response, None
        assert stream is not None
        if stream.item.audio_samples:
            self._voice_locked = True  # the service refuses a voice change once the model has spoken
        self.responses.append(stream.finish(status, reason, self._emit))
