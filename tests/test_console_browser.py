"""The web console in a real headless browser: Debian's Chromium driven by Selenium through chromedriver.

The test logs in with the form, opens the live view, watches a live call's transcript grow while the replay harness
talks, then opens the finished call's page (transcript, cost, timeline, recording player). Without Chromium,
chromedriver or Selenium it skips and says which is missing (``.ci/run`` installs them where it can).

Selenium's calls block; the gateway runs on this test's event loop, so every browser call runs in a thread.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import time
from typing import Any, Callable

import pytest

from gateway.tooling.replay import CallerTurn, load_sample, run_call

from .conftest import PRICED_AS_GPT_REALTIME, start_gateway

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
try:
    import selenium  # noqa: F401
    SELENIUM = True
except ImportError:
    SELENIUM = False

MISSING = [what for what, found in (("chromium", CHROMIUM), ("chromedriver (chromium-driver)", CHROMEDRIVER),
                                    ("the selenium package", SELENIUM)) if not found]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"browser test needs {', '.join(MISSING)} "
                                                     "(apt-get install chromium chromium-driver; pip install selenium)")

KEY = "browser-key-aaaaaaaaaaaaaaaaaaaaaa"


def chromium(profile: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


async def browser(call: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(call, *args)


async def until(check: Callable[[], Any], timeout_s: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await browser(check)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(180)
async def test_the_console_in_a_real_browser(tmp_path):
    from selenium.webdriver.common.by import By

    started = time.monotonic()
    calls_dir = tmp_path / "calls"
    async with start_gateway(api_keys=(KEY,), transcription_model="gpt-4o-mini-transcribe",
                             model_prices=PRICED_AS_GPT_REALTIME,
                             store_url=f"sqlite:///{tmp_path / 'records.db'}", record_calls_dir=str(calls_dir),
                             record_audio=True) as gateway:
        driver = await browser(chromium, str(tmp_path / "profile"))
        try:
            # Log in through the form.
            await browser(driver.get, f"{gateway.http_url}/console/live")
            await until(lambda: driver.current_url.endswith("/console/login"), what="the login page")
            field = await browser(driver.find_element, By.ID, "api_key")
            await browser(field.send_keys, "wrong-key-xxxxxxxxxxxxxxxxxxxxx")
            await browser(lambda: driver.find_element(By.ID, "login").click())
            error = await until(lambda: driver.find_elements(By.ID, "login-error"), what="the login error")
            assert "not a valid API key" in await browser(lambda: error[0].text)
            await browser(lambda: driver.find_element(By.ID, "api_key").send_keys(KEY))
            await browser(lambda: driver.find_element(By.ID, "login").click())
            await until(lambda: driver.current_url.endswith("/console/live"), what="the live view")
            cookie = await browser(driver.get_cookie, "gateway_console")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
            assert await browser(driver.execute_script, "return document.cookie") == ""  # HTTP-only: no script sees it
            await until(lambda: driver.find_element(By.ID, "live-status").text == "Live.", what="the event stream")

            # A call: its transcript grows in the page while the caller talks.
            turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300),
                     CallerTurn(load_sample("caller_question"), after_silence_ms=2500),
                     CallerTurn(load_sample("caller_goodbye"), after_silence_ms=2500)]
            call = asyncio.create_task(run_call(gateway.ws_url, turns, timeout_s=60, hangup_after_ms=800))

            def lines() -> list[str]:
                return [line.text for line in driver.find_elements(By.CSS_SELECTOR, ".live-call .line")]

            counts: list[int] = []
            while not call.done():
                shown = await browser(lines)
                if not counts or len(shown) != counts[-1]:
                    counts.append(len(shown))
                await asyncio.sleep(0.1)
            report = await call
            assert len([n for n in counts if n > 0]) >= 3, counts  # it grew, line by line, during the call
            card = f'.live-call[data-sid="{report.call_sid}"]'
            shown = await browser(lines)
            assert any(text.startswith("Caller") or "Caller" in text for text in shown), shown
            assert any("Agent" in text for text in shown), shown
            link = await until(lambda: driver.find_elements(By.CSS_SELECTOR, f"{card}.ended a.record"),
                               what="the call to end in the live view")
            call_url = await browser(lambda: link[0].get_attribute("href"))

            # The finished call's page.
            await browser(link[0].click)
            await until(lambda: driver.current_url == call_url, what="the call's page")
            record = await gateway.state.store.get_call(report.call_sid)
            transcript = await browser(lambda: driver.find_element(By.ID, "transcript").text)
            assert record.turns and all(turn.caller_transcript in transcript for turn in record.turns)
            assert record.cost_usd and await browser(lambda: driver.find_element(By.ID, "cost").text) == \
                f"${record.cost_usd:.4f}"
            assert await browser(lambda: driver.find_elements(By.CSS_SELECTOR, "svg.timeline polygon"))
            audio = await browser(driver.find_element, By.ID, "recording")
            duration = await until(lambda: driver.execute_script("return arguments[0].duration", audio),
                                   what="the recording to load")
            assert duration > 3  # the browser fetched the WAV with the session cookie and read it
            # No script error, no Content-Security-Policy violation, no failed load but the wrong key's 401.
            problems = [entry for entry in await browser(driver.get_log, "browser") if entry["level"] == "SEVERE"
                        and not (entry["source"] == "network" and "/console/login" in entry["message"]
                                 and "status of 401" in entry["message"])]
            assert problems == []
        finally:
            await browser(driver.quit)
    print(f"browser test took {time.monotonic() - started:.1f} s")


@pytest.mark.timeout(180)
async def test_hanging_up_a_live_call_from_the_live_page(tmp_path):
    """The live page's hang-up button on a call in progress (the replay phone is the caller): a confirmation first
    (cancelled: nothing happens; accepted: the call ends), then the page shows the call ended. A screenshot of the
    page is kept in the test's output directory."""
    from selenium.webdriver.common.by import By

    async with start_gateway(api_keys=(), operator_api_keys=(KEY,), transcription_model="gpt-4o-mini-transcribe") \
            as gateway:
        driver = await browser(chromium, str(tmp_path / "profile"))
        try:
            await log_in(driver, gateway.http_url)
            await until(lambda: driver.find_element(By.ID, "live-status").text == "Live.", what="the event stream")

            turns = [CallerTurn(load_sample("caller_hello"), after_silence_ms=300)]
            phone = asyncio.create_task(run_call(gateway.ws_url, turns, timeout_s=60, hangup_after_ms=30_000))
            button = await until(lambda: driver.find_elements(By.CSS_SELECTOR, ".live-call button.hangup"),
                                 what="the live call's hang-up button")
            card = await browser(lambda: button[0].find_element(By.XPATH, "ancestor::section"))
            call_sid = await browser(card.get_attribute, "data-sid")
            await until(lambda: card.find_elements(By.CSS_SELECTOR, ".line.caller"), what="the caller's words")

            # Cancelled: the call goes on.
            await browser(button[0].click)
            alert = await until(lambda: _alert(driver), what="the confirmation")
            assert "Hang up" in await browser(lambda: alert.text)
            await browser(alert.dismiss)
            await until(lambda: card.find_element(By.CSS_SELECTOR, ".action-result").text == "Cancelled.",
                        what="the cancellation")
            assert not phone.done() and gateway.state.find_session(call_sid) is not None

            # Confirmed: the gateway hangs up; the phone hears the end and the page shows it.
            await browser(button[0].click)
            alert = await until(lambda: _alert(driver), what="the confirmation")
            await browser(alert.accept)
            report = await asyncio.wait_for(phone, 20)
            assert report.call_sid == call_sid and report.ended_by == "gateway_closed"
            await until(lambda: "ended" in card.get_attribute("class"), what="the call to show as ended")
            assert await browser(lambda: button[0].get_attribute("disabled")) == "true"
            shot = tmp_path / "live-call-hung-up.png"
            assert await browser(driver.save_screenshot, str(shot))
            assert shot.stat().st_size > 1000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            problems = [entry for entry in await browser(driver.get_log, "browser") if entry["level"] == "SEVERE"]
            assert problems == []
        finally:
            await browser(driver.quit)


