"""``gateway serve --workers N``: N gateway processes on one host, behind one listening socket.

The parent binds the port once and starts N workers (``multiprocessing`` spawn); each runs the gateway with its
drain (:func:`gateway.server.serve.serve_gateway`) on the shared socket, and the kernel hands each new
connection to one of them. What the workers share, set up here before they start:

* the stream secret (``STREAM_SECRET``; a random one when none is configured), so a credential issued by one worker
  opens a stream on another;
* the shared state (``REDIS_URL``, else one SQLite file, ``STATE_SQLITE_PATH``, by default ``gateway-state.db`` in
  ``DATA_DIR``): single-use claims, leases, the live-call registry and control messages, the daily cost total;
* the metrics (``PROMETHEUS_MULTIPROC_DIR``): ``/metrics`` adds up every worker's samples, on any worker's public
  port (when it is served there) and on ``METRICS_PORT``, which this parent process serves for all of them
  (:mod:`gateway.server.metrics_listener`; it binds the port before any worker starts, so one in use stops the start);
* the call store: ``STORE_URL`` (SQLite, the default, or PostgreSQL) is one database for all.

SIGTERM (or Ctrl-C) is passed to every worker: each drains its calls and exits 0; a second one stops them at
once. A worker that dies unexpectedly is replaced. Each worker is named ``INSTANCE_ID-w<i>`` (host-pid by default).
A supervisor that dies, even by SIGKILL, takes its workers with it: each gets SIGTERM from the kernel and drains (on
Linux), so no orphan keeps serving the port.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from typing import Any

from gateway.config import Settings
from gateway.observe.process_metrics import SUPERVISOR_PID_VARIABLE

log = logging.getLogger("gateway.server.workers")

RESTART_BACKOFF_S = 1.0
EARLY_EXIT_S = 10.0  # a worker that exits this soon after its start failed to start
MAX_EARLY_EXITS = 3  # ... this many times: the configuration is wrong; stop every worker and exit 1


_PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies (Linux)


def _drain_when_orphaned(supervisor: int) -> None:
    """SIGTERM to this worker when the supervisor dies, even by SIGKILL (it then drains like any other stop), so
    no worker keeps serving the port with nobody to replace it or pass on a stop. Linux only; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        log.warning("workers: this system cannot stop a worker whose supervisor died; stop them by hand if it does")
        return
    if os.getppid() != supervisor:  # it died before the prctl: nobody will send the signal
        raise SystemExit(0)


def _worker(sock: socket.socket, index: int, instance: str) -> None:
    from gateway.observe.logs import configure_logging
    from gateway.server.serve import serve_gateway

    _drain_when_orphaned(int(os.environ[SUPERVISOR_PID_VARIABLE]))
    os.environ["INSTANCE_ID"] = f"{instance}-w{index}"
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format, full_numbers=settings.log_full_numbers)  # as the CLI
    raise SystemExit(serve_gateway(settings, sockets=[sock], metrics_port=False))  # the parent serves it


def shared_environment(settings: Settings, workdir: str) -> dict[str, str]:
    """What the workers must agree on, as settings (see the module docstring)."""
    env = {"PROMETHEUS_MULTIPROC_DIR": os.path.join(workdir, "metrics"),
           SUPERVISOR_PID_VARIABLE: str(os.getpid())}  # process_* of the group, from any of its processes
    if not settings.stream_secret and not settings.twilio_auth_token:
        env["STREAM_SECRET"] = secrets.token_hex(32)
    if not settings.redis_url and not settings.state_sqlite_path:
        # Beside the records in DATA_DIR (the image's volume), not in the temporary directory: the daily cost total
        # and the console's logins outlive a restart.
        env["STATE_SQLITE_PATH"] = os.path.abspath(os.path.join(settings.data_dir, "gateway-state.db"))
    return env


def serve_workers(settings: Settings, workers: int) -> int:
    """Run ``workers`` gateway processes until they all exit; 0 when every one exited cleanly."""
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    with tempfile.TemporaryDirectory(prefix="gateway-workers-") as workdir:
        env = shared_environment(settings, workdir)
        os.makedirs(env["PROMETHEUS_MULTIPROC_DIR"])
        os.environ.update(env)  # spawned workers start with it, before they import anything
        metrics_thread = None
        if settings.metrics_port:
            from gateway.server.metrics_listener import MetricsThread

            try:
                metrics_thread = MetricsThread(settings).start()
            except OSError as error:
                log.error("%s", error)
                sock.close()
                return 1
        os.environ.update({"HOST": settings.host, "PORT": str(sock.getsockname()[1])})
        if settings.insecure_dev_mode:
            os.environ["INSECURE_DEV_MODE"] = "true"
        instance = os.environ.get("INSTANCE_ID", "").strip() or f"{socket.gethostname()}-{os.getpid()}"
        context = multiprocessing.get_context("spawn")
        procs: dict[int, Any] = {}
        started_at: dict[int, float] = {}
        stopping = [0]
        early_exits = 0

        def start(index: int) -> None:
            proc = context.Process(target=_worker, args=(sock, index, instance), name=f"gateway-w{index}")
            proc.start()
            procs[index], started_at[index] = proc, time.monotonic()
            if stopping[0] and proc.pid:  # a signal came while it started: it drains with the others
                os.kill(proc.pid, signal.SIGTERM)

        def on_signal(signum: int, frame: Any) -> None:
            stopping[0] += 1
            for proc in procs.values():
                if proc.is_alive() and proc.pid:
                    os.kill(proc.pid, signal.SIGTERM)  # the first: drain; the second: stop now

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        for index in range(workers):
            start(index)
        log.info("%d workers on %s:%d", workers, settings.host, sock.getsockname()[1])
        status = 0
        while procs:
            for index, proc in list(procs.items()):
                proc.join(timeout=0.2)
                if proc.exitcode is None:
                    continue
                del procs[index]
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(proc.pid, env["PROMETHEUS_MULTIPROC_DIR"])
                if stopping[0]:
                    # Killed by our own SIGTERM before it could install its handlers: it was still starting, so it
                    # held no call; that is a clean stop, not a failure.
                    clean = proc.exitcode in (0, -signal.SIGTERM)
                    status = status or (0 if clean else proc.exitcode)
                    continue
                if time.monotonic() - started_at[index] >= EARLY_EXIT_S:
                    early_exits = 0  # it had started: a crash, not a configuration that cannot start
                else:
                    early_exits += 1
                    if early_exits >= MAX_EARLY_EXITS:
                        log.error("workers keep failing to start (exit %s); stopping", proc.exitcode)
                        status = 1
                        on_signal(signal.SIGTERM, None)
                        on_signal(signal.SIGTERM, None)
                        continue
                log.error("worker %d exited (%s); starting another", index, proc.exitcode)
                time.sleep(RESTART_BACKOFF_S)
                if not stopping[0]:
                    start(index)
        sock.close()
        if metrics_thread is not None:
            metrics_thread.stop()
        return status
