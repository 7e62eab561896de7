"""The gateway's HTTP API: outbound calls, call records, call control, Twilio status callbacks, OpenAPI.

* ``POST /calls`` places an outbound call (``routes.create_call``); ``GET /calls`` lists call records, filtered
  and paged, ``GET /calls/{sid}`` shows one with its turns and timeline (a key sees the calls it placed, an
  operator key every call); ``POST /calls/{sid}/hangup``: bearer API keys (``auth``), strict bodies and query
  strings (``requests``), one error shape (``errors``).
* ``POST /twilio/answer``: Twilio asks it for the TwiML of an outbound call once the callee answers.
* ``POST /twilio/call-status``: Twilio's status and answering-machine callbacks.
* ``GET /openapi.json``: the OpenAPI 3.1 description (``openapi``), generated from the request and answer models
  (``requests``, ``responses``).
* ``client``: the other side, ``gateway call``: places a call through a running gateway and follows it.

Twilio's REST API is reached only through ``gateway.twilio.rest``; records and per-call settings live in
``gateway.store``.
"""

from gateway.api.outbound import OutboundApi
from gateway.api.routes import ANSWER_PATH, CALL_STATUS_PATH, routes

__all__ = ["ANSWER_PATH", "CALL_STATUS_PATH", "OutboundApi", "routes"]
