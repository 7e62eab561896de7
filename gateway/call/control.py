"""Turn-taking around tools and call control: running tools (fairly, boundedly), asking for responses only when
nobody is talking, ending or transferring a call once what the agent said has been heard (one transfer per call),
wrapping a call up (at its time limit or budget: gateway.call.ending), and the actions the HTTP API takes on a live call.

A mixin of :class:`gateway.call.core.Call`: it works on the call's own state (see ``Call.__init__``).
"""

from __future__ import annotations

import json
from dataclasses import replace

from gateway.call.limits import (
    GOODBYE_INSTRUCTIONS, MAX_CARRIED_CHARS, MAX_GREETING_ATTEMPTS, MAX_HELD_ITEMS, MAX_QUEUED_TOOLS,
    TRANSFER_INSTRUCTIONS,
)
from gateway.call.part import CallPart
from gateway.call.outputs import END_CALL, HangUp, Output, Peer, RunTool, Send, ToolCalled, Transfer
from gateway.call.state import ControlPhase, GreetingPhase, LinkPhase, ResponsePhase, TransferPhase
from gateway.realtime import events as rt

# Why a transfer is refused (:meth:`CallControl.transfer_refusal`); the API answers them with 409 and these codes.
TRANSFER_UNDER_WAY = "transfer_in_progress"
TRANSFER_FAILED = "transfer_already_failed"


