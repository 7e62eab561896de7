"""A call's place in the shared state: its concurrency leases (MAX_CALLS_GLOBAL, MAX_CALLS_PER_NUMBER) and its
entry in the live-call registry (which instance holds it, for control from any instance).

A mixin of :class:`gateway.media_stream.session.MediaStreamSession`: it works on the session's own state.
"""

from __future__ import annotations

import logging

from gateway.call.clock import now_ms as _now_ms
from gateway.media_stream.part import SessionPart
from gateway.state.base import StateDeadline, StateUnavailable

log = logging.getLogger("gateway.media_stream")

# A live call holds leases (MAX_CALLS_GLOBAL, MAX_CALLS_PER_NUMBER) and its registry entry (which instance holds
# it, for control from any instance) for this long, renewed every LEASE_RENEW_S while it lives: a crashed
# instance's calls free their slots within the TTL.
LEASE_TTL_S = 30.0
LEASE_RENEW_S = 10.0


class CallLeases(SessionPart):
    """Taking, renewing and releasing the call's leases and registry entry."""

    async def _take_leases(self, number: str) -> None:
        """Hold this call's slots (MAX_CALLS_GLOBAL across instances, MAX_CALLS_PER_NUMBER per called number) and
        register it (control from any instance), all within 300 ms. Limits fail closed: a full limit, or a shared
        state that does not answer in time, ends the call with the spoken message (each counted and logged for
        what it is, by the core: :meth:`Call.lease_refused`). The registry fails open: the call goes on uncontrolled."""
        shared, settings, call_sid = self.services.shared, self.settings, self.call.call_sid
        deadline = StateDeadline()
        limits = [("global", settings.max_calls_global)]
        if number:
            limits.append((f"number:{number[:32]}", settings.max_calls_per_number))
        for scope, limit in limits:
            if not limit:
                continue
            # Released at the end whatever the answer: a lease taken by a call that timed out must not linger.
            self._leases.append(scope)
            try:
                taken = await deadline.run(shared.acquire_lease(scope, call_sid, limit, LEASE_TTL_S))
            except StateUnavailable as error:
                log.error("the shared state does not answer: %s", error)
                self._dispatch(self.call.lease_refused("state_unavailable", _now_ms()))  # counted, logged, ended
                return
            if not taken:
                self._dispatch(self.call.lease_refused("global_limit" if scope == "global" else "number_limit",
                                                       _now_ms()))
                return
        self._registered = True  # renewals write it again: a registration that failed is retried with them
        try:
            await deadline.run(shared.register_call(call_sid, settings.instance_id, LEASE_TTL_S))
        except StateUnavailable as error:
            log.warning("the call could not be registered (%s): it cannot be controlled from other instances until "
                        "a renewal succeeds", error)

    async def _renew_leases(self) -> None:
        shared, call_sid = self.services.shared, self.call.call_sid
        try:
            for scope in self._leases:
                await shared.renew_lease(scope, call_sid, LEASE_TTL_S)
            # Registered again even when the first registration failed (the state did not answer): the registry
            # heals, and with it control from other instances and the lost-call sweep (gateway.store.records).
            await shared.register_call(call_sid, self.settings.instance_id, LEASE_TTL_S)
            self._registered = True
        except StateUnavailable as error:
            log.warning("leases not renewed (%s); retried in %g s", error, LEASE_RENEW_S)

    async def _release_leases(self) -> None:
        shared, call_sid = self.services.shared, self.call.call_sid
        try:
            for scope in self._leases:
                await shared.release_lease(scope, call_sid)
            if self._registered:
                await shared.unregister_call(call_sid, self.settings.instance_id)
        except StateUnavailable as error:
            log.warning("leases not released (%s): they expire within %g s", error, LEASE_TTL_S)
        self._leases, self._registered = [], False
