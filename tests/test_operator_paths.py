"""What an operator who follows the docs does, run as they would: the real ``gateway`` command in a directory of their
own, outside the checkout.

* A ``.env`` in the working directory is read (docs/first-call.md), and a variable of the real environment wins.
* ``TOOLS_MODULE=my_tools`` with ``my_tools.py`` in the working directory loads (README, "Tools"); when the module
  cannot be imported, ``gateway doctor`` says so with the fix and ``gateway serve`` stops with one line, no
  traceback. The working directory never shadows an installed module.
* A traceback of a failed start-up prints on real lines in text logs, and inside one JSON object in JSON logs;
  a hostile message still cannot forge a line.

The helpers here (:func:`gateway_command`, :func:`operator_env`, :func:`serving`, :func:`run_once`) are shared with
tests/test_container.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import ConfigError, Settings
from gateway.observe.logsafe import LIFESPAN_FAILED
from gateway.observe.logs import JsonFormatter, TextFormatter
from gateway.server.runner import free_port
from gateway.tools.registry import load_tools_module

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0

MY_TOOLS = '''
def check_order(order_id: str) -> dict:
    """Look up an order's status.

    Args:
        order_id: The order number the caller gives.
    """
    return {"order_id": order_id, "status": "shipped"}
'''


def gateway_command() -> list[str]:
    """The ``gateway`` console script installed with the package (not ``python -m``, which would put the working
    directory on the import path by itself)."""
    script = Path(sys.executable).with_name("gateway")
    found = str(script) if script.exists() else shutil.which("gateway")
    if found is None:
        pytest.skip("the gateway command is not installed (pip install -e .)")
    return [found]


def operator_env(**settings: str) -> dict[str, str]:
    """A shell's environment: what runs programs, none of the gateway's settings but ``settings``."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env["PYTHONPATH"] = str(ROOT)  # the gateway this checkout holds, installed or not (never the working directory)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


class Served:
    """A gateway process and its log (stderr, readable while it runs)."""

    def __init__(self, process: subprocess.Popen, log: Path) -> None:
        self.process = process
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
        """Poll ``condition`` until it holds; the process must stay up meanwhile."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"the gateway exited ({self.process.returncode}) before {what}:\n"
                                     f"{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not {what} within {timeout_s:g} s:\n{self.output()}")
            time.sleep(0.2)

    def wait_for_health(self, port: int) -> None:
        """``GET /healthz`` on 127.0.0.1:port answers 200."""
        def healthy() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            return False

        self.wait_for(healthy, "answering /healthz")


@contextlib.contextmanager
def serving(argv: list[str], *, cwd: Path | str, env: dict[str, str],
            preexec_fn: Callable[[], None] | None = None) -> Iterator[Served]:
    """Run ``argv`` until the block exits; then SIGTERM (the drain: no call is live, so it exits at once) and a
    check that it exited 0."""
    log = Path(tempfile.mkdtemp(prefix="gateway-log-")) / "stderr.log"
    try:
        # Appended to by the process (its own offset never moves under it), read by the test from its path.
        with open(log, "ab") as stderr:
            # preexec_fn: test_container.py's switch to the image's user (setgroups, setgid, setuid), nothing else.
            process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                       preexec_fn=preexec_fn)  # noqa: PLW1509
        served = Served(process, log)
        try:
            yield served
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise AssertionError("the gateway did not stop within 30 s of SIGTERM") from None
        assert process.returncode == 0, f"exit status {process.returncode}:\n{served.output()}"
    finally:
        shutil.rmtree(log.parent, ignore_errors=True)


def run_once(argv: list[str], *, cwd: Path | str, env: dict[str, str], timeout_s: float = START_TIMEOUT_S,
             preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """Run a command that should end by itself (a start that fails, doctor)."""
    try:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s,
                              preexec_fn=preexec_fn, check=False)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"{argv} did not end within {timeout_s:g} s (it kept running: {error.stderr!r})") from None


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def operator_dir(tmp_path: Path) -> Path:
    """The operator's own directory, outside the checkout."""
    where = tmp_path / "operator"
    where.mkdir()
    assert ROOT not in where.resolve().parents
    return where