async def log_in(driver: Any, http_url: str) -> None:
    """Log in with KEY through the form; the live view follows."""
    from selenium.webdriver.common.by import By

    await browser(driver.get, f"{http_url}/console/login")
    await browser(lambda: driver.find_element(By.ID, "api_key").send_keys(KEY))
    await browser(lambda: driver.find_element(By.ID, "login").click())
    await until(lambda: driver.current_url.endswith("/console/live"), what="the live view")


def _alert(driver: Any) -> Any:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = driver.switch_to.alert
        alert.text  # noqa: B018 - raises when there is none
        return alert
    except NoAlertPresentException:
        return None


# ---- the console's views of past calls (issue 17): the overview's charts, the call page's timeline linked to its
# player, local times. Records and a recording are made directly; the browser runs in New York's time zone so that
# local time differs from UTC.

VIEWER_TZ = "America/New_York"


def _png_size(path: Any) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


async def _screenshot(driver: Any, element: Any, path: Any) -> None:
    """A screenshot of the viewport (``element`` None) or of one element, checked: a non-empty PNG of the size the
    browser says the viewport or the element has."""
    if element is None:
        assert await browser(driver.save_screenshot, str(path))
        expected = await browser(driver.execute_script, "return [Math.round(innerWidth * devicePixelRatio), "
                                                        "Math.round(innerHeight * devicePixelRatio)]")
    else:
        await browser(driver.execute_script, "arguments[0].scrollIntoView({block: 'center'})", element)
        path.write_bytes(await browser(lambda: element.screenshot_as_png))
        expected = await browser(driver.execute_script, "const r = arguments[0].getBoundingClientRect(); "
                                 "return [r.width * devicePixelRatio, r.height * devicePixelRatio]", element)
    width, height = _png_size(path)
    assert path.stat().st_size > 2000 and width > 0 and height > 0
    assert abs(width - expected[0]) <= 2 and abs(height - expected[1]) <= 2, (path.name, (width, height), expected)


