"""The agent's audio on the caller's line: each chunk of a response sent to Twilio with a mark, the echoes that say
what was heard (:mod:`gateway.call.playback`), the turn that began, and the barge-in: the caller speaks over the agent,
Twilio's queue is cleared and every item in flight cut at what the caller will have heard.

A mixin of :class:`gateway.call.core.Call`: it works on the call's own state (see ``Call.__init__``): the items
(``_items``), the playback tracker, and the composed state objects of :mod:`gateway.call.state`.
"""

from __future__ import annotations

from gateway.call.limits import MAX_TRACKED_ITEMS
from gateway.call.part import CallPart
from gateway.call.outputs import AgentAudioStarted, BargeIn, Dropped, Output, Peer, Send
from gateway.call.playback import parse_mark_name
from gateway.call.state import ControlPhase, GreetingPhase, LinePhase, LinkPhase, ResponsePhase, _AgentItem
from gateway.realtime import events as rt
from gateway.twilio import media as tw

_DOWN = LinkPhase.DOWN


class AgentAudio(CallPart):
    def _agent_audio(self, delta: rt.AudioDelta, now_ms: float) -> list[Output]:
        key = (self._link.session, delta.item_id)
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = _AgentItem(delta.response_id)
            self._forget_old_items()
            self._conversation.begin(key, "assistant")
        first = delta.response_id not in self._responses.with_audio
        self._responses.with_audio.add(delta.response_id)
        if delta.response_id in self._responses.interrupted or not self.stream_sid:
            item.received_bytes += len(delta.audio)  # the model's item holds it, though nobody hears it
            return []  # a late delta of an interrupted response, or no stream to play it on
        out: list[Output] = [self._turn_began(delta, now_ms)] if first else []
        line = self._line
        if line.phase is LinePhase.COMFORT_NOISE and self._link.phase is not _DOWN:
            # What is left of the comfort noise at Twilio goes, so the agent's words are not queued behind it.
            line.phase = LinePhase.AGENT
            self._line.noise_until_ms = 0.0
            if not self._playback.awaiting_echoes:
                out.append(Send(Peer.TWILIO, tw.clear_message(self.stream_sid)))
        audio = delta.audio
        per_ms = self._model_bytes_per_ms
        for offset in range(0, len(audio), self._chunk_bytes):
            chunk = audio[offset : offset + self._chunk_bytes]
            start_ms = item.received_bytes // per_ms
            item.received_bytes += len(chunk)
            mulaw = self._outbound.convert(chunk)
            if not mulaw:
                continue
            name = self._playback.chunk_sent(key, start_ms, item.received_bytes // per_ms, now_ms)
            out.append(Send(Peer.TWILIO, tw.media_message(self.stream_sid, mulaw)))
            out.append(Send(Peer.TWILIO, tw.mark_message(self.stream_sid, name)))
        return out

    def _turn_began(self, delta: rt.AudioDelta, now_ms: float) -> AgentAudioStarted:
        stopped, created = self._caller_stopped_ms, self._responses.created
        self._caller_stopped_ms = None  # one latency per caller turn
        caller_item = self._caller_item if stopped is not None else ""
        ttfa = now_ms - created[1] if created is not None and created[0] == delta.response_id else None
        return AgentAudioStarted(delta.response_id, delta.item_id, caller_item,
                                 now_ms - stopped if stopped is not None else None, ttfa)

    def _mark_echoed(self, name: str, now_ms: float) -> list[Output]:
        parsed = parse_mark_name(name)
        if parsed is None:
            return [Dropped("twilio", "mark with a name we never sent")]
        if not self._playback.mark_echoed(parsed, now_ms):
            return [Dropped("twilio", "echo of a mark that is not pending")]
        out = self._control_if_heard() if self._line.control is not None else []
        if self._link.reconnects.down_since is not None and not self._playback.awaiting_echoes and not self.ended:
            out += self._model_schedule(now_ms)  # a lost session's last words played: comfort noise from now
        return out

    @property
    def marks_pending(self) -> int:
        return self._playback.marks_pending

    def heard_ms(self, item_id: str) -> int:
        """How much of an item (of the current model session) the caller has heard, as confirmed by Twilio."""
        return self._playback.heard_ms((self._link.session, item_id))

    def _forget_old_items(self) -> None:
        """A call can last hours: only the latest items are kept (far more than can be queued at Twilio)."""
        while len(self._items) > MAX_TRACKED_ITEMS:
            key, _ = self._items.popitem(last=False)
            self._playback.forget(key)

    def _caller_started_speaking(self, now_ms: float) -> list[Output]:
        greeting, responses = self._greeting, self._responses
        if greeting.phase is not GreetingPhase.DONE and responses.wanted and responses.phase is not ResponsePhase.REQUESTED \
                and self._responses.instructions == self.config.greeting_instructions:
            self._responses.wanted, self._responses.instructions = False, ""  # a greeting still waiting: not wanted now
        greeting.phase = GreetingPhase.DONE  # the caller spoke: the conversation has begun, greeting or not
        out: list[Output] = []
        response_id = responses.active
        cancelled = False
        if response_id is not None and response_id not in self._responses.interrupted:
            self._responses.interrupted.add(response_id)  # its late deltas are dropped
            if not self.config.interrupt_response:
                out.append(Send(Peer.MODEL, rt.response_cancel(response_id)))
                cancelled = True
        if not self._playback.awaiting_echoes:
            return out  # nothing queued or playing at Twilio: nothing to clear or truncate
        heard = self._playback.heard_at_clear(now_ms)
        out.insert(0, Send(Peer.TWILIO, tw.clear_message(self.stream_sid)))
        for key, heard_ms in heard.items():
            session, item_id = key
            item = self._items[key]
            received_ms = item.received_bytes // self._model_bytes_per_ms
            heard[key] = heard_ms = min(heard_ms, received_ms)  # never more than the item holds
            # Every item with audio in Twilio's queue is cut where the caller stopped hearing it (an item of
            # a session that has since been replaced no longer exists at the model: nothing to cut there).
            if session == self._link.session and self._link.phase is not _DOWN:
                out.append(Send(Peer.MODEL, rt.item_truncate(item_id, heard_ms)))
            out.append(BargeIn(item_id, heard_ms, received_ms, cancelled))
            if received_ms:
                self._conversation.heard(key, heard_ms / received_ms)
        self._playback.clear(heard)
        self._outbound.reset()  # the filter's tail belongs to the audio just dropped
        if self._line.control_phase is ControlPhase.AWAITING_PLAYBACK:
            # The caller talked over the goodbye (or the transfer announcement): they are not done. The
            # model hears them and may end or transfer again; hanging up on a talking caller is wrong.
            self._line.control, self._line.control_phase = None, ControlPhase.NONE
        return out
