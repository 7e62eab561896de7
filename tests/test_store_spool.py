"""The record spool (gateway.store.spool) and the writer in front of it (gateway.store.records.CallRecords), on real
files and real stores: a PostgreSQL store at a port where nothing listens (down), SQLite stores (up), processes
appending at once while a replay claims the file."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import textwrap

import pytest

from gateway.config import ConfigError, Settings
from gateway.observe import metrics
from gateway.server.runner import free_port
from gateway.store import CallRecord, PostgresCallStore, SQLiteCallStore
from gateway.store.records import CallRecords, start_record
from gateway.store.spool import SPOOL_FILE, RecordSpool

from .test_store_records import final_record, sid


def down_store() -> PostgresCallStore:
    """A store whose server is not there: every write fails (connection refused), quickly."""
    return PostgresCallStore(f"postgresql://postgres@127.0.0.1:{free_port()}/none", connect_timeout_s=0.3)


def started(n: int, holder: str = "host-a") -> CallRecord:
    return start_record(call_sid=sid(n), stream_sid="MZ" + "1" * 32, direction="inbound", from_="+14155550177",
                        to="+14155550100", started_at=1_700_000_000.0 + n, holder=holder, model="gpt-realtime")


def lost_count(reason: str) -> float:
    return metrics.RECORDS_LOST.labels(reason)._value.get()


async def test_records_the_store_does_not_take_are_spooled_then_written_once_it_is_back(tmp_path):
    spool = RecordSpool(str(tmp_path / "spool"), 1 << 20)
    down = down_store()
    writer = CallRecords(down, spool, instance_id="host-a")
    await writer.start(started(1))
    await writer.finish(final_record(1, started_at=1_700_000_001.0, holder="host-a"))
    await writer.finish({"call_sid": ""})  # nothing to write: no line
    await down.close()

    path = tmp_path / "spool" / SPOOL_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line["op"], line["record"]["call_sid"]) for line in lines] == [("start", sid(1)), ("finish", sid(1))]

    up = SQLiteCallStore(str(tmp_path / "calls.db"))
    try:
        back = CallRecords(up, spool, instance_id="host-b")
        assert await back.replay() == (2, True)
        record = await up.get_call(sid(1))
        assert (record.status, record.outcome, record.holder, len(record.turns)) == ("completed", "completed",
                                                                                     "host-a", 3)
        assert os.listdir(tmp_path / "spool") == [] and await back.replay() == (0, True)

        # The same lines replayed again (a replay cut short, two workers): the same record.
        spool.append("finish", final_record(1, started_at=1_700_000_001.0, holder="host-a"))
        spool.append("start", started(1))
        assert await back.replay() == (2, True)
        again = await up.get_call(sid(1))
        assert again == CallRecord.from_json({**record.to_json(), "updated_at": again.updated_at})
    finally:
        await up.close()


async def test_a_replay_that_fails_keeps_the_file_for_the_next(tmp_path):
    spool = RecordSpool(str(tmp_path), 1 << 20)
    spool.append("start", started(2))
    down = down_store()
    try:
        assert await CallRecords(down, spool, instance_id="x").replay() == (0, False)
    finally:
        await down.close()
    assert spool.pending()
    up = SQLiteCallStore(str(tmp_path / "calls.db"))
    try:
        assert await CallRecords(up, spool, instance_id="x").replay() == (1, True)
        assert (await up.get_call(sid(2))).status == "in-progress" and not spool.pending()
    finally:
        await up.close()


async def test_the_spool_is_bounded_and_skips_lines_it_cannot_read(tmp_path):
    record = started(3)
    one_line = len(json.dumps({"op": "start", "record": record.to_json(), "spooled_at": 0.0}))
    spool = RecordSpool(str(tmp_path), one_line + 100)
    before = lost_count("spool")
    assert spool.append("start", record) is True
    assert spool.append("start", started(4)) is False  # over RECORD_SPOOL_MAX_MB: logged and counted as lost
    assert lost_count("spool") == before + 1

    with open(tmp_path / SPOOL_FILE, "ab") as file:  # noqa: ASYNC230 - a test's few bytes
        file.write(json.dumps({"op": "drop", "record": record.to_json()}).encode() + b"\n")
        file.write(b'{"op":"start","record":{"call_sid":"CA1","to":"","from_":""')  # cut short by a crash
    spool.max_bytes = 1 << 20
    assert spool.append("start", started(5)) is True  # on a line of its own, after the cut one
    unreadable = lost_count("unreadable")
    claims = spool.take_claims()
    try:
        assert [[entry.record.call_sid for entry in claimed.entries()] for claimed in claims] == [[sid(3), sid(5)]]
    finally:
        for claimed in claims:
            claimed.release()
    assert lost_count("unreadable") == unreadable + 2

    store = SQLiteCallStore(":memory:")
    try:
        nothing = CallRecords(store, RecordSpool(str(tmp_path / "off"), 0), instance_id="x")
        assert nothing.spool is None  # RECORD_SPOOL_MAX_MB=0: no spool
    finally:
        await store.close()


_APPENDER = textwrap.dedent("""
    import sys
    from gateway.store.records import start_record
    from gateway.store.spool import RecordSpool

    spool = RecordSpool(sys.argv[1], 1 << 30)
    worker = int(sys.argv[2])
    for n in range(int(sys.argv[3])):
        record = start_record(call_sid=f"CA{worker:04d}{n:028d}", stream_sid="", direction="inbound", from_="",
                              to="", started_at=0.0, holder=f"w{worker}", model=None)
        assert spool.append("start", record)
""")


async def test_processes_appending_at_once_while_a_replay_claims_lose_no_line(tmp_path):
    """Workers of one host share the spool: appends from several processes while replays claim the file; every
    line is read back exactly once, none torn."""
    directory, workers, per_worker = str(tmp_path / "spool"), 4, 60
    processes = [await asyncio.create_subprocess_exec(sys.executable, "-c", _APPENDER, directory, str(w),
                                                      str(per_worker)) for w in range(workers)]
    spool = RecordSpool(directory, 1 << 30)
    seen: list[str] = []

    def drain() -> None:
        for claimed in spool.take_claims():
            try:
                seen.extend(entry.record.call_sid for entry in claimed.entries())
                claimed.done()
            finally:
                claimed.release()

    waiting = [asyncio.create_task(process.wait()) for process in processes]
    while not all(task.done() for task in waiting):
        await asyncio.to_thread(drain)
        await asyncio.sleep(0.01)
    assert [task.result() for task in waiting] == [0] * workers
    await asyncio.to_thread(drain)
    assert len(seen) == workers * per_worker and len(set(seen)) == len(seen)
    assert not spool.pending()


def test_the_spool_settings_live_in_the_data_directory_and_are_checked(tmp_path):
    settings = Settings.from_env({"DATA_DIR": str(tmp_path)})
    assert (settings.record_spool_dir, settings.record_spool_max_bytes) == (str(tmp_path / "record-spool"), 64 << 20)
    settings = Settings.from_env({"DATA_DIR": str(tmp_path), "RECORD_SPOOL_DIR": "/var/spool/gw",
                                  "RECORD_SPOOL_MAX_MB": "0"})
    assert (settings.record_spool_dir, settings.record_spool_max_bytes) == ("/var/spool/gw", 0)
    with pytest.raises(ConfigError, match="RECORD_SPOOL_MAX_MB"):
        Settings.from_env({"RECORD_SPOOL_MAX_MB": "-1"})
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="RECORD_SPOOL_DIR must be a directory"):
        Settings.from_env({"DATA_DIR": str(tmp_path), "RECORD_SPOOL_DIR": "a-file"})