def _recorded_call(calls_dir: Any, call_sid: str, now: float) -> Any:
    """A 6 s stereo recording (the caller speaks 0.5-2 s, the agent 2.6-5 s) and the record of its call."""
    import numpy as np

    from gateway.store import CallRecord, ToolRun, Turn
    from gateway.audio.wavio import PHONE_RATE, write_wav

    t = np.arange(6 * PHONE_RATE) / PHONE_RATE
    caller = np.where((t > 0.5) & (t < 2.0), 9000 * np.sin(2 * np.pi * 220 * t), 0)
    agent = np.where((t > 2.6) & (t < 5.0), 7000 * np.sin(2 * np.pi * 330 * t), 0)
    calls_dir.mkdir(parents=True, exist_ok=True)
    write_wav(calls_dir / f"{call_sid}.wav", np.stack([caller, agent], axis=1).astype(np.int16), PHONE_RATE)
    return CallRecord(
        call_sid=call_sid, to="+14155550123", from_="+14155550100", direction="inbound", status="completed",
        outcome="completed", ended_by="caller", created_at=now - 120, started_at=now - 120, ended_at=now - 114,
        cost_usd=0.0042, recording=f"{call_sid}.wav", model="gpt-realtime",
        turns=(Turn(None, "Hello! How can I help?", latency_ms=None, t_ms=200),
               Turn("Where is my order?", "It ships tomorrow.", latency_ms=600, t_ms=2600, barged_in=True,
                    heard_ms=1800)),
        tool_calls=(ToolRun("lookup_order", "ok", 35, 2300, '{"order": "A-1001"}', '{"status": "ships tomorrow"}'),))


