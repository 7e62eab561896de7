"""``gateway bench``: what the gateway costs and the delay it adds, measured so anyone can repeat it.

* :mod:`.single`: one run, ``gateway bench --calls N``: the gateway's CPU per call-second under N replayed calls
  against the embedded model server, each in its own process.
* :mod:`.steps`: ``gateway bench --steps 25,50,...``: the gateway in both audio formats beside a **null relay**
  on the same stack (:mod:`.relay`), at rising concurrency, the server pinned to one core and the load generator
  to the other; CPU per call-second and its ratio to the relay, per-frame forwarding delay both ways, frames lost
  or late, turn latency and barge-in stop time, RSS; a table, JSON and a PNG plot; ``--tls`` for ``wss://``.
* :mod:`.micro`: ``gateway bench --micro``: the hot path's pieces, microseconds per operation.
* :mod:`.models`: the model-side processes the runs talk to (the Realtime echo agent, and the Twilio-speaking
  echo behind the null relay), with a per-frame arrival probe.
"""

from .single import (  # noqa: F401  (the single run's API, as it was when this was one module)
    BUSY_SATURATED,
    LAG_SATURATED_MS,
    MARGIN_S,
    SAMPLE,
    STARTUP_TIMEOUT_S,
    STOP_TIMEOUT_S,
    THINK_MS,
    BenchConfig,
    BenchPhone,
    BenchResult,
    Child,
    Counters,
    Sample,
    _http_get,
    _port_open,
    _wait_until,
    call_length_s,
    caller_turns,
    machine,
    machine_busy_s,
    main,
    process_cpu_s,
    process_cpu_times,
    process_rss_mb,
    run_bench,
    self_cpu_times,
    stop_children,
)

__all__ = ["BenchConfig", "BenchResult", "BenchPhone", "Counters", "caller_turns", "main", "process_cpu_s", "process_cpu_times", "run_bench"]
