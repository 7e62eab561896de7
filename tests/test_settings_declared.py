"""Each setting is declared once (gateway/config/: its variable, type, default, bounds, secrecy, description), and
``Settings``, ``Settings.from_env``, the call core's ``CallConfig`` defaults and the README's table derive from it.

The README test fails when the table drifts from the code: a row whose default or text differs, a declared
setting without a row, or a row for a variable nothing declares. ``python -m gateway.config --readme README.md``
rewrites the table.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.call import CallConfig
from gateway.config import DECLARED, ConfigError, Setting, Settings
from gateway.config.table import BEGIN, END, markdown_table, readme_block, variables
from gateway.media_stream import call_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
READ = [setting for setting in DECLARED if setting.env]  # the variables read from the environment


def configuration_rows(text: str) -> dict[str, tuple[str, str]]:
    """The README's "Configuration" table as {variable: (default cell, meaning cell)}."""
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) != 3 or cells[0] in ("Variable", "---"):
            continue
        for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0]):
            assert name not in rows, f"README: {name} has two rows"
            rows[name] = (cells[1], cells[2])
    return rows


def test_the_readme_table_is_the_one_the_declarations_generate():
    assert BEGIN in README and END in README, "README: the settings table's markers are missing"
    assert readme_block(README) == markdown_table(DECLARED), (
        "README's settings table differs from gateway/config/: run `python -m gateway.config --readme README.md`")


def test_every_declared_variable_has_a_row_with_its_default_and_no_row_is_undeclared():
    rows = configuration_rows(README)
    declared = {name: setting for setting in READ for name in variables(setting)}
    assert sorted(set(rows) - set(declared)) == [], "README rows for variables nothing declares"
    assert sorted(set(declared) - set(rows)) == [], "declared variables with no README row"
    for name, setting in declared.items():
        assert rows[name] == (setting.shown_default(), setting.doc.replace("|", "\\|")), name


def test_the_command_prints_the_table():
    table = subprocess.run([sys.executable, "-m", "gateway.config", "--markdown"], capture_output=True, text=True,
                           check=True, cwd=ROOT).stdout
    assert table == markdown_table(DECLARED)


def test_the_drift_check_sees_a_changed_default(tmp_path):
    """The generated block, not a hand-kept copy: a README with one default changed no longer matches."""
    drifted = README.replace("| `MAX_CALLS` | 100 |", "| `MAX_CALLS` | 200 |")
    assert drifted != README and readme_block(drifted) != markdown_table(DECLARED)
    readme = tmp_path / "README.md"
    readme.write_text(drifted, encoding="utf-8")
    subprocess.run([sys.executable, "-m", "gateway.config", "--readme", str(readme)], check=True, cwd=ROOT,
                   capture_output=True)
    assert readme.read_text(encoding="utf-8") == README  # rewritten from the declarations


def test_every_field_is_bound_to_its_own_declaration():
    bound = {setting.name for setting in DECLARED if setting.name is not None}
    assert set(FIELDS) == bound
    for name, f in FIELDS.items():
        setting = f.metadata["setting"]
        assert setting.name == name
        annotation = f.type if isinstance(f.type, str) else f.type.__name__
        assert annotation.split("[")[0] == setting.kind.__name__, f"{name}: {annotation} vs {setting.kind}"
        assert f.repr is not setting.secret, f"{name}: a secret is left out of the dataclass repr"
        if setting.factory is None:
            assert f.default == setting.default
    assert len({setting.env for setting in READ}) == len(READ), "a variable declared twice"


def test_defaults_are_the_declared_ones_and_within_their_bounds():
    settings = Settings.from_env({}, dotenv=False)
    for setting in READ:
        if setting.name is None or setting.factory is not None:
            continue
        value = getattr(settings, setting.name)
        if setting.name not in ("record_calls_dir", "state_sqlite_path", "store_url", "record_spool_dir"):
            assert value == setting.default, setting.env  # (paths are placed under DATA_DIR)
        if setting.choices:
            assert setting.default in setting.choices
        if setting.low is not None:
            assert setting.high is not None and setting.low <= setting.default / setting.scale <= setting.high


@pytest.mark.parametrize("setting", [s for s in READ if s.low is not None], ids=lambda s: s.env)
def test_declared_bounds_are_enforced_with_the_variable_named(setting: Setting):
    assert setting.high is not None
    beyond = setting.high + 1 if setting.kind is int else setting.high * 2 + 1
    with pytest.raises(ConfigError, match=f"^{setting.env} must be between {setting.low} and {setting.high}"):
        Settings.from_env({setting.env: str(beyond)}, dotenv=False)


@pytest.mark.parametrize("setting", [s for s in READ if s.choices], ids=lambda s: s.env)
def test_declared_choices_are_enforced_with_the_variable_named(setting: Setting):
    with pytest.raises(ConfigError, match=f"^{setting.env} must be one of {', '.join(setting.choices)}"):
        Settings.from_env({setting.env: "no-such-choice"}, dotenv=False)


def test_secrets_are_declared_and_never_shown():
    secret_env = {setting.env: "s" * 40 + "-hidden" for setting in READ if setting.secret and setting.kind is str}
    secret_env.pop("REDIS_URL")
    shown = repr(Settings.from_env({**secret_env, "PUBLIC_URL": "https://gw.example", "TWILIO_ACCOUNT_SID": ""},
                                   dotenv=False))
    assert "-hidden" not in shown
    assert {"REALTIME_API_KEY", "TWILIO_AUTH_TOKEN", "API_KEYS", "OPERATOR_API_KEYS", "STREAM_SECRET",
            "METRICS_API_KEY", "REDIS_URL", "AZURE_OPENAI_API_KEY"} <= {s.env for s in READ if s.secret}


def test_the_call_cores_defaults_come_from_the_declarations():
    """CallConfig (built without Settings in the core's tests) has the settings' defaults where it shares a knob,
    and call_config(Settings()) passes the same values."""
    core = CallConfig(session_update={})
    built = call_config(Settings.from_env({}, dotenv=False))
    for name in ("audio_format", "agent_speaks_first", "greeting_instructions", "interrupt_response",
                 "mark_interval_ms", "max_tools_per_call", "caller_audio_batch_ms", "model_reconnect"):
        declared = FIELDS[name].metadata["setting"].default
        assert getattr(core, name) == declared == getattr(built, name), name
