"""Command line: ``gateway serve | doctor | call | demo | replay | local-realtime | bench | fuzz | soak``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import replace

from gateway.audio.convert import AUDIO_FORMATS
from gateway.config import ConfigError, Settings


def _configure_logging(level: str, settings: Settings | None = None) -> None:
    """Log to stderr as ``LOG_FORMAT`` says (gateway.observe.logs): escaped, numbers masked, call SIDs on each line."""
    from gateway.observe.logs import configure_logging

    configure_logging(level, settings.log_format if settings else "text",
                      full_numbers=settings.log_full_numbers if settings else False)


def startup_problem(settings: Settings) -> str | None:
    """What would stop the gateway during its start-up, found before the server runs: one line naming the setting
    and the fix (a traceback from inside the server's start-up tells an operator neither). None: go ahead."""
    import os
    from urllib.parse import urlsplit

    if settings.data_dir and not os.path.isdir(settings.data_dir):
        try:
            os.makedirs(settings.data_dir, mode=0o750, exist_ok=True)
        except OSError as error:
            return (f"DATA_DIR={settings.data_dir}: the directory cannot be created ({error.strerror}); fix: create "
                    "it, writable by the gateway's user, or set DATA_DIR to one that is")
    from gateway.extras import missing_extra
    from gateway.tools.registry import tools_module_problem

    problem = tools_module_problem(settings.tools_module)
    if problem is not None:
        return problem.one_line()
    missing = missing_extra(settings, os.environ)  # STORE_URL=postgresql://... without the postgres extra, say
    if missing is not None:
        return missing
    if urlsplit(settings.store_url).scheme == "sqlite":  # opened (and migrated) here; a server is only tried later
        from gateway.store import StoreOpenError, open_store

        try:
            store = open_store(settings.store_url)
        except StoreOpenError as error:
            return str(error)
        asyncio.run(store.close())
    return None


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    settings = replace(settings, host=args.host or settings.host, port=args.port if args.port is not None else settings.port,
                       insecure_dev_mode=settings.insecure_dev_mode or args.insecure_dev)
    workers = args.workers if args.workers is not None else settings.workers
    if not 1 <= workers <= 64:
        print("gateway serve: --workers must be 1 to 64", file=sys.stderr)
        return 2
    problem = startup_problem(settings)
    if problem is not None:
        # Logged (LOG_FORMAT: a JSON object in production), one line, no traceback; exit 2 as for a bad setting.
        logging.getLogger("gateway.cli").error("gateway serve cannot start: %s", problem)
        return 2
    if workers > 1:
        from gateway.server.workers import serve_workers

        return serve_workers(settings, workers)
    from gateway.server.serve import serve_gateway

    return serve_gateway(settings)


def _local_realtime(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.local import run_local_realtime

    try:
        asyncio.run(run_local_realtime(args.host, args.port, args.session_limit_s))
    except KeyboardInterrupt:
        pass
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.tooling.demo import run_demo

    return asyncio.run(run_demo(settings, output=args.output, audio_format=args.audio_format))


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.tooling.replay.command import run

    return run(args, settings)


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    if args.micro:
        from gateway.tooling.bench.micro import main as micro_main

        return micro_main(as_json=args.json)
    if args.steps:
        from gateway.tooling.bench.steps import StepsConfig
        from gateway.tooling.bench.steps import main as steps_main

        config = StepsConfig(steps=[int(n) for n in args.steps.split(",") if n.strip()], seconds=args.seconds,
                             ramp=args.ramp, targets=tuple(t for t in args.targets.split(",") if t.strip()),
                             tls=args.tls, out_dir=args.out, gateway_path=args.gateway_path, repeat=args.repeat)
        return steps_main(config, as_json=args.json)
    from gateway.tooling.bench import main as bench_main

    return bench_main(args.calls, args.seconds, args.audio_format, args.ramp, args.json)


def _fuzz(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.tooling.fuzz import command

    return command(args, settings)


def _soak(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.tooling.soak import command

    return command(args, settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="Twilio phone calls <-> OpenAI Realtime agents.")
    sub = parser.add_subparsers(dest="command", required=True)
    # The tooling's options come from its own modules, imported only for the command being run: `gateway serve`
    # loads none of the tooling (docs/ARCHITECTURE.md, "Layers"). The command is the first argument.
    given = sys.argv[1:] if argv is None else argv
    chosen = next((arg for arg in given if not arg.startswith("-")), None)
    serve = sub.add_parser("serve", help="run the gateway (webhook + media stream)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--insecure-dev", action="store_true",
                       help="development only: take calls with a real model without TWILIO_AUTH_TOKEN / PUBLIC_URL "
                            "(same as INSECURE_DEV_MODE=true; /healthz repeats the warning)")
    serve.add_argument("--workers", type=int, default=None,
                       help="processes on this host sharing the port, the state and the metrics (default: WORKERS, or 1)")
    doctor = sub.add_parser("doctor", help="check the configuration before the first real call",
                            description="Check the settings, PUBLIC_URL, signatures, the model key and session, "
                                        "Twilio's credentials and numbers, Redis and the store; say what is wrong "
                                        "and how to fix it. Exit status: 0 when no check fails, 1 otherwise.")
    from gateway.doctor import add_arguments as add_doctor_arguments, command as doctor_command

    add_doctor_arguments(doctor)
    call = sub.add_parser("call", help="place an outbound call through a running gateway and follow it",
                          description="POST /calls on a running gateway (as curl would), then print the call's "
                                      "status until it ends; Ctrl-C hangs up. Exit status: 0 when the call was "
                                      "answered and completed, 1 otherwise, 2 for bad options.")
    from gateway.api.client import add_arguments as add_call_arguments, command as call_command

    add_call_arguments(call)
    local = sub.add_parser("local-realtime", help="run the embedded Realtime-compatible server on its own")
    local.add_argument("--host", default="127.0.0.1")
    local.add_argument("--port", type=int, default=8765)
    local.add_argument("--session-limit-s", type=float, default=3600.0,
                       help="each session's limit (session_expired, then close 1001), as OpenAI's 60 minutes")
    demo = sub.add_parser("demo", help="play a sample call through the gateway and the embedded model, offline")
    demo.add_argument("--output", default="demo-heard.wav", help="WAV file of what the caller heard")
    demo.add_argument("--audio-format", choices=AUDIO_FORMATS, default=None)
    replay = sub.add_parser("replay", help="call a gateway as Twilio would, play scenarios, check expectations",
                            description="Play scenarios (or recorded calls) against a Media Stream gateway and check "
                                        "their expectations. Exit status: 0 all passed, 1 one failed, 2 usage error.")
    if chosen == "replay":
        from gateway.tooling.replay.command import add_arguments

        add_arguments(replay)
    bench = sub.add_parser("bench", help="measure the gateway's CPU per call-second under concurrent calls",
                           description="Run the gateway and the embedded model in their own processes, call the "
                                       "gateway from N replay phones talking in a loop, and print each process's "
                                       "CPU per call-second over the steady window (all calls up).")
    bench.add_argument("--calls", type=int, default=50, help="concurrent calls (default 50)")
    bench.add_argument("--seconds", type=float, default=20.0, help="the measured window, all calls up (default 20)")
    bench.add_argument("--audio-format", choices=AUDIO_FORMATS, default="pcm16", help="the gateway's AUDIO_FORMAT")
    bench.add_argument("--ramp", type=float, default=5.0, help="start the calls evenly over this many seconds (default 5)")
    bench.add_argument("--json", action="store_true", help="print the figures as JSON")
    bench.add_argument("--steps", default="", help="compare with a null relay at these concurrent calls, e.g. 25,50,100")
    bench.add_argument("--targets", default="relay,pcmu,pcm16", help="with --steps: what to run (default relay,pcmu,pcm16)")
    bench.add_argument("--tls", action="store_true", help="with --steps: the model socket over TLS (a self-signed wss://)")
    bench.add_argument("--repeat", type=int, default=1,
                       help="with --steps: rounds per step, the targets in turn; ratios per round, medians (default 1)")
    bench.add_argument("--out", default="", help="with --steps: write bench.json and bench.png into this folder")
    bench.add_argument("--gateway-path", default="", help=argparse.SUPPRESS)  # another checkout's gateway: before/after
    bench.add_argument("--micro", action="store_true", help="micro-benchmarks of the hot path (us per operation)")
    fuzz = sub.add_parser("fuzz", help="hostile Twilio-side frames against a gateway process, beside real calls",
                          description="Start the gateway in its own process (127.0.0.1, embedded model), storm it with "
                                      "malformed, hostile and oversized frames while real calls run, and check that the "
                                      "calls before, during and after are answered and the process and its memory "
                                      "hold. Exit status: 0 all checks pass, 1 one failed, 2 bad options.")
    if chosen == "fuzz":
        from gateway.tooling.fuzz import add_arguments as add_fuzz_arguments

        add_fuzz_arguments(fuzz)
    soak = sub.add_parser("soak", help="many calls for minutes through a gateway process: does anything grow or leak?",
                          description="Keep N replay phones calling a gateway process (barge-ins, model session "
                                      "rollovers) for M minutes; check memory, descriptors and tasks. Exit 0 or 1.")
    if chosen == "soak":
        from gateway.tooling.soak import add_arguments as add_soak_arguments

        add_soak_arguments(soak)
    args = parser.parse_args(argv)
    if args.command in ("doctor", "call"):
        # Neither runs a gateway here: doctor reads the settings itself (a bad one is what it reports), and call
        # talks to a gateway elsewhere. Only errors are logged, so the report is all there is on the screen.
        _configure_logging("error")
        return (doctor_command if args.command == "doctor" else call_command)(args)
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level, settings)
    handlers = {"serve": _serve, "local-realtime": _local_realtime, "demo": _demo, "replay": _replay,
                "bench": _bench, "fuzz": _fuzz, "soak": _soak}
    return handlers[args.command](args, settings)


if __name__ == "__main__":
    sys.exit(main())
