"""The clock of the I/O shells: monotonic milliseconds, the ``now_ms`` every pure core is given.

The cores (``gateway.call``, ``gateway.local.session``) never read a clock: the shells around them read this one
and pass the time in, so a test drives a core with any times it likes.
"""

from __future__ import annotations

import time


def now_ms() -> float:
    return time.monotonic() * 1000.0
