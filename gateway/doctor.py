"""``gateway doctor``: check a configuration before the first real call, and say what is wrong in plain words.

It reads the settings as ``gateway serve`` would (the environment, then ``.env``) and runs these checks, each
ending PASS, FAIL or SKIP (not configured, or it depends on a check that failed) with the reason and, for a
failure, the fix:

* ``settings``: every variable parses (``gateway.config``).
* ``public-url``: ``PUBLIC_URL`` is an https origin Twilio can reach (no path), and the URLs Twilio will be given
  follow from it: the voice webhook, the media stream (wss), the outbound answer URL and the status callback.
* ``reach``: something answers at ``PUBLIC_URL`` and it is a gateway (``GET /healthz``), and WebSocket upgrades get
  through to it (the proxy or tunnel passes them). Needs the gateway running; ``--skip reach`` before it is.
* ``signatures``: ``TWILIO_AUTH_TOKEN`` is set and ``INSECURE_DEV_MODE`` is off.
* ``tools``: the agent's tools load (``TOOLS_MODULE``).
* ``model``: the model endpoint takes the key and answers a ``session.update`` with the configured model, voice,
  audio format and tools with ``session.updated``: a real WebSocket (the URL and headers calls use,
  :meth:`Settings.model_connect_url` and :meth:`Settings.model_headers`), no audio sent, so nothing is billed.
* ``twilio-account``: Twilio accepts ``TWILIO_ACCOUNT_SID`` with ``TWILIO_AUTH_TOKEN`` and the account is active.
* ``caller-ids``: every number of ``TWILIO_FROM_NUMBER`` is the account's own or a verified caller ID.
* ``webhook``: a number of the account sends its incoming calls to ``PUBLIC_URL/incoming-call``.
* ``redis``, ``store``: ``REDIS_URL`` and ``STORE_URL`` (SQLite, PostgreSQL) can be used, when set.

Exit status: 0 when no check failed, 1 otherwise. Every check is bounded by ``--timeout`` seconds (each network
wait within it, the whole check within a second more): one that stalls or breaks FAILs with the reason and a fix,
never a traceback or a hang.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import secrets
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import connect

from gateway.api.routes import ANSWER_PATH, CALL_STATUS_PATH
from gateway.config import ConfigError, Settings, redact_url
from gateway.twilio.twiml import INCOMING_CALL_PATH, stream_url

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
CHECKS = ("settings", "public-url", "reach", "signatures", "tools", "model", "twilio-account", "caller-ids",
          "webhook", "redis", "store")
DEFAULT_TIMEOUT_S = 5.0
KEY_VARIABLES = "OPENAI_API_KEY (or REALTIME_API_KEY / AZURE_OPENAI_API_KEY)"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # PASS, FAIL or SKIP
    reason: str
    fix: str = ""


def _pass(name: str, reason: str) -> Check:
    return Check(name, PASS, reason)


def _fail(name: str, reason: str, fix: str) -> Check:
    return Check(name, FAIL, reason, fix)


def _skip(name: str, reason: str, fix: str = "") -> Check:
    return Check(name, SKIP, reason, fix)


# ---------------------------------------------------------------------------------------------- local checks


def check_public_url(settings: Settings) -> Check:
    name = "public-url"
    url = settings.public_url
    if not url:
        if settings.trusted_proxy_ips:
            return _skip(name, "PUBLIC_URL is not set: signatures are checked against the X-Forwarded-Proto/Host "
                               "of TRUSTED_PROXY_IPS, which doctor cannot see (outbound calls need PUBLIC_URL)",
                         "set PUBLIC_URL=https://YOUR_HOST to have it checked here")
        return _fail(name, "PUBLIC_URL is not set: Twilio's signatures are checked against it, and the media-stream "
                           "URL in the TwiML is built from it",
                     "set PUBLIC_URL to the https address Twilio reaches this gateway at, e.g. "
                     "PUBLIC_URL=https://voice.example.com (no path)")
    parts = urlsplit(url)
    if parts.scheme != "https":
        return _fail(name, f"PUBLIC_URL is {url}: Twilio opens media streams only over wss:// (error 31922), so "
                           "the gateway must be reached over https",
                     "serve the gateway behind TLS (a tunnel such as ngrok or cloudflared, or a load balancer with "
                     "a certificate) and set PUBLIC_URL=https://THAT_HOST")
    if parts.path.strip("/") or parts.query or parts.fragment:
        return _fail(name, f"PUBLIC_URL has a path or query ({url}): signatures are checked against PUBLIC_URL "
                           "plus the path the gateway itself sees, so a prefix the proxy strips breaks every one",
                     f"set PUBLIC_URL={parts.scheme}://{parts.netloc} and route the whole host to the gateway")
    host = parts.hostname or ""
    if host == "localhost" or _is_private_address(host):
        return _fail(name, f"PUBLIC_URL points at {host}, which Twilio cannot reach from the internet",
                     "expose the gateway with a tunnel or a public load balancer and set PUBLIC_URL to that address")
    return _pass(name, "Twilio will be told: " + ", ".join(
        f"{what} {where}" for what, where in twilio_urls(settings).items()))


def twilio_urls(settings: Settings) -> dict[str, str]:
    """The URLs the gateway gives Twilio, from PUBLIC_URL (what to type in the console, what the TwiML holds)."""
    base = settings.public_url
    return {
        "voice webhook": f"{base}{INCOMING_CALL_PATH} (POST)",
        "media stream": f"{stream_url(base)}/<per-call credential>",
        "outbound answer URL": f"{base}{ANSWER_PATH}",
        "status callback": f"{base}{CALL_STATUS_PATH}",
    }


def _is_private_address(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_private or address.is_loopback or address.is_link_local


def check_signatures(settings: Settings) -> Check:
    name = "signatures"
    if not settings.twilio_auth_token:
        return _fail(name, "TWILIO_AUTH_TOKEN is not set: webhooks and media streams are not signature-checked, so "
                           "anyone who finds this host can open model sessions billed to your key",
                     "set TWILIO_AUTH_TOKEN (Twilio console > Account info > Auth Token)")
    if settings.insecure_dev_mode:
        return _fail(name, "INSECURE_DEV_MODE is on: the gateway starts even when it cannot check signatures",
                     "unset INSECURE_DEV_MODE (and do not pass --insecure-dev) outside development")
    verified = "" if settings.twilio_account_sid else (" (set TWILIO_ACCOUNT_SID too and doctor checks the token "
                                                       "with Twilio)")
    return _pass(name, "TWILIO_AUTH_TOKEN is set: every webhook and stream upgrade must carry Twilio's signature"
                       + verified)


def check_tools_module(settings: Settings) -> Check | None:
    """A failed check when ``TOOLS_MODULE`` cannot be imported as ``gateway serve`` imports it (the import path, then
    the working directory), saying why and the fix; None when it loads or is unset."""
    from gateway.tools.registry import tools_module_problem

    problem = tools_module_problem(settings.tools_module)
    return None if problem is None else _fail("tools", problem.reason, problem.fix)


def check_tools(settings: Settings) -> tuple[Check, Any]:
    """The check, and the tool registry calls would use (None when it cannot be built)."""
    from gateway.server.app import build_tool_registry
    from gateway.twilio.rest import TwilioRest

    module_failed = check_tools_module(settings)
    if module_failed is not None:
        return module_failed, None
    rest = TwilioRest.from_settings(settings)
    try:
        registry = build_tool_registry(settings, can_transfer=rest.configured)
    except Exception as error:  # noqa: BLE001 - an import error, a bad signature: anything the user's module raises
        return _fail("tools", f"TOOLS_MODULE={settings.tools_module} cannot be loaded: {type(error).__name__}: "
                              f"{error}", "fix the module, or make it importable from where the gateway runs "
                                          "(PYTHONPATH)"), None
    finally:
        rest.close()
    return _pass("tools", "the agent's tools: " + ", ".join(t["name"] for t in registry.definitions())), registry


# ---------------------------------------------------------------------------------------------- network checks


def _tls_fix(what: str) -> str:
    return (f"{what} must present a certificate from a public authority, valid for its host name; behind a proxy "
            "that re-signs TLS, point SSL_CERT_FILE at its certificate authority")


async def check_reach(settings: Settings, timeout_s: float) -> Check:
    name = "reach"
    if not settings.public_url:
        return _skip(name, "PUBLIC_URL is not set")
    health = f"{settings.public_url}/healthz"
    try:
        status, body = await asyncio.to_thread(_http_get, health, timeout_s)
    except ssl.SSLError as error:
        return _fail(name, f"TLS failed at {health}: {error}", _tls_fix("The host"))
    except OSError as error:  # refused, DNS, timeout; urllib wraps them in URLError (an OSError)
        reason = getattr(error, "reason", error)
        if isinstance(reason, ssl.SSLError):
            return _fail(name, f"TLS failed at {health}: {reason}", _tls_fix("The host"))
        return _fail(name, f"nothing answers at {health}: {reason}",
                     "start the gateway (`gateway serve`) and the tunnel or load balancer in front of it; before it "
                     "runs, use `gateway doctor --skip reach`")
    if status in (502, 503, 504):
        return _fail(name, f"{health} answered {status}: the proxy or tunnel is up but cannot reach the gateway",
                     "start `gateway serve` on the host and port the tunnel or proxy forwards to")
    try:
        health_body = json.loads(body)
        ok = status == 200 and isinstance(health_body, dict) and health_body.get("status") == "ok"
    except ValueError:
        ok = False
    if not ok:
        return _fail(name, f"{health} answered {status}, not the gateway's health report: PUBLIC_URL names "
                           "another server, or the proxy sends this path elsewhere",
                     "point PUBLIC_URL (and the tunnel or proxy) at the gateway, every path of the host")
    upgrade = stream_url(settings.public_url)
    try:
        async with connect(upgrade, open_timeout=timeout_s, close_timeout=1):
            pass  # the gateway refuses an upgrade without a credential (close 1008): the upgrade itself got through
    except websockets.exceptions.InvalidStatus as error:
        return _fail(name, f"the WebSocket upgrade to {upgrade} was answered with HTTP "
                           f"{error.response.status_code}: the proxy or tunnel does not pass WebSocket upgrades",
                     "let the proxy forward the Upgrade and Connection headers (nginx: proxy_http_version 1.1; "
                     "proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\")")
    except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as error:
        return _fail(name, f"the WebSocket upgrade to {upgrade} failed: {describe(error)}",
                     "let the proxy or tunnel pass WebSocket upgrades to the gateway, keeping the path")
    signatures = "on" if health_body.get("signatures") else "off"
    return _pass(name, f"a gateway answers at {settings.public_url} (model {health_body.get('model')}, signatures "
                       f"{signatures}, {health_body.get('active_calls')} call(s) in progress) and WebSocket upgrades "
                       "reach it")


def _http_get(url: str, timeout_s: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"User-Agent": "gateway-doctor"})  # noqa: S310 - see below
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - https or http, by design
            return response.status, response.read(65536)
    except urllib.error.HTTPError as error:
        return error.code, error.read(65536)


_MODEL_STATUS_REASONS = {
    401: ("the model endpoint refused the key (HTTP 401)",
          f"check {KEY_VARIABLES}; for Azure, the resource's key and REALTIME_API_KEY_HEADER=api-key"),
    403: ("the key was accepted but has no access to the Realtime API (HTTP 403)",
          "use a key of a project allowed to use Realtime models (OpenAI dashboard > project > limits: model "
          "access), or ask the organisation's owner"),
    404: ("nothing at that URL (HTTP 404): a wrong REALTIME_URL, or an Azure deployment that does not exist",
          "REALTIME_URL=wss://api.openai.com/v1/realtime for OpenAI; for Azure, "
          "wss://RESOURCE.openai.azure.com/openai/v1/realtime and REALTIME_MODEL=DEPLOYMENT_NAME"),
    429: ("the model endpoint is rate limiting this key, or its quota is used up (HTTP 429)",
          "check the account's usage limits and billing, then try again"),
}
_MODEL_ERROR_FIXES = {
    "invalid_api_key": f"check {KEY_VARIABLES}: copy the key again, without spaces",
    "model_not_found": "set REALTIME_MODEL to a Realtime model your key may use (e.g. gpt-realtime), or for Azure "
                       "to the deployment's name",
    "invalid_value": "check VOICE and AUDIO_FORMAT (and TRANSCRIPTION_MODEL): the message says which value",
}


async def check_model(settings: Settings, session_update: dict[str, Any] | None, timeout_s: float) -> Check:
    name = "model"
    if settings.uses_embedded_model:
        return _skip(name, "no API key: calls go to the embedded echo agent, not a real model",
                     f"set {KEY_VARIABLES} for a real model")
    if session_update is None:
        return _skip(name, "the tools do not load, so the session cannot be configured")
    url = redact_url(settings.model_connect_url())
    try:
        async with asyncio.timeout(timeout_s):
            async with connect(settings.model_connect_url(), additional_headers=settings.model_headers(),
                               compression=None, open_timeout=timeout_s, close_timeout=1,
                               max_size=16 * 1024 * 1024) as model:
                with contextlib.suppress(websockets.exceptions.ConnectionClosed):  # what it said is read below
                    await model.send(json.dumps(session_update))
                return await _session_answer(model, settings, url)
    except websockets.exceptions.InvalidStatus as error:
        status = error.response.status_code
        reason, fix = _MODEL_STATUS_REASONS.get(
            status, (f"the model endpoint answered HTTP {status} instead of opening the WebSocket",
                     "check REALTIME_URL and the service's status page, then try again"))
        return _fail(name, f"{reason}: {url}", fix)
    except TimeoutError:
        return _fail(name, f"no session.updated from {url} within {timeout_s:g} s",
                     "check REALTIME_URL and that this machine can reach it (a firewall, an HTTPS proxy)")
    except ssl.SSLError as error:
        return _fail(name, f"TLS failed with {url}: {error}", _tls_fix("The model endpoint"))
    except (OSError, websockets.exceptions.WebSocketException) as error:
        return _fail(name, f"cannot open {url}: {describe(error)}",
                     "check REALTIME_URL (host name, port) and this machine's network")


async def _session_answer(model: Any, settings: Settings, url: str) -> Check:
    """Read until the model accepts the session.update, refuses it, or closes."""
    from gateway.realtime import events as rt

    while True:
        try:
            frame = await model.recv()
        except websockets.exceptions.ConnectionClosed:
            break
        try:
            event = rt.parse_model_event(frame)
        except rt.ModelEventError:
            continue
        if isinstance(event, rt.SessionUpdated):
            return _pass("model", f"{url} took the key and the session: model {settings.realtime_model}, voice "
                                  f"{settings.voice}, audio {settings.audio_format} (no audio sent)")
        if isinstance(event, rt.ModelError):
            fix = _MODEL_ERROR_FIXES.get(event.code, "the message above says what the service did not accept")
            return _fail("model", f"{url} refused: {event.code or event.error_type}: {event.message}", fix)
    return _fail("model", f"{url} closed the session ({model.close_code} {model.close_reason}) before accepting "
                          "the session.update", f"check {KEY_VARIABLES} and REALTIME_MODEL")


async def check_twilio_account(settings: Settings, rest: Any) -> Check:
    name = "twilio-account"
    from gateway.twilio.rest import TwilioError

    if not settings.twilio_account_sid:
        needs = [variable for variable, value in (("API_KEYS", settings.api_keys),
                                                  ("TWILIO_FROM_NUMBER", settings.twilio_caller_ids),
                                                  ("TRANSFER_NUMBER", settings.transfer_number)) if value]
        if needs:
            return _fail(name, f"{', '.join(needs)} set but TWILIO_ACCOUNT_SID is not: outbound calls, hang-up and "
                               "transfer use Twilio's REST API", "set TWILIO_ACCOUNT_SID (Twilio console > Account "
                                                                 "info > Account SID)")
        return _skip(name, "TWILIO_ACCOUNT_SID is not set: inbound calls work without it; outbound calls, hang-up "
                           "and transfer need it")
    if not rest.configured:
        return _fail(name, "TWILIO_ACCOUNT_SID is set but TWILIO_AUTH_TOKEN is not",
                     "set TWILIO_AUTH_TOKEN (Twilio console > Account info > Auth Token)")
    try:
        account = await rest.account()
    except TwilioError as error:
        if error.status == 401:
            return _fail(name, f"Twilio refused TWILIO_ACCOUNT_SID {settings.twilio_account_sid} with this "
                               f"TWILIO_AUTH_TOKEN ({error.code}: {error.message})",
                         "copy both from the Twilio console (Account info); after a token rotation only the new "
                         "primary token works")
        if error.status == 0:
            return _fail(name, f"Twilio's REST API cannot be reached: {error.message}",
                         f"check this machine's network (and TWILIO_API_BASE_URL={settings.twilio_api_base_url})")
        return _fail(name, f"Twilio answered {error.status} ({error.code}: {error.message})",
                     "check TWILIO_ACCOUNT_SID in the Twilio console (Account info)")
    if account.status != "active":
        return _fail(name, f"the Twilio account is {account.status or 'not active'}",
                     "reactivate it in the Twilio console (Billing), or use an active account")
    trial = (" (a trial account: it calls only verified numbers, and callers hear a trial message first)"
             if account.type == "Trial" else "")
    return _pass(name, f"Twilio accepts the account SID and auth token; the account is active{trial}")


async def check_caller_ids(settings: Settings, rest: Any, numbers: list[Any]) -> Check:
    name = "caller-ids"
    from gateway.twilio.rest import TwilioError

    if not settings.twilio_caller_ids:
        return _skip(name, "TWILIO_FROM_NUMBER is not set: outbound calls must name their caller ID")
    own = {number.phone_number for number in numbers}
    missing = [number for number in settings.twilio_caller_ids if number not in own]
    if missing:
        try:
            verified = set(await rest.verified_caller_ids())
        except TwilioError as error:
            return _fail(name, f"Twilio's caller IDs cannot be listed ({error.status}: {error.message})",
                         "check the account's permissions")
        missing = [number for number in missing if number not in verified]
    if missing:
        return _fail(name, f"{', '.join(missing)} in TWILIO_FROM_NUMBER is neither a number of this account nor a "
                           "verified caller ID: Twilio would refuse it as From (error 21210)",
                     "buy or port the number (Phone Numbers > Buy a number), verify it as a caller ID, or fix "
                     "TWILIO_FROM_NUMBER")
    return _pass(name, f"{', '.join(settings.twilio_caller_ids)} may be used as caller ID")


def check_webhook(settings: Settings, numbers: list[Any]) -> Check:
    name = "webhook"
    if not settings.public_url:
        return _skip(name, "PUBLIC_URL is not set")
    expected = f"{settings.public_url}{INCOMING_CALL_PATH}"
    if not numbers:
        return _fail(name, "the Twilio account has no phone number, so nobody can call the gateway",
                     "buy one (Twilio console > Phone Numbers > Buy a number)")
    matching = [n.phone_number for n in numbers if n.voice_url.rstrip("/") == expected]
    if matching:
        return _pass(name, f"calls to {', '.join(matching)} come to {expected}")
    host = urlsplit(settings.public_url).netloc
    near = [n for n in numbers if urlsplit(n.voice_url).netloc == host]
    shown = near or numbers[:5]
    return _fail(name, f"no number of the account sends its calls to {expected}: "
                       + "; ".join(f"{n.phone_number} -> {n.voice_url or '(no voice URL)'}" for n in shown),
                 f"Twilio console > Phone Numbers > Active numbers > your number > Voice configuration: "
                 f"'A call comes in' = Webhook, {expected}, HTTP POST; save")


async def check_redis(settings: Settings, timeout_s: float = DEFAULT_TIMEOUT_S) -> Check:
    name = "redis"
    if not settings.redis_url:
        return _skip(name, "REDIS_URL is not set: the rate limit and stream claims are kept in this process (one "
                           "instance only)")
    from gateway.extras import MissingExtra, require
    from gateway.state import StateUnavailable, open_state

    try:
        require("redis", "REDIS_URL")
    except MissingExtra as error:
        return _fail(name, str(error), f"pip install 'gateway[{error.extra}]', or unset REDIS_URL")

    fix = ("start Redis or fix REDIS_URL (redis://[:password@]host:6379/0, rediss:// for TLS): while Redis is down "
           "the gateway refuses media streams and outbound calls")
    where = redact_url(settings.redis_url)
    state = open_state(settings.redis_url)
    try:
        # The gateway's own operation: a stream credential claim (SET NX PX), on a key nothing else uses.
        async with asyncio.timeout(timeout_s):
            await state.claim_once(f"doctor:{secrets.token_hex(8)}", 1.0)
    except TimeoutError:
        return _fail(name, f"no answer from Redis at {where} within {timeout_s:g} s (a server that accepts the "
                           "connection but does not answer, or a firewall dropping packets)", fix)
    except StateUnavailable as error:
        return _fail(name, f"Redis at {where} cannot be used: {describe(error)}", fix)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(state.aclose(), 2.0)
    return _pass(name, f"Redis at {where} answers")


_STORE_FIX = ("check STORE_URL (postgresql://user:password@host:5432/db), that the server runs and that the user "
              "may create tables")


def _postgres_problem(error: Exception, host: str) -> tuple[str, str]:
    """What a failed PostgreSQL connect means, and its fix, from the driver's message."""
    text = describe(error)
    lowered = text.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return text, "check the user name and password in STORE_URL (postgresql://USER:PASSWORD@host:5432/db)"
    if "database" in lowered and "does not exist" in lowered:
        return text, "create the database (createdb NAME, or CREATE DATABASE) or fix its name at the end of STORE_URL"
    if "connection refused" in lowered:
        return (f"nothing accepts connections at {host}: {text}",
                "start PostgreSQL there, or fix the host and port in STORE_URL")
    if "timeout" in lowered:
        return (f"no answer from {host}: {text}",
                "check the host and port in STORE_URL, and that no firewall drops this machine's packets")
    return text, _STORE_FIX


