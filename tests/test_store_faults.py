"""Call records under faults, with real servers: PostgreSQL connections killed in the middle of calls, a store that
is down for a whole call and then back, a gateway process killed with -9 in the middle of a call.

The PostgreSQL cases use the local server (``GATEWAY_TEST_POSTGRES_URL``), each in a schema of its own, and kill
only connections of their own ``application_name``; they skip, saying why, when it is not reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import uuid
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import pytest

from gateway.tooling.replay import CallerTurn, load_sample, run_call
from gateway.server.runner import free_port
from gateway.store.spool import SPOOL_FILE

from .conftest import start_gateway
from .helpers import eventually, serving
from .test_store_postgres import POSTGRES_URL, fresh_schema

KEY = "k-faults-0123456789abc"
AUTH = {"Authorization": f"Bearer {KEY}"}


def call_sid() -> str:
    return "CA" + uuid.uuid4().hex


def talk() -> list[CallerTurn]:
    """A call of a few seconds: two turns, each answered."""
    return [CallerTurn(load_sample("caller_hello"), after_silence_ms=300),
            CallerTurn(load_sample("caller_question"), after_silence_ms=2000)]


# ---- PostgreSQL in a schema of its own, under an application_name of its own


def pg_url(schema: str, application_name: str, port: int | None = None) -> str:
    parts = urlsplit(POSTGRES_URL)
    netloc = parts.netloc if port is None else f"{parts.netloc.rsplit(':', 1)[0]}:{port}"
    query = f"options={quote(f'-csearch_path={schema}')}&application_name={application_name}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


@pytest.fixture
def pg_schema():
    with fresh_schema() as schema:
        yield schema


async def pg_query(schema: str, query: str, params: tuple = ()) -> list[tuple]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(pg_url(schema, "gateway_test_reader"), autocommit=True) as conn:
        try:
            return await (await conn.execute(query, params)).fetchall()
        except psycopg.errors.UndefinedTable:  # the gateway has not migrated its schema yet
            return []


async def kill_connections(application_name: str) -> int:
    """Terminate every server connection of ``application_name`` (this test's gateway only); how many."""
    rows = await pg_query("public", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE application_name = %s AND pid <> pg_backend_pid()", (application_name,))
    return len(rows)



def long_call(url: str, call_sid: str, **options: Any) -> asyncio.Task[Any]:
    """A call through the gateway at ``url`` that is still going when its process is killed (the caller's second
    turn comes 30 s after the first)."""
    turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300),
             CallerTurn(load_sample("caller_question"), after_silence_ms=30_000)]
    return asyncio.create_task(run_call(url.replace("http", "ws") + "/media-stream", turns, call_sid=call_sid,
                                        timeout_s=60, **options))

async def test_three_calls_keep_their_records_when_postgres_connections_are_killed_mid_call(pg_schema, tmp_path):
    """Connections killed while the calls talk (a restart, a failover, an idle reaper): the pool checks each
    connection before lending it, and retries a write whose connection broke under it. 3 of 3 records complete,
    and none needed the spool."""
    app_name = f"gw_test_{uuid.uuid4().hex[:10]}"
    spool = tmp_path / "spool"
    async with start_gateway(store_url=pg_url(pg_schema, app_name), api_keys=(KEY,),
                             record_spool_dir=str(spool)) as gw:
        sids = [call_sid() for _ in range(3)]
        calls = [asyncio.create_task(run_call(gw.ws_url, talk(), call_sid=sid, timeout_s=40, hangup_after_ms=1500))
                 for sid in sids]

        async def all_in_progress():
            rows = await pg_query(pg_schema, "SELECT call_sid, status FROM calls")
            return sorted(sid for sid, status in rows if status == "in-progress") == sorted(sids)

        await eventually(all_in_progress, 20, "the three calls' records in progress", 0.1)
        assert await kill_connections(app_name) >= 1  # every connection the gateway's pool holds
        await asyncio.sleep(0.5)
        await kill_connections(app_name)  # and again, whatever it made since
        reports = await asyncio.gather(*calls)
        assert all(report.call_sid in sids for report in reports)
        await eventually(lambda: not gw.state.active_calls, 10, "the calls to end", 0.1)
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            for sid in sids:
                response = await http.get(f"/calls/{sid}", headers=AUTH)
                assert response.status_code == 200, f"the record of {sid} was lost: {response.text}"
                record = response.json()
                assert record["status"] == "completed" and record["outcome"] == "completed", record
                assert record["turns"] and record["holder"] == gw.state.settings.instance_id
    assert not (spool / SPOOL_FILE).exists()  # written by retries on fresh connections, not replayed from the spool


