"""Serving: the Starlette app and its wiring, uvicorn under the gateway's limits, workers, the metrics listener.

* :mod:`.app`: the application (routes and wiring, nothing else); :mod:`.serve`: ``gateway serve``'s one process
  (the app under uvicorn with the drain); :mod:`.workers`: ``--workers N`` on one socket.
* :mod:`.runner`: uvicorn's options and servers, with the same limits everywhere (``gateway serve``, demo, tests);
  :mod:`.connection_caps`: one address's share of the connections; :mod:`.direct_ws`: the WebSocket protocol that
  hands media frames to the call by callback.
* :mod:`.metrics_listener`: ``/metrics`` on its own port.

Importing this package loads nothing: the app is imported by whoever serves it.
"""
