"""The container image's start, without a Docker engine: infra/Dockerfile's own start command and environment, run
as the image's user (10001) from a read-only working directory, as ``docker run`` would.

The image's user cannot write its working directory (/app), so the gateway's files go to ``DATA_DIR`` (/data), a
volume that user owns: the default SQLite records file lands there and the gateway answers ``/healthz``. When the
data directory is not writable, ``gateway serve`` stops with one line naming ``STORE_URL``, the path and the fix.
The Dockerfile, compose.yaml and the Kubernetes manifests are checked to declare that volume.

``ENTRYPOINT``/``CMD``/``ENV``/``USER``/``WORKDIR``/``VOLUME`` are read from infra/Dockerfile. What stands in for the
image: a ``gateway`` launcher on ``PATH`` (as /opt/venv/bin/gateway is, from pyproject.toml's console script) run by
an interpreter the image's user can execute, importing this checkout and its dependencies; a temporary directory for
the volume mounted at ``DATA_DIR``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.server.runner import free_port
from tests.test_infra import INFRA, ROOT, compose_gateways, dockerfile_stages, dockerfile_user, load_compose
from tests.test_operator_paths import lines_of, run_once, serving

DOCKER_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def final_stage(keyword: str) -> list[str]:
    """The arguments of every ``keyword`` instruction of the image's final stage."""
    return [line.split(None, 1)[1] for line in dockerfile_stages()[-1] if line.split(None, 1)[0].upper() == keyword]


def image_env() -> dict[str, str]:
    """The final stage's ``ENV``, ``$NAME`` and ``${NAME}`` expanded as Docker does (PATH starts as Docker's)."""
    env = {"PATH": DOCKER_DEFAULT_PATH}
    for arguments in final_stage("ENV"):
        words = shlex.split(arguments)
        pairs = [word.split("=", 1) for word in words] if "=" in words[0] else [[words[0], " ".join(words[1:])]]
        for name, value in pairs:
            for known, known_value in sorted(env.items(), key=lambda item: -len(item[0])):
                value = value.replace("${" + known + "}", known_value).replace("$" + known, known_value)
            env[name] = value
    return env


def image_command() -> list[str]:
    """``ENTRYPOINT`` then ``CMD``, both in exec form (JSON)."""
    entry = json.loads(final_stage("ENTRYPOINT")[-1])
    cmd = json.loads((final_stage("CMD") or ["[]"])[-1])
    return [*entry, *cmd]


def image_volumes() -> list[str]:
    volumes: list[str] = []
    for arguments in final_stage("VOLUME"):
        volumes += json.loads(arguments) if arguments.lstrip().startswith("[") else arguments.split()
    return volumes


def image_user() -> tuple[int, int]:
    user = final_stage("USER")[-1].split(":")
    return int(user[0]), int(user[1]) if len(user) > 1 else int(user[0])


def data_dir() -> str:
    return image_env()["DATA_DIR"]


# ---------------------------------------------------------------------------------------------- declared


def test_the_data_directory_is_a_volume_the_image_user_owns() -> None:
    directory = data_dir()
    assert directory.startswith("/") and directory != final_stage("WORKDIR")[-1]
    assert directory in image_volumes(), f"VOLUME does not declare DATA_DIR {directory}"
    uid, gid = image_user()
    assert uid == dockerfile_user() != 0
    runs = " ".join(final_stage("RUN"))
    assert f"mkdir -p {directory}" in runs and f"chown {uid}:{gid} {directory}" in runs, runs
    assert "STORE_URL" not in image_env(), "the image keeps the default store: SQLite in DATA_DIR"


def test_compose_mounts_a_volume_at_the_data_directory() -> None:
    compose = load_compose()
    for name, service in compose_gateways(compose).items():
        mounts = [volume.split(":") for volume in service.get("volumes", [])]
        sources = [source for source, target, *_ in mounts if target == data_dir()]
        assert sources, f"{name}: no volume at {data_dir()}"
        assert sources[0] in compose["volumes"], f"{name}: {sources[0]} is not a named volume"
    text = (INFRA / "compose.yaml").read_text()
    assert "Compose v2" in text and "Compose v2" in (INFRA / "README.md").read_text()


def test_kubernetes_mounts_a_writable_volume_at_the_data_directory() -> None:
    from tests.test_infra import OVERLAYS, gateway_container, render

    for name, parts in OVERLAYS.items():
        docs = render(parts)
        container = gateway_container(docs)
        mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        directory = env.get("DATA_DIR") or data_dir()
        assert directory in mounts, f"{name}: nothing mounted at DATA_DIR {directory} (the root filesystem is read-only)"
        pod = next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[directory])
        assert not volume.get("configMap") and not volume.get("secret"), f"{name}: {volume} is read-only"
        assert pod["securityContext"].get("fsGroup") == image_user()[1], "the volume must be the gateway's group's"