async def test_a_write_whose_connection_is_killed_while_it_runs_is_retried_on_a_fresh_one(pg_schema):
    from gateway.store import PostgresCallStore

    app_name = f"gw_test_{uuid.uuid4().hex[:10]}"
    store = PostgresCallStore(pg_url(pg_schema, app_name))
    attempts: list[int] = []

    async def slow_then_quick(conn):
        attempts.append(conn.info.backend_pid)
        if len(attempts) == 1:
            await conn.execute("SELECT pg_sleep(30)")  # killed under it
        return (await (await conn.execute("SELECT 42")).fetchone())[0]

    try:
        await store.get_call("CA" + "0" * 32)  # opened and migrated
        work = asyncio.create_task(store._run(slow_then_quick))
        await eventually(lambda: bool(attempts), 5, "the first attempt", 0.1)

        async def sleeping() -> bool:
            return bool(await pg_query("public", "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                                                 "AND query LIKE 'SELECT pg_sleep%%'", (app_name,)))
        await eventually(sleeping, 5, "the first attempt's query running", 0.1)
        await kill_connections(app_name)
        assert await asyncio.wait_for(work, 10) == 42
        assert len(attempts) == 2 and attempts[0] != attempts[1]  # a fresh connection, not the dead one
    finally:
        await store.close()


async def test_the_pools_connections_are_named_gateway_unless_the_url_names_them(pg_schema):
    from gateway.store import PostgresCallStore

    async def name(conn):
        return (await (await conn.execute("SELECT current_setting('application_name')")).fetchone())[0]

    for url, expected in ((pg_url(pg_schema, "x").replace("&application_name=x", ""), "gateway"),
                          (pg_url(pg_schema, "gw_named"), "gw_named")):
        store = PostgresCallStore(url)
        try:
            assert await store._run(name) == expected
        finally:
            await store.close()


# ---- a store down for the whole call, then back


class TcpGate:
    """A TCP forwarder to PostgreSQL on a port of its own: closed, the store is down (connection refused);
    opened, it is back."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.port = free_port()
        self.target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                sink.close()

        for task in (asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))):
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)


async def test_a_call_made_while_the_store_is_down_is_spooled_and_lands_when_it_is_back(pg_schema, tmp_path):
    target = urlsplit(POSTGRES_URL)
    gate = TcpGate(target.hostname or "127.0.0.1", target.port or 5432)
    spool = tmp_path / "spool"
    sid = call_sid()
    async with start_gateway(store_url=pg_url(pg_schema, "gw_test_gate", port=gate.port), api_keys=(KEY,),
                             record_spool_dir=str(spool)) as gw:
        report = await run_call(gw.ws_url, talk(), call_sid=sid, timeout_s=40, hangup_after_ms=800)
        assert report.call_sid == sid and any(turn.response_ms is not None for turn in report.turns)

        async def spooled():
            path = spool / SPOOL_FILE
            return path.exists() and b'"op":"finish"' in path.read_bytes()

        await eventually(spooled, 15, "the final record in the spool", 0.1)
        path = spool / SPOOL_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(spool.stat().st_mode) == 0o700
        lines = path.read_bytes().splitlines()
        assert [line.count(b'"op":"start"') for line in lines] == [1, 0] and sid.encode() in lines[1]

        await gate.open()  # the store is back
        try:
            async def landed():
                rows = await pg_query(pg_schema, "SELECT status, outcome, holder, turns FROM calls "
                                                 "WHERE call_sid = %s", (sid,))
                return rows and rows[0][1] == "completed" and rows[0]
            status, outcome, holder, turns = await eventually(landed, 60, "the spooled record in PostgreSQL", 0.5)
            assert (status, outcome, holder) == ("completed", "completed", gw.state.settings.instance_id)
            assert turns
            await eventually(lambda: not any(spool.iterdir()), 10, "the spool to be emptied", 0.1)
            async with httpx.AsyncClient(base_url=gw.http_url) as http:
                record = (await http.get(f"/calls/{sid}", headers=AUTH)).json()
            assert record["status"] == "completed" and record["turns"], record
        finally:
            await gate.close()


async def test_records_spooled_while_the_store_was_down_land_at_the_next_start(pg_schema, tmp_path):
    """The gateway stopped before the store came back: the next start writes what waits in the spool."""
    spool = tmp_path / "spool"
    sid = call_sid()
    async with start_gateway(store_url=pg_url(pg_schema, "gw_test_down", port=free_port()),
                             record_spool_dir=str(spool)) as gw:
        await run_call(gw.ws_url, talk()[:1], call_sid=sid, timeout_s=40, hangup_after_ms=500)
        await eventually(lambda: not gw.state.active_calls, 15, "the call to end", 0.1)
    assert sid.encode() in (spool / SPOOL_FILE).read_bytes()
    async with start_gateway(store_url=pg_url(pg_schema, "gw_test_up"), api_keys=(KEY,),
                             record_spool_dir=str(spool)) as gw:
        async with httpx.AsyncClient(base_url=gw.http_url) as http:
            async def landed():
                response = await http.get(f"/calls/{sid}", headers=AUTH)
                return response.status_code == 200 and response.json()["outcome"] == "completed" and response.json()
            record = await eventually(landed, 20, "the spooled record, written at start-up", 0.2)
        assert record["turns"] and record["status"] == "completed"
        await eventually(lambda: not any(spool.iterdir()), 10, "the spool to be emptied", 0.1)


# ---- a gateway process killed with -9 in the middle of a call


def serve(data_dir: str, instance_id: str, workers: int = 1) -> tuple[subprocess.Popen, str, object]:
    """``gateway serve`` in its own process, its records and shared state in ``data_dir`` (as the workers of one
    host share them)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")}
    for name in ("OPENAI_API_KEY", "REALTIME_API_KEY", "AZURE_OPENAI_API_KEY", "TWILIO_AUTH_TOKEN", "PUBLIC_URL",
                 "REDIS_URL", "STORE_URL", "RECORD_CALLS_DIR"):
        env[name] = ""
    env.update(LOG_LEVEL="info", PYTHONUNBUFFERED="1", DATA_DIR=data_dir, STORE_URL="sqlite:///records.db",
               STATE_SQLITE_PATH="state.db", INSTANCE_ID=instance_id, API_KEYS=KEY)
    log = tempfile.TemporaryFile()
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers",
                                str(workers)], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return process, f"http://127.0.0.1:{port}", log


def output(log) -> str:
    log.seek(0)
    return log.read().decode("utf-8", "replace")


async def test_a_call_of_a_gateway_killed_with_9_shows_as_lost_with_what_was_known(tmp_path):
    """Two gateway processes share the records and the live-call registry (as workers of one host do). A call's
    record is written when it starts; its gateway is killed with -9; the other marks it lost once the killed one's
    registry entry has expired, keeping what was known."""
    data_dir = str(tmp_path)
    doomed, doomed_url, _ = serve(data_dir, "doomed")
    survivor, survivor_url, survivor_log = serve(data_dir, "survivor")
    sid = call_sid()
    call = None
    try:
        await serving(doomed_url, doomed)
        await serving(survivor_url, survivor)
        call = long_call(doomed_url, sid, custom_parameters={"From": "+14155550177", "To": "+14155550100"})
        async with httpx.AsyncClient(base_url=survivor_url) as http:
            async def in_progress():
                response = await http.get(f"/calls/{sid}", headers=AUTH)
                return response.status_code == 200 and response.json()["status"] == "in-progress" and response.json()
            record = await eventually(in_progress, 20, "the call's record in progress, seen from the other gateway", 0.1)
            assert record["holder"] == "doomed" and record["direction"] == "inbound" and record["ended_at"] is None
            assert record["started_at"] is not None and record["outcome"] is None

            doomed.send_signal(signal.SIGKILL)
            doomed.wait(10)
            # Its registry entry would expire within 30 s of its last renewal (LEASE_TTL_S): expired now, as if
            # those seconds had passed (the TTL itself is the shared state's, tested there), not waited for.
            with sqlite3.connect(os.path.join(data_dir, "state.db")) as state:
                assert state.execute("UPDATE calls SET expires = 0 WHERE call_sid = ?", (sid,)).rowcount == 1

            async def lost():
                response = await http.get(f"/calls/{sid}", headers=AUTH)
                return response.json()["status"] == "lost" and response.json()
            # The survivor sweeps every 10 s (SWEEP_INTERVAL_S).
            record = await eventually(lost, 30, "the call marked lost", 0.2)
            assert record["outcome"] == "lost" and "doomed" in record["end_reason"], record
            assert (record["holder"], record["direction"], record["started_at"]) == ("doomed", "inbound",
                                                                                   record["started_at"])
            assert record["from"].startswith("+1415") and record["to"].startswith("+1415")
            listed = (await http.get("/calls", headers=AUTH, params={"outcome": "lost"})).json()["calls"]
            assert [c["call_sid"] for c in listed] == [sid] and listed[0]["status"] == "lost"
        async with httpx.AsyncClient(base_url=survivor_url, headers={"Origin": survivor_url}) as console:
            assert (await console.post("/console/login", data={"api_key": KEY})).status_code == 303
            page = await console.get(f"/console/calls/{sid}")  # the console's call page says so, and why
            assert page.status_code == 200 and ">lost<" in page.text and "(doomed) stopped" in page.text
        assert "marked lost" in output(survivor_log)
    finally:
        for process in (doomed, survivor):
            if process.poll() is None:
                process.kill()
                process.wait(10)
        if call is not None:
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)


