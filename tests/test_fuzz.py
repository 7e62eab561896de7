"""``gateway fuzz``, small: the gateway runs as a real subprocess on 127.0.0.1, the storm and the calls in this one.

The fuzz is called as a function (``gateway.tooling.fuzz.main``, what ``gateway fuzz`` runs), with ``--json``, so the test
sees both the exit status and the figures.
"""

from __future__ import annotations

import json
import time

import pytest

from gateway.tooling import fuzz

FRAMES, CONNECTIONS, CALLS = 600, 3, 2


@pytest.mark.timeout(90)
def test_small_fuzz_passes_with_the_counts_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    status = fuzz.main(frames=FRAMES, connections=CONNECTIONS, calls=CALLS, seed=7, max_seconds=60, as_json=True)
    elapsed = time.monotonic() - started
    result = json.loads(capsys.readouterr().out)

    failed = [check for check in result["checks"] if not check["passed"]]
    assert status == 0, failed
    assert result["result"] == "PASS" and result["exit_status"] == 0
    assert result["config"] | {"seed": 7} == {"frames": FRAMES, "connections": CONNECTIONS, "calls": CALLS, "seed": 7,
                                              "max_seconds": 60}
    # Every frame asked for was sent, and the kinds add up.
    assert result["frames"]["sent"] == FRAMES
    assert sum(result["frames"]["by_kind"].values()) == FRAMES
    for kind in ("start", "media", "mutated", "oversized", "huge"):
        assert result["frames"]["by_kind"].get(kind, 0) >= 1, kind
    # At least one connection per worker; every connection's end is counted; the frame over 1 MiB closed with 1009.
    connections = result["connections"]
    assert connections["opened"] >= CONNECTIONS
    assert sum(connections["ended"].values()) == connections["opened"]
    assert connections["ended"].get("server 1009", 0) >= 1
    assert not any(k.startswith("http 5") or k == "server 1011" for k in connections["ended"])
    # The same number of real calls in each phase, all answered without a protocol violation.
    assert [(p["name"], p["calls"], p["ok"]) for p in result["phases"]] == [
        ("baseline", CALLS, CALLS), ("during", CALLS, CALLS), ("after", CALLS, CALLS)
    ]
    assert result["healthz_status"] == 200 and result["active_calls_end"] == 0
    rss = result["rss_mb"]
    assert rss["baseline"] and rss["after"] and rss["after"] - rss["baseline"] < result["rss_tolerance_mb"]
    assert result["gateway"]["host"] == "127.0.0.1" and result["gateway"]["pid"]
    assert elapsed < 40, f"the small fuzz took {elapsed:.1f} s"


def test_bad_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert fuzz.main(frames=0) == 2
    assert fuzz.main(connections=0) == 2
    assert fuzz.main(max_seconds=1) == 2
    assert "must be" in capsys.readouterr().err


def test_mutations_are_reproducible_from_the_seed() -> None:
    import random

    def frames(seed: int) -> list[str | bytes]:
        stream = fuzz.HostileStream(random.Random(seed))
        return [stream.frame(kind) for kind in ("start", "media", "mutated", "truncated", "forged-mark", "text", "binary",
                                                "deep", "media-jump", "foreign-sid", "second-start", "dtmf", "early")]

    assert frames(3) == frames(3)
    assert frames(3) != frames(4)
    oversized = fuzz.HostileStream(random.Random(5)).frame("oversized")
    huge = fuzz.HostileStream(random.Random(5)).frame("huge")
    assert fuzz.MAX_FRAME_BYTES < len(oversized) <= fuzz.WS_MAX_SIZE < len(huge)