# ---------------------------------------------------------------------------------------------- run


def _python_path() -> str:
    """This checkout and the dependencies this interpreter imports."""
    paths = sysconfig.get_paths()
    return os.pathsep.join(dict.fromkeys([str(ROOT), paths["purelib"], paths["platlib"]]))


def _as_user(uid: int, gid: int) -> Callable[[], None] | None:
    if os.geteuid() != 0:
        return None  # already an unprivileged user: run as is

    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return drop


def _interpreter(uid: int, gid: int) -> str:
    """A Python of this version the image's user can run (this one may sit under a private home directory)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, f"/usr/bin/python{version}", shutil.which(f"python{version}")]
    for candidate in dict.fromkeys(c for c in candidates if c):
        try:
            probe = subprocess.run([candidate, "-c", "import gateway.cli, uvicorn, numpy"], cwd="/",
                                   env={"PYTHONPATH": _python_path(), "PATH": DOCKER_DEFAULT_PATH},
                                   capture_output=True, preexec_fn=_as_user(uid, gid), timeout=60, check=False)
        except OSError:  # the user cannot even reach it
            continue
        if probe.returncode == 0:
            return candidate
    pytest.skip(f"no Python {version} that user {uid} can run and import the gateway with: {candidates}")


@pytest.fixture
def image_root() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="gateway-image-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        for path in base.rglob("*"):  # read-only directories first made removable
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(base)


def image_run(root: Path, *, data_writable: bool) -> tuple[list[str], Path, dict[str, str], Path, object]:
    """(command, working directory, environment, data directory, user switch) of a ``docker run``."""
    uid, gid = image_user()
    bindir = root / "bin"  # stands in for /opt/venv/bin
    bindir.mkdir()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    command = image_command()
    module, function = scripts[command[0]].split(":")
    launcher = bindir / command[0]
    # As pip writes console scripts (the guard matters: --workers spawns processes that import __main__ again).
    launcher.write_text(f"#!{_interpreter(uid, gid)}\nimport sys\nfrom {module} import {function}\n"
                        f"if __name__ == '__main__':\n    sys.exit({function}())\n")
    launcher.chmod(0o755)
    workdir = root / "app"  # WORKDIR, owned by root as in the image: the user cannot write it
    workdir.mkdir()
    workdir.chmod(0o555)
    data = root / "data"  # the volume at DATA_DIR
    data.mkdir()
    if data_writable and os.geteuid() == 0:
        os.chown(data, uid, gid)
    data.chmod(0o750 if data_writable else 0o555)
    env = image_env()
    if "DATA_DIR" in env:  # the volume is mounted where the image says; without it the files go to WORKDIR
        env["DATA_DIR"] = str(data)
    env.update(PATH=f"{bindir}:{env['PATH']}", PORT=str(free_port()), HOST="127.0.0.1", HOME="/nonexistent",
               PYTHONPATH=_python_path())
    return command, workdir, env, data, _as_user(uid, gid)


@pytest.mark.parametrize("arguments", [[], ["--workers", "2"]], ids=["one-process", "workers"])
def test_the_image_start_command_serves_as_its_user_from_a_read_only_working_directory(
        image_root: Path, arguments: list[str]) -> None:
    command, workdir, env, data, as_user = image_run(image_root, data_writable=True)
    # `docker run IMAGE --workers 2`: arguments after the image replace CMD and follow ENTRYPOINT.
    with serving([*command, *arguments], cwd=workdir, env=env, preexec_fn=as_user) as gateway:
        gateway.wait_for_health(int(env["PORT"]))
        if arguments:  # every worker up before SIGTERM (one still starting would die of it, not drain)
            gateway.wait_for(lambda: gateway.output().count("Application startup complete.") == 2, "two workers up")
        records = data / "gateway-records.db"
        assert records.is_file(), sorted(os.listdir(data))
        assert records.stat().st_uid == image_user()[0]
        if arguments:  # the workers' shared state is in the volume too
            assert (data / "gateway-state.db").is_file(), sorted(os.listdir(data))
        assert not os.listdir(workdir)


def test_an_unwritable_data_directory_stops_the_start_with_one_line_naming_store_url(image_root: Path) -> None:
    command, workdir, env, data, as_user = image_run(image_root, data_writable=False)
    result = run_once(command, cwd=workdir, env=env, preexec_fn=as_user)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = lines_of(result.stderr)
    assert len(errors) == 1, result.stderr
    line = errors[0]
    assert f"STORE_URL=sqlite:///{data}/gateway-records.db" in line, line
    assert "not writable" in line and "fix:" in line and "DATA_DIR" in line, line
    assert not os.listdir(data)
    with contextlib.suppress(OSError):
        assert stat.S_IMODE(os.stat(workdir).st_mode) == 0o555