# ---------------------------------------------------------------------------------------------- .env


def test_a_dotenv_in_the_working_directory_is_read_and_the_environment_wins(operator_dir: Path) -> None:
    dotenv_port, real_port = free_port(), free_port()
    (operator_dir / ".env").write_text(f"PORT={dotenv_port}\nDATA_DIR=from-dotenv\nLOG_LEVEL=warning\n")
    env = operator_env(PORT=str(real_port))  # set in the real environment too: this one wins
    with serving([*gateway_command(), "serve"], cwd=operator_dir, env=env) as gateway:
        gateway.wait_for_health(real_port)
        assert refuses_connections(dotenv_port), ".env's PORT won over the environment's"
        # DATA_DIR came from .env only: the default SQLite records file is in it.
        assert (operator_dir / "from-dotenv" / "gateway-records.db").is_file(), sorted(os.listdir(operator_dir))
        assert not (operator_dir / "gateway-records.db").exists()


def test_doctor_reads_the_dotenv_of_the_working_directory(operator_dir: Path) -> None:
    (operator_dir / ".env").write_text("TOOLS_MODULE=not_there_tools\n")
    result = run_once([*gateway_command(), "doctor", "--skip", "reach", "--skip", "model"], cwd=operator_dir,
                      env=operator_env(STORE_URL="memory://"))
    assert "TOOLS_MODULE=not_there_tools" in result.stdout, result.stdout


def test_data_dir_holds_every_relative_file_of_the_gateway(tmp_path: Path) -> None:
    settings = Settings.from_env({"DATA_DIR": "/data", "RECORD_CALLS_DIR": "recordings",
                                  "STATE_SQLITE_PATH": "state.db"}, dotenv=False)
    assert settings.data_dir == "/data"
    assert settings.store_url == "sqlite:////data/gateway-records.db"
    assert (settings.record_calls_dir, settings.state_sqlite_path) == ("/data/recordings", "/data/state.db")
    absolute = Settings.from_env({"DATA_DIR": "/data", "STORE_URL": "sqlite:////srv/records.db",
                                  "RECORD_CALLS_DIR": "/srv/rec"}, dotenv=False)
    assert (absolute.store_url, absolute.record_calls_dir) == ("sqlite:////srv/records.db", "/srv/rec")
    assert Settings.from_env({"DATA_DIR": "/data", "STORE_URL": "sqlite:///:memory:"}, dotenv=False).store_url \
        == "sqlite:///:memory:"
    unset = Settings.from_env({}, dotenv=False)  # the working directory, as before
    assert (unset.data_dir, unset.store_url) == ("", "sqlite:///gateway-records.db")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="DATA_DIR must be a directory"):
        Settings.from_env({"DATA_DIR": str(tmp_path / "a-file")}, dotenv=False)


# ---------------------------------------------------------------------------------------------- TOOLS_MODULE


def test_a_tools_module_in_the_working_directory_loads(operator_dir: Path) -> None:
    (operator_dir / "my_tools.py").write_text(MY_TOOLS)
    env = operator_env(TOOLS_MODULE="my_tools", LOG_LEVEL="warning")  # exactly as the README shows
    doctor = run_once([*gateway_command(), "doctor", "--skip", "reach", "--skip", "model"], cwd=operator_dir,
                      env={**env, "STORE_URL": "memory://"})
    tools_line = next(line for line in doctor.stdout.splitlines() if line.split()[1:2] == ["tools"])
    assert tools_line.startswith("PASS") and "check_order" in tools_line, doctor.stdout
    port = free_port()
    with serving([*gateway_command(), "serve", "--port", str(port)], cwd=operator_dir, env=env) as gateway:
        gateway.wait_for_health(port)


