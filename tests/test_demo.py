"""`gateway demo` (README command one) runs offline and reports a clean call."""

from dataclasses import replace

from gateway.config import Settings
from gateway.tooling.demo import run_demo
from gateway.audio.wavio import read_wav


async def test_demo_runs_offline_and_writes_what_the_caller_heard(tmp_path, capsys):
    output = tmp_path / "heard.wav"
    settings = replace(Settings.from_env({}), api_key="")
    assert await run_demo(settings, output=str(output)) == 0
    printed = capsys.readouterr().out
    assert "truncate errors: 0" in printed
    assert "barge-in 'barge-in': caller started -> agent audio stopped:" in printed
    samples, rate = read_wav(output)
    assert rate == 8000 and len(samples) > 8000 * 5
    assert abs(samples.astype(float)).max() > 1000  # the caller heard the agent