async def _postgres_connects(url: str, timeout_s: float) -> tuple[str, str] | None:
    """None when a plain connection opens within ``timeout_s``; else what went wrong and its fix."""
    import psycopg

    parts = urlsplit(url)
    host = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    try:
        async with asyncio.timeout(timeout_s):
            connection = await psycopg.AsyncConnection.connect(url, connect_timeout=max(1, round(timeout_s)))
            await connection.close()
    except TimeoutError:
        return (f"no answer from {host} within {timeout_s:g} s (a firewall dropping packets, a wrong host, or a "
                "server too busy to accept)", "check the host and port in STORE_URL and that this machine can "
                                             "reach them")
    except Exception as error:  # noqa: BLE001 - psycopg.OperationalError and friends: the message says which
        return _postgres_problem(error, host)
    return None


async def check_store(settings: Settings, timeout_s: float) -> Check:
    name = "store"
    scheme = urlsplit(settings.store_url).scheme
    if scheme in ("", "memory"):
        return _skip(name, "STORE_URL is memory://: call records live in this process only")
    from gateway.store import StoreOpenError, open_store

    where = redact_url(settings.store_url)
    if scheme in ("postgresql", "postgres"):
        from gateway.extras import MissingExtra, require

        try:
            require("postgres", f"STORE_URL={scheme}://...")
        except MissingExtra as error:
            return _fail(name, str(error), f"pip install 'gateway[{error.extra}]'")
        problem = await _postgres_connects(settings.store_url, timeout_s)
        if problem is not None:
            return _fail(name, f"the call store at {where} cannot be used: {problem[0]}", problem[1])
    try:
        store = open_store(settings.store_url)
    except StoreOpenError as error:  # the file, why and the fix, as `gateway serve` says them
        return _fail(name, error.reason, error.fix)
    except Exception as error:  # noqa: BLE001 - a SQLite file that cannot be created or opened
        return _fail(name, f"the call store at {where} cannot be opened: {describe(error)}",
                     "make the file's directory writable by the gateway's user, or point STORE_URL elsewhere")
    try:
        # A look-up the gateway makes on every status callback; the first one creates the tables if absent.
        async with asyncio.timeout(timeout_s):
            await store.get_call("CA" + "0" * 32)
    except TimeoutError:
        return _fail(name, f"the call store at {where} did not answer within {timeout_s:g} s", _STORE_FIX)
    except Exception as error:  # noqa: BLE001 - a driver's connection, authentication or permission error
        return _fail(name, f"the call store at {where} cannot be used: {describe(error)}", _STORE_FIX)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(store.close(), 2.0)
    return _pass(name, f"the call store at {where} answers")


