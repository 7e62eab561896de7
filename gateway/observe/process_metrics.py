"""``process_*`` metrics (memory, CPU, open files) for every process of ``gateway serve --workers N``.

A single process exposes them through prometheus-client's own ``ProcessCollector`` in the default registry. With
workers, ``/metrics`` is answered from the multi-process directory, which holds only the ``gateway_*`` samples: the
process metrics of the worker that happens to answer would be wrong, and prometheus-client leaves them out. This
collector reports them for each process of the group instead, with a ``pid`` label: the supervisor (named by
``GATEWAY_SUPERVISOR_PID``, which ``gateway serve --workers`` sets for the group) and every live worker, found by the sample files each worker keeps in the directory
(``<kind>_<pid>.db``) and confirmed as a child of the same supervisor (a pid the kernel reused is not counted). The
figures are read from ``/proc`` by ``ProcessCollector`` at scrape time, so they are never stale. On a system without
``/proc`` it reports nothing, as ``ProcessCollector`` does.

Alert on the pod, not the process: ``sum without (pid) (process_resident_memory_bytes)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator

from prometheus_client import ProcessCollector
from prometheus_client.metrics_core import Metric

_PID_IN_FILE_NAME = re.compile(r"_(\d+)\.db$")
# Set by ``gateway serve --workers`` for the whole group: the supervisor scrapes too (METRICS_PORT is served by
# its thread), and a worker's parent may be anything when the supervisor is not the one who started it.
SUPERVISOR_PID_VARIABLE = "GATEWAY_SUPERVISOR_PID"


def parent_of(pid: int) -> int | None:
    """The parent pid from ``/proc/<pid>/stat`` (None: no such process)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: the fields after its last ")" are fixed.
    fields = stat[stat.rfind(b")") + 2:].split()
    return int(fields[1]) if len(fields) > 1 else None


def _fixed(pid: int) -> Callable[[], int]:
    """ProcessCollector's ``pid`` argument: a function naming one process."""
    return lambda: pid


def group_pids(directory: str, supervisor: int) -> list[int]:
    """The supervisor and its live workers that keep samples in ``directory``, in pid order."""
    try:
        names = os.listdir(directory)
    except OSError:
        names = []
    workers = {int(found.group(1)) for name in names if (found := _PID_IN_FILE_NAME.search(name))}
    alive = [pid for pid in workers if pid != supervisor and parent_of(pid) == supervisor]
    return ([supervisor] if parent_of(supervisor) is not None else []) + sorted(alive)


def _supervisor_pid() -> int:
    named = os.environ.get(SUPERVISOR_PID_VARIABLE, "")
    return int(named) if named.isdigit() else os.getppid()


class WorkerProcessCollector:
    """``process_*`` of every process of the group, one ``pid`` label each (see the module docstring)."""

    def __init__(self, directory: str, supervisor: int | None = None) -> None:
        self.directory = directory
        self.supervisor = supervisor if supervisor is not None else _supervisor_pid()

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for pid in group_pids(self.directory, self.supervisor):
            one = ProcessCollector(pid=_fixed(pid), registry=None)
            for family in one.collect():
                into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                             family.unit))
                for sample in family.samples:
                    into.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from merged.values()
