"""infra/: the container image recipe, compose.yaml and the Kubernetes manifests agree with the gateway.

* Each Kustomize overlay is rendered with ``kubectl kustomize`` and every object is validated against the
  Kubernetes JSON schemas shipped by ``kubernetes-validate`` (strict: an unknown field fails), offline.
* The Deployment's drain agrees with the gateway's settings: grace period >= DRAIN_TIMEOUT_S + preStop sleep +
  a margin, the probes hit routes the app has (and /readyz answers 503 while draining), the ports line up.
* Every setting the manifests and compose.yaml give the gateway is one gateway/config.py reads, with a value
  it accepts.
* compose.yaml has two gateways, Redis, PostgreSQL and a load balancer that passes WebSocket upgrades on.
* The Dockerfile is multi-stage, runs as the user the manifests expect, and its HEALTHCHECK command works
  against a real gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is a test dependency: pip install -e '.[test]'")

from gateway.server.app import create_app  # noqa: E402
from gateway.config import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
# The Kubernetes version whose schemas the manifests are validated against (kubernetes-validate ships 1.25 up).
K8S_VERSION = "1.32"
OVERLAYS = {
    "base": [K8S / "base"],
    "production": [K8S / "overlays" / "production"],
    # The optional component on top of production, as an operator would enable it.
    "production+hpa-active-calls": [K8S / "overlays" / "production", K8S / "components" / "hpa-active-calls"],
}
# Time the process needs after the drain deadline to close its sockets, store and Redis connections.
SHUTDOWN_MARGIN_S = 10
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|REDIS_URL|STORE_URL")


def kubectl() -> str:
    found = shutil.which("kubectl") or ("/usr/bin/kubectl" if os.path.exists("/usr/bin/kubectl") else None)
    if found is None:
        pytest.skip("kubectl is not installed: the Kustomize overlays cannot be rendered (kubectl >= 1.27 "
                    "bundles kustomize)")
    return found


def render(parts: list[Path]) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of one kustomization (parts[0]), with the components parts[1:] added to it."""
    with tempfile.TemporaryDirectory() as tmp:
        target = str(parts[0])
        if len(parts) > 1:
            # kustomize takes resources and components relative to the kustomization, never absolute.
            rel = [os.path.relpath(part, tmp) for part in parts]
            Path(tmp, "kustomization.yaml").write_text(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
                f"resources:\n  - {rel[0]}\ncomponents:\n" + "".join(f"  - {c}\n" for c in rel[1:]))
            target = tmp
        done = subprocess.run([kubectl(), "kustomize", target], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"kubectl kustomize {target} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=list(OVERLAYS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(OVERLAYS[request.param])


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def gateway_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "gateway")