# ---------------------------------------------------------------------------------------------- running them


async def run_checks(env: Mapping[str, str] | None = None, *, skip: tuple[str, ...] = (),
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Check]:
    """Every check, in order. ``env``: the variables to read (default: the environment and ``.env``)."""
    try:
        settings = Settings.from_env(env, dotenv=env is None)
    except ConfigError as error:
        return [_fail("settings", str(error), "fix the variable named above"),
                *(_skip(name, "the settings do not parse") for name in CHECKS[1:])]
    model = "the embedded echo agent" if settings.uses_embedded_model else (
        f"model {settings.realtime_model} at {redact_url(settings.realtime_url)}")
    results = [_pass("settings", f"the settings parse: {model}, voice {settings.voice}, audio {settings.audio_format}")]

    async def run(name: str, check: Callable[[], Awaitable[Check] | Check]) -> Check:
        result = _skip(name, "left out (--skip)") if name in skip else await bounded(name, check, timeout_s)
        results.append(result)
        return result

    from gateway.media_stream import call_config
    from gateway.tools.registry import ToolRegistry
    from gateway.twilio.rest import TwilioError, TwilioRest

    await run("public-url", lambda: check_public_url(settings))
    await run("reach", lambda: check_reach(settings, timeout_s))
    await run("signatures", lambda: check_signatures(settings))
    registry: ToolRegistry | None = ToolRegistry([])

    def tools() -> Check:
        nonlocal registry
        check, registry = check_tools(settings)
        return check

    await run("tools", tools)
    session_update = call_config(settings, registry).session_update if registry is not None else None
    await run("model", lambda: check_model(settings, session_update, timeout_s))

    # Each request within the timeout: a request runs in a thread that a cancelled check cannot stop, and the
    # process would wait for it at exit.
    rest = TwilioRest.from_settings(settings, timeout=timeout_s)
    try:
        account = await run("twilio-account", lambda: check_twilio_account(settings, rest))
        numbers: list[Any] = []
        instead: Check | None = None  # what the checks of the account's numbers report when they cannot run
        if account.status != PASS:
            instead = _skip("", "needs the Twilio account, which " + (
                "failed its check" if account.status == FAIL else "is not configured or was left out"))
        else:
            try:
                numbers = await rest.phone_numbers()
            except TwilioError as error:
                instead = _fail("", f"the account's phone numbers cannot be listed ({error.status}: "
                                    f"{error.message})", "check the account's permissions")
        for name, check in (("caller-ids", lambda: check_caller_ids(settings, rest, numbers)),
                            ("webhook", lambda: check_webhook(settings, numbers))):
            await run(name, partial(replace, instead, name=name) if instead else check)
    finally:
        rest.close()
    await run("redis", lambda: check_redis(settings, timeout_s))
    await run("store", lambda: check_store(settings, timeout_s))
    return results


