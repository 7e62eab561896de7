"""The web console at ``/console``: live calls with their running transcript, past calls, a call's page.

Plain HTML from the server (:mod:`.pages`, templates in ``templates/``), one small script and one style sheet
(``static/``), no build step. Modules:

* :mod:`.routes`: the routes, login and logout, CSRF and origin checks, the live-call actions, the security headers;
* :mod:`.access`: the request's session, looked up in the shared state before its route (503 when unreachable);
* :mod:`.session`: login sessions (a random id in an HTTP-only cookie, mapped in the shared state to the API key's
  id: any worker or instance accepts them);
* :mod:`.hub`: the live view's fan-out of every call's events to the browsers' event streams;
* :mod:`.relay`: the live view across instances (each holder publishes its calls into the shared state);
* :mod:`.timeline`: a call's timeline as an inline SVG, linked to the recording's player by the script;
* :mod:`.listing`: the past calls' query parameters (filters, sort, offset) and their CSV export;
* :mod:`.overview` and :mod:`.charts`: the overview page (calls, latency, spend, barge-ins over time) and its
  SVG charts.
"""

from gateway.console.hub import LiveHub
from gateway.console.routes import console_routes
from gateway.console.session import ConsoleSessions

__all__ = ["ConsoleSessions", "LiveHub", "console_routes"]