@pytest.mark.timeout(180)
async def test_the_overview_charts_and_a_calls_timeline_linked_to_its_player(tmp_path, monkeypatch):
    from zoneinfo import ZoneInfo

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from gateway.api.auth import key_id
    from gateway.console.timeline import LEFT, RIGHT
    from gateway.store import CallRecord, Turn

    monkeypatch.setenv("TZ", VIEWER_TZ)  # chromedriver, and the browser it starts, run in this time zone
    calls_dir = tmp_path / "calls"
    async with start_gateway(api_keys=(), operator_api_keys=(KEY,), record_calls_dir=str(calls_dir),
                             store_url=f"sqlite:///{tmp_path / 'records.db'}") as gateway:
        store, now = gateway.state.store, time.time()
        for n in range(24):  # a few days of calls, for the charts
            created = now - 3600 * (3 * n + 1)
            await store.upsert_call(CallRecord(
                call_sid="CA" + f"{n + 100:032x}", to="+14155550123", from_="+14155550100", direction="inbound",
                status="completed", outcome=("completed", "failed", "refused")[n % 3], api_key_id=key_id(KEY),
                created_at=created, started_at=created, ended_at=created + 30 + n, cost_usd=0.01 * (n % 5),
                turns=tuple(Turn("hi", "hello", latency_ms=300 + 40 * n + 90 * k, barged_in=k == 0 and n % 4 == 0)
                            for k in range(3))))
        call_sid = "CA" + "f" * 32
        await store.upsert_call(_recorded_call(calls_dir, call_sid, now))
        driver = await browser(chromium, str(tmp_path / "profile"))
        try:
            await log_in(driver, gateway.http_url)

            # The overview, from the nav: five charts, drawn.
            await browser(lambda: driver.find_element(By.ID, "nav-overview").click())
            await until(lambda: driver.current_url.endswith("/console/overview"), what="the overview")
            await browser(lambda: driver.find_element(By.CSS_SELECTOR, 'a[data-range="7d"]').click())
            await until(lambda: driver.current_url.endswith("range=7d"), what="the 7-day overview")
            assert await browser(lambda: driver.find_element(By.ID, "total-calls").text) == "25"
            for chart in ("chart-calls-hour", "chart-calls-day", "chart-spend", "chart-barge-ins"):
                bars = await browser(driver.find_elements, By.CSS_SELECTOR, f"#{chart} rect.bar")
                assert bars, chart
                box = await browser(driver.execute_script, "return arguments[0].getBBox().height", bars[0])
                assert box > 0, chart  # drawn, not just present
            assert len(await browser(lambda: driver.find_elements(By.CSS_SELECTOR, "#chart-latency circle.point"))) >= 8
            await _screenshot(driver, None, tmp_path / "overview.png")
            for chart in ("chart-calls-day", "chart-latency", "chart-spend"):
                await _screenshot(driver, await browser(driver.find_element, By.ID, chart), tmp_path / f"{chart}.png")

            # Local times: New York's, with the UTC text as the tooltip.
            stamp = await browser(driver.find_element, By.CSS_SELECTOR, "time[datetime]")
            iso, shown, tip = [await browser(stamp.get_attribute, name) for name in ("datetime", "textContent",
                                                                                     "title")]
            local = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(ZoneInfo(VIEWER_TZ))
            assert tip.endswith(" UTC") and tip.startswith(iso[:10]) and shown != tip
            assert f"{local.hour % 12 or 12}:{local:%M:%S}" in shown and ("EST" in shown or "EDT" in shown), shown

            # The listing: the cost column sorts, largest first, then the other way round.
            await browser(driver.get, f"{gateway.http_url}/console/calls?limit=200")
            await browser(lambda: driver.find_element(By.CSS_SELECTOR, 'th a[data-sort="cost"]').click())
            await until(lambda: "sort=cost" in driver.current_url, what="the listing sorted by cost")
            costs = [float(cell.text.lstrip("$")) for cell in await browser(
                lambda: driver.find_elements(By.CSS_SELECTOR, "#calls tbody tr td:nth-child(11)"))]
            assert costs == sorted(costs, reverse=True) and len(costs) == 25
            await _screenshot(driver, None, tmp_path / "calls-by-cost.png")

            # The call's page: the legend, the lane labels whole, the tool call's arguments and result.
            await browser(driver.get, f"{gateway.http_url}/console/calls/{call_sid}")
            legend = await browser(lambda: driver.find_element(By.ID, "timeline-legend").text)
            assert all(what in legend for what in ("caller", "agent as heard", "turn latency", "tool call", "playhead"))
            for label in await browser(lambda: driver.find_elements(By.CSS_SELECTOR, "text.lane-label")):
                assert await browser(driver.execute_script, "return arguments[0].getBBox().x", label) >= 0
            tools = await browser(lambda: driver.find_element(By.ID, "tools").text)
            assert '{"order": "A-1001"}' in tools and '{"status": "ships tomorrow"}' in tools
            assert "Caller" not in await browser(
                lambda: driver.find_element(By.CSS_SELECTOR, 'li.turn[data-turn="0"]').text)

            # The player and the timeline: a click at 3 s seeks there; the playhead follows the playback.
            audio = await browser(driver.find_element, By.ID, "recording")
            await until(lambda: driver.execute_script("return arguments[0].duration", audio), what="the recording")
            svg = await browser(driver.find_element, By.ID, "timeline")
            seconds = float(await browser(svg.get_attribute, "data-seconds"))
            width = await browser(driver.execute_script, "return arguments[0].getBoundingClientRect().width", svg)
            target_x = (LEFT + 3.0 / seconds * (RIGHT - LEFT)) * width / 1000
            assert await browser(driver.execute_script, "return arguments[0].currentTime", audio) == 0
            await browser(lambda: ActionChains(driver).move_to_element_with_offset(
                svg, round(target_x - width / 2), 0).click().perform())
            at = await until(lambda: driver.execute_script("return arguments[0].currentTime", audio),
                             what="the player to seek")
            assert 2.7 <= at <= 4.5, at
            playhead = await browser(driver.find_element, By.ID, "playhead")
            assert await browser(playhead.get_attribute, "visibility") == "visible"
            first_x = float(await browser(playhead.get_attribute, "x1"))
            assert abs(first_x - (LEFT + at / seconds * (RIGHT - LEFT))) < 40
            await until(lambda: float(playhead.get_attribute("x1")) > first_x + 5, timeout_s=10,
                        what="the playhead to move with the playback")
            await browser(driver.execute_script, "arguments[0].pause()", audio)
            # A turn's time in the transcript seeks too (the second turn began at 2.6 s).
            when = await browser(driver.find_element, By.CSS_SELECTOR, 'li.turn[data-turn="1"] .when')
            await browser(driver.execute_script, "arguments[0].scrollIntoView({block: 'center'})", when)
            await browser(when.click)
            at = await until(lambda: 2.5 < driver.execute_script("return arguments[0].currentTime", audio) < 3.5,
                             what="the player to seek to the turn")
            await browser(driver.execute_script, "arguments[0].pause(); window.scrollTo(0, 0)", audio)
            await _screenshot(driver, None, tmp_path / "call-page.png")
            await _screenshot(driver, svg, tmp_path / "call-timeline.png")
            await _screenshot(driver, await browser(driver.find_element, By.ID, "tools"), tmp_path / "call-tools.png")
            problems = [entry for entry in await browser(driver.get_log, "browser") if entry["level"] == "SEVERE"]
            assert problems == []
        finally:
            await browser(driver.quit)
    print(f"screenshots in {tmp_path}")
