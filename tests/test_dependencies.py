"""Dependencies fenced (issue 18): uvicorn's private names checked at import, with a fallback to its plain protocol
that still serves calls; the extras (postgres, redis, otel, plots) imported only when configured, with a one-line
error naming the extra; the declared minimum versions pinned in constraints/minimum.txt; signals left to their
owner by the servers beside the process's own."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.server.direct_ws import missing_internals
from gateway.extras import MissingExtra, require
from gateway.tooling.replay import CallerTurn, load_sample, run_call
from gateway.server.runner import QuietServer, free_port, running_app

ROOT = Path(__file__).resolve().parent.parent

# Rename a private name throughout one of uvicorn's modules, as a uvicorn release might: the module is loaded from a
# rewritten copy of its file (so that reading its source, as the gateway's check does, sees the new name).
RENAME = textwrap.dedent("""
    import importlib.util, sys, tempfile
    def rename(module, old, new):
        spec = importlib.util.find_spec(module)
        source = open(spec.origin, encoding="utf-8").read()
        assert old in source, (module, old)
        path = tempfile.mkdtemp() + "/" + module.rsplit(".", 1)[1] + ".py"
        open(path, "w", encoding="utf-8").write(source.replace(old, new))
        copy = importlib.util.spec_from_file_location(module, path)
        sys.modules[module] = loaded = importlib.util.module_from_spec(copy)
        copy.loader.exec_module(loaded)
""")


def clean_env(**env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")}
    for name in ("OPENAI_API_KEY", "REALTIME_API_KEY", "AZURE_OPENAI_API_KEY", "TWILIO_AUTH_TOKEN", "PUBLIC_URL",
                 "REDIS_URL", "STORE_URL", "RECORD_CALLS_DIR", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "METRICS_PORT", "METRICS_API_KEY"):
        clean[name] = ""
    clean.update(LOG_LEVEL="info", PYTHONUNBUFFERED="1", **env)
    return clean


def gateway_command(prelude: str, *args: str) -> list[str]:
    """``gateway ARGS`` in a fresh interpreter that runs ``prelude`` first."""
    return [sys.executable, "-c", f"{prelude}\nimport sys\nfrom gateway.cli import main\n"
                                  f"sys.exit(main({list(args)!r}))"]


async def serve_one_call(prelude: str) -> tuple[str, str]:
    """``gateway serve`` after ``prelude``; one call with a turn through it; (its /metrics, its output)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(gateway_command(prelude, "serve", "--port", str(port)), env=clean_env(),
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            async with httpx.AsyncClient(base_url=url) as http:
                for _ in range(600):
                    assert process.poll() is None, "the gateway exited during start-up"
                    try:
                        if (await http.get("/healthz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.05)
                report = await run_call(url.replace("http", "ws") + "/media-stream",
                                        [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)],
                                        timeout_s=30, hangup_after_ms=500)
                assert report.turns and report.turns[0].response_ms is not None, "the agent never answered"
                assert report.violations == []
                metrics = (await http.get("/metrics")).text
        finally:
            process.terminate()
            process.wait(20)
        log.seek(0)
        return metrics, log.read().decode("utf-8", "replace")


def fallback_gauge(metrics: str, part: str) -> float:
    found = re.search(r'^gateway_uvicorn_fallback\{part="%s"\} (\S+)$' % part, metrics, re.MULTILINE)
    assert found, f"no gateway_uvicorn_fallback for {part}"
    return float(found.group(1))


@pytest.mark.parametrize(("module", "old", "name", "part"), [
    ("uvicorn.protocols.websockets.websockets_sansio_impl", "curr_msg_data_type", "curr_msg_data_type", "direct_ws"),
    ("uvicorn.protocols.http.h11_impl", "self.cycle", "cycle", "http"),
])
async def test_a_uvicorn_without_a_private_name_falls_back_to_its_plain_protocol_and_serves_a_call(
        module: str, old: str, name: str, part: str) -> None:
    """Without the fallback, each renamed name breaks the gateway's subclass: every media frame (direct_ws), every
    request (http)."""
    new = old.replace(name, "renamed_by_the_test")
    metrics, output = await serve_one_call(RENAME + f"rename({module!r}, {old!r}, {new!r})")
    assert fallback_gauge(metrics, part) == 1
    for other in {"direct_ws", "http", "server"} - {part}:
        assert fallback_gauge(metrics, other) == 0
    warnings = [line for line in output.splitlines() if "serving through uvicorn's plain protocol" in line]
    assert len(warnings) == 1 and name in warnings[0] and part in warnings[0], output


async def test_the_installed_uvicorn_has_every_private_name_the_gateway_uses() -> None:
    from gateway.server.runner import FALLBACKS

    assert FALLBACKS == {"direct_ws": [], "http": [], "server": []}


@pytest.mark.fast
def test_missing_internals_reads_the_methods_and_the_attributes_a_class_assigns() -> None:
    class Base:
        kept = 1

        def __init__(self) -> None:
            self.queue, self.frames = [], []
            self.close_sent: bool = False

        def handle_connect(self) -> None:
            pass

    assert missing_internals(Base, ("handle_connect",), ("queue", "frames", "close_sent", "kept")) == []
    assert missing_internals(Base, ("handle_connect", "gone"), ("queue", "curr_msg_data_type")) == [
        "gone", "curr_msg_data_type"]
    assert missing_internals(None, ("handle_connect",), ()) == ["(no class)"]


async def test_a_server_beside_the_process_leaves_its_signals_to_the_owner() -> None:
    """uvicorn >= 0.29 takes SIGINT/SIGTERM for a whole serve() (install_signal_handlers is gone): QuietServer
    keeps the process's handlers in place while it serves."""
    assert QuietServer.capture_signals is not None

    def owner(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, owner)
    try:
        app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])
        async with running_app(app) as url:
            async with httpx.AsyncClient() as http:
                assert (await http.get(url + "/")).text == "ok"
            assert signal.getsignal(signal.SIGTERM) is owner
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------------- extras