class CallControl(CallPart):
    def _function_call(self, event: rt.FunctionCallRequested) -> list[Output]:
        out: list[Output] = [ToolCalled(event.call_id, event.name, event.arguments)]
        if event.name in self.config.call_control_tools:
            refusal = self.transfer_refusal() if event.name != END_CALL else None
            if refusal is not None:
                # One transfer per call: Twilio must never dial twice. The model hears why; it is asked to go on
                # only when the call stays with it (the transfer failed), not while the caller is being handed over.
                error = json.dumps({"error": refusal[1]})
                out.append(Send(Peer.MODEL, rt.function_call_output(event.call_id, error)))
                if refusal[0] == TRANSFER_FAILED:
                    self._responses.wanted = True
                return out + self._request_response_if_ready()
            line = self._line
            already_pending = line.control is not None
            if event.name == END_CALL:
                line.control, say = HangUp("the agent ended the call"), GOODBYE_INSTRUCTIONS
            else:
                line.control, say = Transfer("the agent transferred the call"), TRANSFER_INSTRUCTIONS
            if line.control_phase is ControlPhase.NONE:
                line.control_phase = ControlPhase.AWAITING_PLAYBACK
            note = "Done: the call will be handed over once the caller has heard you."
            out.append(Send(Peer.MODEL, rt.function_call_output(event.call_id, json.dumps({"ok": True, "note": note}))))
            if event.response_id not in self._responses.with_audio and not already_pending:
                # The agent acted before saying anything: let it say goodbye (or announce the transfer) first.
                self._responses.wanted, self._responses.instructions = True, say
            return out + self._request_response_if_ready()
        run = RunTool(event.call_id, event.name, event.arguments)
        # The new session of a call that loses its model must know what was looked up, and what came back.
        self._conversation.text(("tool", self._link.session, event.call_id), "assistant",
                                f"[I used the tool {event.name} with {event.arguments[:500]}]")
        if len(self._running_tools) - len(self._queued_tools) < self.config.max_tools_per_call:
            self._running_tools.add(event.call_id)
            out.append(run)
        elif len(self._queued_tools) < MAX_QUEUED_TOOLS:
            # One call may not hold more than its share of the tool pool: this one runs when a slot frees.
            self._running_tools.add(event.call_id)
            self._queued_tools.append(run)
        else:
            busy = json.dumps({"error": f"too many tool calls at once; {event.name} was not run"})
            out.append(Send(Peer.MODEL, rt.function_call_output(event.call_id, busy)))
            self._responses.wanted = True
            out.extend(self._request_response_if_ready())
        return out

    def tool_finished(self, call_id: str, output: str, now_ms: float) -> list[Output]:
        """A tool run by the shell finished (or failed: ``output`` then says so, as JSON)."""
        if self.ended:
            return []
        if call_id in self._orphaned_tools:
            return self._orphaned_tool_finished(call_id, output)
        if call_id not in self._running_tools:
            return []
        self._running_tools.discard(call_id)
        self._responses.wanted = True
        self._conversation.extend(("tool", self._link.session, call_id), f" [it returned {output[:1000]}]")
        out: list[Output] = [Send(Peer.MODEL, rt.function_call_output(call_id, output))]
        if self._queued_tools:
            out.append(self._queued_tools.popleft())
        return out + self._request_response_if_ready()

    def _orphaned_tool_finished(self, call_id: str, output: str) -> list[Output]:
        """A tool called by a session that has since been lost: its call id means nothing to the new session, so
        the result goes in as a note, and the agent is asked to go on with it."""
        session = self._orphaned_tools.pop(call_id)
        self._conversation.extend(("tool", session, call_id), f" [it returned {output[:1000]}]")
        note = rt.user_text(f"(A note from the system, not the caller: the tool you called before the line "
                            f"glitched has returned {output[:MAX_CARRIED_CHARS]}. Go on with the caller.)")
        self._responses.wanted = True
        if self._link.phase is LinkPhase.DOWN:
            if len(self._held_items) < MAX_HELD_ITEMS:
                self._held_items.append(note)
            return []
        return [Send(Peer.MODEL, note), *self._request_response_if_ready()]

    # ---- control from the HTTP API (any instance; gateway.api.control) ----------------------------------------

    def operator_message(self, text: str, now_ms: float) -> list[Output]:
        """A word to the agent from the operator (a system message); it answers once the caller is not speaking."""
        if self.ended:
            return []
        item = rt.system_text(text)
        self._responses.wanted = True
        if self._link.phase is LinkPhase.DOWN:
            if len(self._held_items) < MAX_HELD_ITEMS:
                self._held_items.append(item)
            return []
        return [Send(Peer.MODEL, item), *self._request_response_if_ready()]

    def new_instructions(self, instructions: str, now_ms: float) -> list[Output]:
        """New instructions for the rest of the call, this session and every later one."""
        if self.ended:
            return []
        session = {**self.config.session_update.get("session", {}), "instructions": instructions}
        self.config = replace(self.config, session_update={**self.config.session_update, "session": session})
        return [Send(Peer.MODEL, rt.instructions_update(instructions))] if self._link.phase is not LinkPhase.DOWN else []

    def transfer_refusal(self) -> tuple[str, str] | None:
        """Why the call may not be transferred now, as ``(code, message)``, or None: one transfer per call.

        A transfer is under way from the moment it is asked for (the agent announces it) until Twilio dialled or
        refused; a refused one is not tried again either (a REST request that failed may still have reached
        Twilio, and a second dial is what this guards against)."""
        if self._line.transfer is TransferPhase.FAILED:
            return TRANSFER_FAILED, "the transfer was already tried in this call and failed; it is not tried again"
        if self._line.transfer is TransferPhase.SENT or isinstance(self._line.control, Transfer):
            return TRANSFER_UNDER_WAY, "a transfer is already under way"
        return None

    def transfer_requested(self, now_ms: float) -> list[Output]:
        """Transfer the call (the API asked): the agent announces it, then the transfer once that is heard.
        The API asks :meth:`transfer_refusal` first (409); refused here too, whoever asks."""
        if self.ended or self._line.control is not None or self.transfer_refusal() is not None:
            return []
        self._line.control, self._line.control_phase = Transfer("transferred through the API"), ControlPhase.AWAITING_PLAYBACK
        self._responses.wanted, self._responses.instructions = True, TRANSFER_INSTRUCTIONS
        return self._request_response_if_ready() + self._control_if_heard()

    def hangup_requested(self, now_ms: float) -> list[Output]:
        """Hang up now (the API asked)."""
        if self.ended or self._line.control_phase is ControlPhase.CARRIED_OUT:
            return []
        self._line.control_phase = ControlPhase.CARRIED_OUT
        return [HangUp("hung up through the API")]

    def transfer_failed(self, now_ms: float) -> list[Output]:
        """Twilio refused the transfer: the call goes on, and the agent is told so it can say something."""
        if self.ended:
            return []
        self._line.control, self._line.control_phase = None, ControlPhase.NONE
        self._line.transfer = TransferPhase.FAILED
        self._responses.wanted = True
        self._responses.instructions = "The transfer to a colleague failed. Apologise briefly and keep helping the caller."
        return self._request_response_if_ready()

    def _ask_for_greeting(self) -> list[Output]:
        greeting = self._greeting
        if not self.config.agent_speaks_first or greeting.phase is GreetingPhase.DONE \
                or greeting.attempts >= MAX_GREETING_ATTEMPTS:
            return []
        greeting.attempts += 1
        greeting.session = self._link.session
        if greeting.response_id is None:
            greeting.phase = GreetingPhase.ASKED
        self._responses.wanted = True
        self._responses.instructions = self.config.greeting_instructions
        return self._request_response_if_ready()

    def _request_response_if_ready(self) -> list[Output]:
        responses = self._responses
        if not responses.wanted or self._running_tools or responses.active or responses.phase is ResponsePhase.REQUESTED:
            return []
        if self._caller_speaking:
            return []  # never talk over a caller mid-sentence: asked for once they stop
        responses.wanted, responses.phase = False, ResponsePhase.REQUESTED
        instructions, self._responses.instructions = self._responses.instructions, ""
        return [Send(Peer.MODEL, rt.response_create(self._instructions_plus(instructions)))]

    def _instructions_plus(self, extra: str) -> str:
        """Instructions for one response. They replace the session's for that response, so they carry them."""
        if not extra:
            return ""
        session = self.config.session_update.get("session", {}).get("instructions", "")
        return f"{session}\n\n{extra}" if session else extra

    def _control_if_heard(self) -> list[Output]:
        """Hang up or transfer once nothing is left to say or to hear."""
        line, responses = self._line, self._responses
        control = line.control
        if control is None or line.control_phase is not ControlPhase.AWAITING_PLAYBACK or self._playback.awaiting_echoes:
            return []
        if responses.active or responses.wanted or responses.phase is ResponsePhase.REQUESTED or self._running_tools:
            return []
        if isinstance(control, Transfer):
            if line.transfer is not TransferPhase.NONE:
                return []  # never a second dial, whatever state led here
            line.transfer = TransferPhase.SENT
        line.control_phase = ControlPhase.CARRIED_OUT
        return [control]

    def _wrap_up(self, reason: str, instructions: str) -> list[Output]:
        """Ask the agent for a goodbye, then hang up once it has been heard (as ``end_call`` does)."""
        self._line.control, self._line.control_phase = HangUp(reason), ControlPhase.AWAITING_PLAYBACK
        self._wrap_up_reason = reason
        self._responses.wanted = True
        self._responses.instructions = instructions
        return self._request_response_if_ready() + self._control_if_heard()

