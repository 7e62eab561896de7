"""The web console in a real headless browser: Debian's Chromium driven by Selenium through chromedriver.

The test logs in with the form, opens the live view, watches a live call's transcript grow while the replay harness
talks, then opens the finished call's page (transcript, cost, timeline, recording player). Without Chromium,
chromedriver or Selenium it skips and says which is missing (``.ci/run`` installs them where it can).

Selenium's calls block; the gateway runs on this test's event loop, so every browser call runs in a thread.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from typing import Any, Callable

import pytest

from gateway.replay import CallerTurn, load_sample, run_call

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