def container_env(docs: list[dict[str, Any]]) -> tuple[dict[str, str], set[str]]:
    """(the plain environment the gateway container gets, the names set from Secrets).

    ConfigMaps of ``envFrom`` first, then ``env`` over them (Kubernetes' precedence)."""
    container = gateway_container(docs)
    configmaps = {doc["metadata"]["name"]: doc.get("data", {}) for doc in docs if doc["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in configmaps, f"envFrom names ConfigMap {name}, which is not rendered"
            env.update(configmaps[name])
    from_secrets: set[str] = set()
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            from_secrets.add(item["name"])
            env.pop(item["name"], None)
    return env, from_secrets


def settings_names() -> set[str]:
    """Every environment variable the gateway's settings declare (gateway/config/: one declaration each)."""
    from gateway.config import DECLARED

    return {name for setting in DECLARED for name in (setting.env, *setting.also) if name}


def effective_settings(env: dict[str, str]) -> Settings:
    """The settings the gateway would run with under ``env`` (a ConfigError fails the test)."""
    return Settings.from_env(env, dotenv=False)


# ---------------------------------------------------------------------------------------------- Kubernetes


def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(rendered) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is a test dependency: pip install -e '.[test]'")
    name, docs = rendered
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "Ingress", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy",
            "ConfigMap", "ServiceAccount"} <= kinds, f"{name}: {sorted(kinds)}"
    assert "Secret" not in kinds, f"{name}: secrets are referenced, never rendered with values"
    errors = []
    for doc in docs:
        label = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            version = kubernetes_validate.validate(doc, K8S_VERSION + ".0", strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{label}: {error.message} at {'/'.join(map(str, error.absolute_path))}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{label}: {error.message}")
        else:
            assert version == K8S_VERSION, f"{label} validated against {version}, not {K8S_VERSION}"
    assert not errors, f"{name}:\n" + "\n".join(errors)


def test_the_grace_period_covers_the_prestop_sleep_and_the_drain(rendered) -> None:
    name, docs = rendered
    default_drain = Settings().drain_timeout_s
    env, _ = container_env(docs)
    settings = effective_settings(env)
    drain = settings.drain_timeout_s
    if "DRAIN_TIMEOUT_S" not in env:
        assert drain == default_drain
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    pre_stop = gateway_container(docs)["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        sleep_s = int(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep", f"{name}: preStop is expected to be a sleep, got {command}"
        sleep_s = int(command[1])
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= sleep_s + drain + SHUTDOWN_MARGIN_S, (
        f"{name}: terminationGracePeriodSeconds {grace} < preStop {sleep_s} + DRAIN_TIMEOUT_S {drain} + "
        f"{SHUTDOWN_MARGIN_S}: Kubernetes would kill live calls")
    # A drain shorter than the longest call would cut calls on every deploy.
    assert drain >= settings.max_call_duration_s, (name, drain, settings.max_call_duration_s)
    # New pods before old ones go: a rollout never lowers the number of pods taking calls.
    strategy = one(docs, "Deployment")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_the_probes_hit_the_app_routes_and_readiness_fails_while_draining(rendered) -> None:
    from starlette.testclient import TestClient

    name, docs = rendered
    container = gateway_container(docs)
    readiness, liveness = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz", name
    assert liveness["path"] == "/healthz", name
    startup = container.get("startupProbe", {}).get("httpGet")
    app = create_app(Settings())
    paths = {getattr(route, "path", None) for route in app.routes}
    for probe in filter(None, (readiness, liveness, startup)):
        assert probe["path"] in paths, f"{name}: probe path {probe['path']} is not a route of the app"
    with TestClient(app) as client:
        assert client.get(liveness["path"]).status_code == 200
        assert client.get(readiness["path"]).status_code == 200
        app.state.gateway.start_drain()
        # Draining: out of the Service for new calls, yet alive (a liveness failure would kill the live calls).
        assert client.get(readiness["path"]).status_code == 503
        assert client.get(liveness["path"]).status_code == 200


def test_the_ports_line_up(rendered) -> None:
    name, docs = rendered
    container = gateway_container(docs)
    env, _ = container_env(docs)
    settings = effective_settings(env)
    assert settings.host == "0.0.0.0", f"{name}: HOST must be 0.0.0.0 in a pod, not {settings.host}"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == settings.port, f"{name}: containerPort {ports['http']} != PORT {settings.port}"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            port = container[probe]["httpGet"]["port"]
            assert ports.get(port, port) == settings.port, (name, probe, port)
    service = one(docs, "Service")
    target = service["spec"]["ports"][0]["targetPort"]
    assert ports.get(target, target) == settings.port, (name, "Service targetPort", target)
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"].get("annotations", {})
    # /metrics is scraped where the gateway serves it: METRICS_PORT, on an address Prometheus' pod can reach.
    if settings.metrics_port:
        assert ports.get("metrics") == settings.metrics_port, (name, "containerPort metrics", ports)
        assert settings.metrics_host == "0.0.0.0", f"{name}: METRICS_HOST must be 0.0.0.0 in a pod"
    if "prometheus.io/port" in annotations:
        assert int(annotations["prometheus.io/port"]) == (settings.metrics_port or settings.port)
    policy = one(docs, "NetworkPolicy")["spec"]
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            allowed = {settings.port, settings.metrics_port} - {0}
            assert ports.get(port["port"], port["port"]) in allowed, (name, "NetworkPolicy", port)
    if settings.metrics_port:  # only the metrics port is reachable from Prometheus, and only from there
        reaching = [rule for rule in policy["ingress"]
                    if any(ports.get(p["port"], p["port"]) == settings.metrics_port for p in rule["ports"])]
        assert len(reaching) == 1 and "prometheus" in json.dumps(reaching[0]["from"]), (name, reaching)


def test_selectors_and_references_match(rendered) -> None:
    name, docs = rendered
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(one(docs, "Service")["spec"]["selector"])
    assert selects(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert selects(one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"])
    target = one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], f"{name}: the HPA owns the replica count"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] in {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == dockerfile_user()


def test_the_ingress_outlasts_a_call_and_serves_public_url(rendered) -> None:
    name, docs = rendered
    env, _ = container_env(docs)
    settings = effective_settings(env)
    ingress = one(docs, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    for key in ("nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"):
        assert int(annotations[key]) > settings.max_call_duration_s, (
            f"{name}: {key}={annotations[key]} would cut a call of MAX_CALL_DURATION_S={settings.max_call_duration_s}")
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    assert urlsplit(settings.public_url).scheme == "https", f"{name}: Twilio streams only to wss://"
    assert urlsplit(settings.public_url).hostname in hosts, (
        f"{name}: PUBLIC_URL {settings.public_url} is not served by the Ingress ({sorted(hosts)}): "
        "every signature would fail")
    tls_hosts = {host for tls in ingress["spec"].get("tls", []) for host in tls["hosts"]}
    assert hosts <= tls_hosts, f"{name}: hosts without TLS: {hosts - tls_hosts}"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = one(docs, "Service")
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"].get("name") in {p.get("name") for p in service["spec"]["ports"]} or \
        backend["port"].get("number") in {p["port"] for p in service["spec"]["ports"]}


def test_settings_are_ones_the_gateway_reads_and_secrets_are_only_referenced(rendered) -> None:
    name, docs = rendered
    env, from_secrets = container_env(docs)
    known = settings_names()
    unknown = sorted((set(env) | from_secrets) - known)
    assert not unknown, f"{name}: settings gateway/config.py does not read: {unknown}"
    leaked = sorted(key for key in env if SECRET_NAME.search(key) and key not in ("TRUSTED_PROXY_IPS",))
    assert not leaked, f"{name}: secret settings with a plain value (use secretKeyRef): {leaked}"
    for required in ("TWILIO_AUTH_TOKEN", "STREAM_SECRET", "REDIS_URL", "STORE_URL"):
        assert required in from_secrets, f"{name}: {required} should come from the Secret"
    secret_refs = {item["valueFrom"]["secretKeyRef"]["name"] for item in gateway_container(docs)["env"]
                   if "secretKeyRef" in item.get("valueFrom", {})}
    assert secret_refs == {"gateway-secrets"}, secret_refs
    effective_settings(env)  # every plain value is one the gateway accepts


def test_production_is_bigger_than_the_base() -> None:
    base, production = render(OVERLAYS["base"]), render(OVERLAYS["production"])

    def cpu_m(value: str) -> float:
        return float(value[:-1]) if value.endswith("m") else float(value) * 1000

    def mem_mi(value: str) -> float:
        return float(value[:-2]) * (1024 if value.endswith("Gi") else 1)

    for resource, unit in (("cpu", cpu_m), ("memory", mem_mi)):
        b = unit(gateway_container(base)["resources"]["requests"][resource])
        p = unit(gateway_container(production)["resources"]["requests"][resource])
        assert p > b, (resource, b, p)
    assert one(production, "HorizontalPodAutoscaler")["spec"]["minReplicas"] > \
        one(base, "HorizontalPodAutoscaler")["spec"]["minReplicas"]
    assert {d["metadata"].get("namespace") for d in production} == {"gateway-production"}


# ---------------------------------------------------------------------------------------------- compose


def load_compose() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def interpolate(value: Any) -> str:
    """A compose value with ``${NAME:-default}`` as its default and ``${NAME:?error}`` as a stand-in."""
    def one_var(match: re.Match[str]) -> str:
        op, rest = match.group(2), match.group(3)
        if op == ":-":
            return rest
        if op == ":?":
            return "x" * 40  # required: the operator must set it
        return ""

    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:-|:\?)([^}]*))?\}", one_var, str(value))


def compose_gateways(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items()
            if svc.get("build", {}).get("dockerfile") == "infra/Dockerfile"}


def test_compose_has_two_gateways_redis_postgres_and_a_load_balancer() -> None:
    compose = load_compose()
    services = compose["services"]
    gateways = compose_gateways(compose)
    assert len(gateways) == 2, sorted(gateways)
    images = {name: svc.get("image", "") for name, svc in services.items()}
    redis = [n for n, image in images.items() if image.startswith("redis")]
    postgres = [n for n, image in images.items() if image.startswith("postgres")]
    balancers = [n for n, image in images.items() if image.startswith("nginx")]
    assert redis and postgres and balancers, images
    known = settings_names()
    for name, svc in gateways.items():
        assert (INFRA / svc["build"]["context"]).resolve() == ROOT, (name, "the build context is the repository")
        assert (ROOT / svc["build"]["dockerfile"]).exists()
        env = {key: interpolate(value) for key, value in svc["environment"].items()}
        assert not sorted(set(env) - known), f"{name}: settings gateway/config.py does not read: {set(env) - known}"
        settings = effective_settings(env)
        assert urlsplit(settings.redis_url).hostname in redis, (name, settings.redis_url)
        store = urlsplit(settings.store_url)
        assert store.scheme.startswith("postgres") and store.hostname in postgres, (name, settings.store_url)
        assert settings.host == "0.0.0.0"
        # One stream secret for both: a credential issued by one gateway is checked by the other.
        assert "STREAM_SECRET" in svc["environment"]
        depends = svc.get("depends_on", {})
        assert set(redis) <= set(depends) and set(postgres) <= set(depends), (name, depends)
        # docker stop waits this long for the drain before SIGKILL.
        grace = svc["stop_grace_period"]
        grace_s = int(grace[:-1]) * (60 if grace.endswith("m") else 1)
        assert grace_s >= settings.drain_timeout_s + SHUTDOWN_MARGIN_S, (name, grace, settings.drain_timeout_s)
        # The load balancer's fixed address is the one trusted proxy.
        lb_address = services[balancers[0]]["networks"]["gateway"]["ipv4_address"]
        assert settings.trusted_proxy_ips == (lb_address,), (name, settings.trusted_proxy_ips)
    assert len({json.dumps(svc["environment"], sort_keys=True) for svc in gateways.values()}) == 1


def test_the_load_balancer_proxies_websocket_upgrades_to_both_gateways() -> None:
    compose = load_compose()
    gateways = compose_gateways(compose)
    lb = next(svc for svc in compose["services"].values() if svc.get("image", "").startswith("nginx"))
    mounts = [volume.split(":") for volume in lb["volumes"]]
    config_file = next(INFRA / source for source, target, *_ in mounts if target == "/etc/nginx/nginx.conf")
    config = re.sub(r"#[^\n]*", "", config_file.read_text())
    directives = {" ".join(line.split()) for line in config.replace("{", ";").replace("}", ";").split(";")}
    assert "proxy_http_version 1.1" in directives
    assert "proxy_set_header Upgrade $http_upgrade" in directives
    upgrade_map = re.search(r"map \$http_upgrade \$(\w+) \{([^}]*)\}", config)
    assert upgrade_map, "no map from $http_upgrade to the Connection header"
    assert f"proxy_set_header Connection ${upgrade_map.group(1)}" in directives
    assert re.search(r"default\s+upgrade;", upgrade_map.group(2))
    upstreams = set(re.findall(r"server\s+([\w.-]+:\d+)", config))
    for name, svc in gateways.items():
        port = effective_settings({k: interpolate(v) for k, v in svc["environment"].items()}).port
        assert f"{name}:{port}" in upstreams, (name, port, upstreams)
    read_timeout = re.search(r"proxy_read_timeout\s+(\d+)s?;", config)
    assert read_timeout and int(read_timeout.group(1)) > Settings().max_call_duration_s
    assert "proxy_pass http://" in config


# ---------------------------------------------------------------------------------------------- image


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split by FROM."""
    text = (INFRA / "Dockerfile").read_text()
    lines = [line for line in text.replace("\\\n", " ").splitlines() if line.strip() and not line.lstrip().startswith("#")]
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line.strip())
    return stages


def dockerfile_user() -> int:
    user = [line for line in dockerfile_stages()[-1] if line.upper().startswith("USER ")][-1]
    return int(user.split()[1].split(":")[0])


def test_the_image_is_multi_stage_non_root_and_serves_the_gateway() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2 and " AS " in stages[0][0].upper(), "a build stage, then the final one"
    final = stages[-1]
    text = "\n".join(final)
    assert "COPY --from=" in text
    assert not re.search(r"build-essential|\bgcc\b|\bg\+\+|\bclang\b|\bmake\b", text), "compilers in the final stage"
    assert dockerfile_user() != 0
    entry = next(line for line in final if line.upper().startswith("ENTRYPOINT "))
    assert json.loads(entry.split(None, 1)[1]) == ["gateway", "serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["gateway"] == "gateway.cli:main"
    expose = next(line for line in final if line.upper().startswith("EXPOSE "))
    assert int(expose.split()[1].split("/")[0]) == 8080
    assert "HOST=0.0.0.0" in text and "PORT=8080" in text
    # The build context is the repository root; the ignore file beside the Dockerfile keeps what COPY needs.
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", "\n".join(stages[0]), re.MULTILINE):
        for source in copied.split():
            assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} is left out of the build context"


async def test_the_image_healthcheck_command_passes_on_a_live_gateway_and_fails_without_one() -> None:
    from tests.conftest import start_gateway

    line = next(line for line in dockerfile_stages()[-1] if line.upper().startswith("HEALTHCHECK "))
    command = json.loads(line[line.index("CMD") + 3:].strip())
    assert command[0] == "python" and "/healthz" in command[-1]
    command = [sys.executable, *command[1:]]

    async def run(port: int) -> int:
        env = {"PATH": os.environ.get("PATH", ""), "PORT": str(port)}
        process = await asyncio.create_subprocess_exec(*command, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                       stderr=asyncio.subprocess.DEVNULL)
        return await asyncio.wait_for(process.wait(), 30)

    async with start_gateway() as gateway:
        port = urlsplit(gateway.http_url).port
        assert await run(port) == 0
    assert await run(port) != 0, "the health check passed with no gateway listening"


def test_the_readme_commands_name_files_that_exist() -> None:
    readme = (INFRA / "README.md").read_text()
    for path in re.findall(r"infra/[\w./-]+", readme):
        path = path.rstrip(".")
        assert (ROOT / path).exists(), f"infra/README.md names {path}, which does not exist"


def test_the_image_gets_every_data_file_of_the_package() -> None:
    """The image installs a wheel, not the source tree: a data file the package reads (samples, scenarios, SQL
    migrations...) must be listed in pyproject.toml's package-data or the container is missing it."""
    import fnmatch

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gateway"]
    package = ROOT / "gateway"
    missing = []
    for path in package.rglob("*"):
        # Code, and development helpers the running gateway never opens (shell scripts, notes).
        if not path.is_file() or path.suffix in (".py", ".pyc", ".pyi", ".sh", ".md") or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(package).as_posix()
        if not any(fnmatch.fnmatchcase(relative, pattern) for pattern in patterns):
            missing.append(relative)
    assert not missing, f"not in [tool.setuptools.package-data] gateway = {patterns}: {sorted(missing)}"