async def test_a_gateway_restarted_after_kill_9_marks_its_own_unfinished_calls_lost_at_once(tmp_path):
    """A gateway that comes back under the same INSTANCE_ID (a replaced worker of ``gateway serve --workers``)
    knows the calls its record names as its own and that it does not hold: lost, at its first sweep."""
    data_dir = str(tmp_path)
    first, url, _ = serve(data_dir, "same-id")
    sid = call_sid()
    call = None
    try:
        await serving(url, first)
        call = long_call(url, sid)

        def status() -> str | None:
            db = sqlite3.connect(os.path.join(data_dir, "records.db"))
            try:
                row = db.execute("SELECT status FROM calls WHERE call_sid = ?", (sid,)).fetchone()
                return row[0] if row else None
            finally:
                db.close()

        await eventually(lambda: status() == "in-progress", 20, "the record in progress", 0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert status() == "in-progress"
        second, url, _ = serve(data_dir, "same-id")
        try:
            await serving(url, second)
            await eventually(lambda: status() == "lost", 10, "the record marked lost", 0.1)
        finally:
            second.kill()
            second.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
        if call is not None:
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)


def worker_pids(parent: int) -> list[int]:
    """The worker processes ``gateway serve --workers`` started (multiprocessing's spawned children)."""
    with open(f"/proc/{parent}/task/{parent}/children") as file:
        children = [int(pid) for pid in file.read().split()]
    workers = []
    for pid in children:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as file:
            if b"spawn_main" in file.read():
                workers.append(pid)
    return workers


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"),
                    reason="needs Linux's /proc/<pid>/task/<pid>/children to find the workers")
