"""What the running gateway tells operators: metrics, call records, cost and budgets, structured logs, traces.

* :mod:`gateway.observe.cost`: the price table and a call's token usage, summed and costed.
* :mod:`gateway.observe.metrics`: the Prometheus metrics (``prometheus-client``) and the ``/metrics`` endpoint.
* :mod:`gateway.observe.ledger`: one call's account, fed the core's events: turns, tools, reconnects, usage, cost;
  it updates the metrics as the call goes and gives the call's record at its end.
* :mod:`gateway.observe.budget`: the daily budget shared by every instance (through :mod:`gateway.state`).
* :mod:`gateway.observe.logs`: JSON or readable log lines, each carrying the call's SIDs; phone numbers masked.
"""
