"""``gateway call +1...``: place an outbound call through a running gateway's HTTP API and follow it to its end.

It sends the request ``curl`` would (README, "Outbound calls and the HTTP API")::

    POST {gateway}/calls   Authorization: Bearer {key}   Content-Type: application/json
    {"to": "+14155550123", "from": ..., "instructions": ..., "voice": ..., "greeting": ..., "metadata": {...},
     "machine_detection": ...}

then reads ``GET {gateway}/calls/{sid}`` every ``--poll-interval`` seconds and prints each change of status
(queued, initiated, ringing, in-progress, then completed, busy, no-answer, failed or canceled) until the call has
ended. Ctrl-C hangs the call up (``POST /calls/{sid}/hangup``). Exit status: 0 when the call was answered and
completed, 1 when it was refused or ended otherwise, 2 for bad options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from gateway.store import FINAL_STATUSES, MACHINE_DETECTION_CHOICES

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
REQUEST_TIMEOUT_S = 15.0


class ApiFailure(Exception):
    """The gateway answered with an error (``{"error": {"code", "message"}}``) or could not be reached."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code


class GatewayClient:
    """The gateway's HTTP API, as ``curl`` would call it: bearer key, JSON in and out."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._key}", "Accept": "application/json",
                   "User-Agent": "gateway-call"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        # The URL is the operator's own (--gateway or GATEWAY_URL), as on their command line.
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            raise _api_failure(error.code, error.read(65536)) from None
        except (OSError, ValueError) as error:  # refused, DNS, timeout, TLS; a body that is not JSON
            raise ApiFailure(0, "unreachable", f"{self.base_url}: {getattr(error, 'reason', error)}") from None

    def place_call(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/calls", body)

    def get_call(self, call_sid: str) -> dict[str, Any]:
        return self.request("GET", f"/calls/{call_sid}")

    def hang_up(self, call_sid: str) -> dict[str, Any]:
        return self.request("POST", f"/calls/{call_sid}/hangup")


def _api_failure(status: int, body: bytes) -> ApiFailure:
    try:
        error = json.loads(body)["error"]
        return ApiFailure(status, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return ApiFailure(status, "http_error", body.decode("utf-8", "replace")[:200] or f"HTTP {status}")


def call_request(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON body of ``POST /calls`` from the command line (absent options are left to the gateway's defaults)."""
    body: dict[str, Any] = {"to": args.to}
    for field, value in (("from", args.from_), ("instructions", args.instructions), ("voice", args.voice),
                         ("greeting", args.greeting), ("machine_detection", args.machine_detection)):
        if value is not None:
            body[field] = value
    if args.metadata:
        body["metadata"] = dict(item.split("=", 1) for item in args.metadata)
    return body


def _describe(call: dict[str, Any]) -> str:
    status = str(call.get("status", "?"))
    details = []
    if call.get("answered_by"):
        details.append(f"answered by {call['answered_by']}")
    if call.get("machine_action"):
        details.append(f"machine: {call['machine_action']}")
    if status in FINAL_STATUSES and call.get("duration") is not None:
        details.append(f"{call['duration']} s")
    return status + (f" ({', '.join(details)})" if details else "")


def follow(client: GatewayClient, call_sid: str, *, poll_interval_s: float, out: Callable[[str], None],
           clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> str:
    """Print each new status of the call until it has ended; returns the final status."""
    started, shown = clock(), ""
    while True:
        call = client.get_call(call_sid)
        line = _describe(call)
        if line != shown:
            out(f"{clock() - started:7.1f} s  {line}")
            shown = line
        if call.get("status") in FINAL_STATUSES:
            return str(call["status"])
        sleep(poll_interval_s)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("to", help="the number to call, E.164 (+14155550123)")
    parser.add_argument("--gateway", default=None,
                        help=f"the gateway's base URL (default: GATEWAY_URL, else {DEFAULT_GATEWAY})")
    parser.add_argument("--api-key", default=None, help="one of the gateway's API_KEYS (default: GATEWAY_API_KEY)")
    parser.add_argument("--from", dest="from_", default=None,
                        help="caller ID, one of the gateway's TWILIO_FROM_NUMBER (default: the first)")
    parser.add_argument("--instructions", default=None, help="the agent's instructions for this call")
    parser.add_argument("--voice", default=None, help="the agent's voice for this call")
    parser.add_argument("--greeting", default=None, help="what the agent says first, once the call is answered")
    parser.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                        help="kept with the call record (repeatable)")
    parser.add_argument("--machine-detection", choices=MACHINE_DETECTION_CHOICES, default=None,
                        help="when a machine answers: none (the agent talks), hangup, voicemail")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between status reads (default 1)")
    parser.add_argument("--no-follow", action="store_true", help="print the CallSid and exit once the call is placed")


def command(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get("GATEWAY_API_KEY", "")
    if not api_key:
        print("gateway call: give --api-key or set GATEWAY_API_KEY (one of the gateway's API_KEYS)", file=sys.stderr)
        return 2
    if any("=" not in item for item in args.metadata) or args.poll_interval <= 0:
        print("gateway call: --metadata takes KEY=VALUE; --poll-interval must be positive", file=sys.stderr)
        return 2
    client = GatewayClient(args.gateway or os.environ.get("GATEWAY_URL") or DEFAULT_GATEWAY, api_key)
    try:
        placed = client.place_call(call_request(args))
    except ApiFailure as failure:
        print(f"gateway call: the call was not placed: {failure}", file=sys.stderr)
        return 1
    call_sid = str(placed.get("call_sid", ""))
    print(f"call {call_sid} to {args.to} placed through {client.base_url}", flush=True)
    if args.no_follow:
        return 0
    try:
        final = follow(client, call_sid, poll_interval_s=args.poll_interval, out=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("hanging up ...", flush=True)
        try:
            client.hang_up(call_sid)
        except ApiFailure as failure:
            print(f"gateway call: hang-up failed: {failure}", file=sys.stderr)
        return 1
    except ApiFailure as failure:
        print(f"gateway call: lost track of {call_sid}: {failure}", file=sys.stderr)
        return 1
    return 0 if final == "completed" else 1