async def test_a_worker_killed_with_9_is_replaced_and_its_call_shows_as_lost(tmp_path):
    """``gateway serve --workers 2``: the workers holding a call are killed with -9; the supervisor replaces them
    (under the same names) and the call's record shows lost, with what was known."""
    parent, url, log = serve(str(tmp_path), "wk", workers=2)
    sid = call_sid()
    call = None
    try:
        await serving(url, parent)
        call = long_call(url, sid)
        async with httpx.AsyncClient(base_url=url, headers={"Connection": "close"}) as http:
            async def record_with(status: str):
                response = await http.get(f"/calls/{sid}", headers=AUTH)
                return response.status_code == 200 and response.json()["status"] == status and response.json()
            started = await eventually(lambda: record_with("in-progress"), 20, "the call's record in progress", 0.1)
            assert started["holder"] in ("wk-w0", "wk-w1")
            workers = worker_pids(parent.pid)
            assert len(workers) == 2, workers
            for pid in workers:  # the one holding the call among them
                os.kill(pid, signal.SIGKILL)
            lost = await eventually(lambda: record_with("lost"), 40, "the call marked lost", 0.3)
        assert (lost["outcome"], lost["holder"], lost["started_at"]) == ("lost", started["holder"],
                                                                        started["started_at"])
        assert parent.poll() is None and "marked lost" in output(log)
    finally:
        if parent.poll() is None:
            parent.send_signal(signal.SIGTERM)
            try:
                parent.wait(15)
            except subprocess.TimeoutExpired:
                parent.kill()
                parent.wait(10)
        if call is not None:
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