BLOCK = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None  # an import of it fails\n"


@pytest.mark.parametrize(("blocked", "env", "message"), [
    (["psycopg", "psycopg_pool"], {"STORE_URL": "postgresql://gateway@127.0.0.1:5432/gateway"},
     "STORE_URL=postgresql://... needs the postgres extra: pip install 'gateway[postgres]'"),
    (["redis"], {"REDIS_URL": "redis://127.0.0.1:6379/15"},
     "REDIS_URL needs the redis extra: pip install 'gateway[redis]'"),
    (["opentelemetry"], {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
     "OTEL_EXPORTER_OTLP_ENDPOINT needs the otel extra: pip install 'gateway[otel]'"),
])
def test_a_setting_whose_extra_is_not_installed_stops_serve_with_one_line_naming_it(
        blocked: list[str], env: dict[str, str], message: str) -> None:
    done = subprocess.run(gateway_command(BLOCK.format(names=blocked), "serve", "--port", str(free_port())),
                          env=clean_env(**env), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert message in output and "Traceback" not in output, output
    assert len([line for line in output.splitlines() if message in line]) == 1


@pytest.mark.fast
@pytest.mark.parametrize(("extra", "module"), [("postgres", "psycopg_pool"), ("redis", "redis"),
                                                ("otel", "opentelemetry.sdk.trace"), ("plots", "matplotlib")])
def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch, extra: str, module: str) -> None:
    assert require(extra, "X") is not None  # installed here (the test extra pulls all)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtra) as raised:
        require(extra, "SOME_SETTING")
    assert str(raised.value) == f"SOME_SETTING needs the {extra} extra: pip install 'gateway[{extra}]'"
    assert isinstance(raised.value, ImportError)  # callers that tolerate a missing optional library catch it


def test_the_store_and_the_shared_state_name_their_extra_when_used_without_it() -> None:
    code = BLOCK.format(names=["psycopg", "psycopg_pool", "redis"]) + textwrap.dedent("""
        from gateway.extras import MissingExtra
        from gateway.state import open_state
        from gateway.store import open_store
        for attempt in (lambda: open_store("postgres://u@127.0.0.1/db"), lambda: open_state("redis://127.0.0.1")):
            try:
                attempt()
            except MissingExtra as error:
                print(error)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.splitlines() == ["STORE_URL=postgres://... needs the postgres extra: pip install "
                                        "'gateway[postgres]'", "REDIS_URL needs the redis extra: pip install "
                                                              "'gateway[redis]'"], done.stderr


def test_the_demo_places_its_call_with_every_extra_absent(tmp_path: Path) -> None:
    """The base alone serves calls: gateway demo with psycopg, redis, OpenTelemetry and matplotlib unimportable."""
    blocked = ["psycopg", "psycopg_pool", "redis", "opentelemetry", "matplotlib"]
    done = subprocess.run(gateway_command(BLOCK.format(names=blocked), "demo", "--output", str(tmp_path / "h.wav")),
                          env=clean_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "h.wav").stat().st_size > 0


# ---------------------------------------------------------------------------------------------- versions

def declared_minimums() -> dict[str, str]:
    """name -> the lower bound pyproject.toml declares, for the base and every extra but test."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra, items in project["optional-dependencies"].items():
        if extra != "test":
            requirements += items
    minimums = {}
    for requirement in requirements:
        found = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)", requirement)
        if found:
            minimums[found.group(1).lower().replace("_", "-")] = found.group(2)
    return minimums


@pytest.mark.fast
def test_the_minimum_constraints_pin_every_declared_lower_bound() -> None:
    pinned = {}
    for line in (ROOT / "constraints" / "minimum.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = re.split(r"\s*==\s*", line.split(";")[0])
            pinned[name.strip().lower().replace("_", "-")] = version.strip()
    declared = declared_minimums()
    assert declared, "no lower bound read from pyproject.toml"
    for name, version in declared.items():
        assert pinned.get(name) == version, f"{name}>={version} in pyproject.toml, {pinned.get(name)} pinned"


@pytest.mark.fast
@pytest.mark.parametrize(("lock", "extras"), [("lock-image.txt", ["all"]), ("lock-ci.txt", ["test"])])
def test_the_lock_files_pin_every_requirement_within_its_bounds_with_hashes(lock: str, extras: list[str]) -> None:
    from packaging.requirements import Requirement

    text = (ROOT / "constraints" / lock).read_text()
    pinned = {name.lower().replace("_", "-"): version
              for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", text, re.MULTILINE)}
    assert len(pinned) == len(re.findall(r"^\S+==", text, re.MULTILINE)), "a pin without a hash"
    assert text.count("--hash=sha256:") >= len(pinned)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted, seen = list(project["dependencies"]), set()
    while extras:
        extra = extras.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for item in project["optional-dependencies"][extra]:
            if item.startswith("gateway["):
                extras += item[len("gateway["):-1].split(",")
            else:
                wanted.append(item)
    for item in wanted:
        requirement = Requirement(item)
        if requirement.marker is not None and not requirement.marker.evaluate({"python_version": "3.11",
                                                                               "sys_platform": "linux"}):
            continue
        name = requirement.name.lower().replace("_", "-")
        assert name in pinned, f"{name} is not in constraints/{lock}: remake it (its header says how)"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{name}=={pinned[name]} in constraints/{lock} is outside {requirement.specifier}: remake it")