def describe(error: BaseException) -> str:
    """An exception in one line: its type and message (some, such as a bare TimeoutError, have none)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# What to look at when a check stalls past its bound or breaks in a way it does not know.
_CHECK_FIXES = {
    "reach": "check that PUBLIC_URL's host resolves and answers from this machine",
    "model": "check REALTIME_URL and that this machine can reach it (a firewall, an HTTPS proxy)",
    "twilio-account": "check this machine's network and TWILIO_API_BASE_URL",
    "caller-ids": "check this machine's network and TWILIO_API_BASE_URL",
    "redis": "check REDIS_URL and that Redis runs and answers there",
    "store": _STORE_FIX,
}
_BOUND_MARGIN_S = 1.0  # a check bounds its own waits by the timeout; this one catches what it does not


async def bounded(name: str, check: Callable[[], Awaitable[Check] | Check], timeout_s: float) -> Check:
    """Run one check within ``timeout_s`` (plus a margin): never a hang, never a traceback, always a fix."""
    limit = timeout_s + _BOUND_MARGIN_S
    fix = _CHECK_FIXES.get(name, "run gateway doctor again; if it persists, report it with this line")
    try:
        async with asyncio.timeout(limit):
            outcome = check()
            return await outcome if isinstance(outcome, Awaitable) else outcome
    except TimeoutError:
        return _fail(name, f"no answer within {limit:g} s", fix)
    except Exception as error:  # noqa: BLE001 - a check must report, never crash the others
        return _fail(name, f"the check failed: {describe(error)}", fix)


def format_report(results: list[Check]) -> str:
    width = max(len(check.name) for check in results)
    lines = []
    for check in results:
        lines.append(f"{check.status}  {check.name:<{width}}  {check.reason}")
        if check.status != PASS and check.fix:
            lines.append(f"{'':6}{'':<{width}}  fix: {check.fix}")
    counts = {status: sum(1 for check in results if check.status == status) for status in (PASS, FAIL, SKIP)}
    verdict = "ready for a call" if not counts[FAIL] else "not ready: fix what FAILs, then run gateway doctor again"
    lines.append(f"result: {counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped: {verdict}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip", action="append", default=[], choices=CHECKS[1:], metavar="CHECK",
                        help=f"leave a check out (repeatable): {', '.join(CHECKS[1:])}; e.g. --skip reach before "
                             "the gateway runs")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds each network check may take (default {DEFAULT_TIMEOUT_S:g})")


def command(args: argparse.Namespace) -> int:
    results = asyncio.run(run_checks(skip=tuple(args.skip), timeout_s=args.timeout))
    print(format_report(results))
    sys.stdout.flush()
    return 1 if any(check.status == FAIL for check in results) else 0