def test_a_tools_module_that_cannot_be_imported_is_one_line_with_the_fix(operator_dir: Path) -> None:
    env = operator_env(TOOLS_MODULE="my_tools", STORE_URL="memory://")  # no my_tools.py anywhere
    doctor = run_once([*gateway_command(), "doctor", "--skip", "reach", "--skip", "model"], cwd=operator_dir, env=env)
    lines = doctor.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[1:2] == ["tools"])
    assert lines[at].startswith("FAIL") and "TOOLS_MODULE=my_tools cannot be imported" in lines[at], doctor.stdout
    assert str(operator_dir) in lines[at]
    assert "fix:" in lines[at + 1] and "my_tools.py" in lines[at + 1], doctor.stdout

    result = run_once([*gateway_command(), "serve", "--port", str(free_port())], cwd=operator_dir, env=env)
    assert result.returncode == 2, result.stderr
    errors = lines_of(result.stderr)
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "TOOLS_MODULE=my_tools cannot be imported" in errors[0] and "fix:" in errors[0], errors[0]


def test_the_working_directory_never_shadows_an_installed_module(tmp_path: Path, monkeypatch) -> None:
    # A stray colorsys.py beside the operator would replace the standard library's if the working directory came
    # first on the import path; it is only looked in last, and only while TOOLS_MODULE is imported.
    (tmp_path / "colorsys.py").write_text("raise RuntimeError('the working directory shadowed the stdlib')\n")
    module = f"shadow_probe_tools_{os.getpid()}"
    (tmp_path / f"{module}.py").write_text("import colorsys\nSOURCE = colorsys.__file__\n" + MY_TOOLS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", str(tmp_path))])
    before = list(sys.path)
    try:
        tools = load_tools_module(module)
        assert [tool.name for tool in tools] == ["check_order"]
        assert Path(sys.modules[module].SOURCE).parent != tmp_path
        assert sys.path == before, "the working directory stayed on the import path"
    finally:
        sys.modules.pop(module, None)


# ---------------------------------------------------------------------------------------------- tracebacks


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on: the embedded model cannot start there, so the start-up fails."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def failed_start(operator_dir: Path, taken_port: int, log_format: str) -> subprocess.CompletedProcess:
    env = operator_env(LOCAL_REALTIME_PORT=str(taken_port), LOG_FORMAT=log_format, STORE_URL="memory://")
    result = run_once([*gateway_command(), "serve", "--port", str(free_port())], cwd=operator_dir, env=env)
    assert result.returncode != 0, result.stderr
    return result


def test_a_start_up_traceback_prints_on_real_lines_in_text_logs(operator_dir: Path, taken_port: int) -> None:
    result = failed_start(operator_dir, taken_port, "text")
    lines = result.stderr.splitlines()
    assert "Traceback (most recent call last):" in lines, result.stderr
    assert any(line.startswith('  File "') for line in lines), result.stderr
    assert "\\n" not in result.stderr, "a line holds a literal \\n"
    at = lines.index("Traceback (most recent call last):")
    assert lines[at - 1].endswith(LIFESPAN_FAILED), lines[at - 1]


def test_a_start_up_traceback_stays_in_one_json_object(operator_dir: Path, taken_port: int) -> None:
    result = failed_start(operator_dir, taken_port, "json")
    objects = [json.loads(line) for line in lines_of(result.stderr)]  # every line is one object
    failed = [entry for entry in objects if entry.get("msg") == LIFESPAN_FAILED]
    assert failed and failed[0]["exc"].startswith("Traceback (most recent call last):\n"), objects
    assert "\n  File " in failed[0]["exc"]


def _record(logger: str, msg: str, *args: Any) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.ERROR, __file__, 1, msg, args or None, None)


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_only_the_servers_own_traceback_message_gets_real_lines(formatter: logging.Formatter) -> None:
    forged = "Traceback (most recent call last):\n2026-01-01 00:00:00,000 INFO gateway.server.app: forged line"
    for record in (_record("uvicorn.error", "%s", forged),  # a value logged by the server: untrusted
                   _record("gateway.server.app", forged),  # another logger's message
                   _record("uvicorn.error", forged + "\x1b[31m")):  # the server's: lines, but no terminal escapes
        shown = formatter.format(record)
        if record.name == "uvicorn.error" and not record.args:
            assert "\x1b" not in shown and "\\x1b" in shown
            continue
        assert "\n" not in shown, shown
