"""docker-compose.yml and Dockerfile agree with the project: commands, settings, ports, files.

No Docker engine runs here, so the file is checked against what it relies on: every
product command parses with the `segments` command line, every SEGMENTS_* variable is a
setting and passes validation, ports are the settings' ports, Prometheus scrapes the
services where their metrics are, and every mounted file exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.product_interface import (
    command_problem,
    known_settings,
    load_settings_from_environment,
    segments_invocations,
    settings_defaults,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
KAFKA_POM = REPO_ROOT / "deploy" / "local" / "kafka" / "pom.xml"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
GRAFANA = REPO_ROOT / "deploy" / "grafana"

# The services that run the repository's image (`segments ...`), and those of them
# with an HTTP server (/healthz, /readyz, /metrics).
PRODUCT = ("worker", "serve", "generator")
SERVERS = ("worker", "serve")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def services_of(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, whichever of compose's two forms it uses."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(name): "" if value is None else str(value) for name, value in env.items()}


def web_port(service: dict[str, Any]) -> int:
    """The port a product service's HTTP server listens on inside its container."""
    default = settings_defaults()["SEGMENTS_WEB_PORT"]
    return int(environment(service).get("SEGMENTS_WEB_PORT", default))  # type: ignore[call-overload]


def published(service: dict[str, Any]) -> dict[int, str]:
    """container port -> host address:port, from compose's short port syntax."""
    result = {}
    for entry in service.get("ports", []):
        host_ip, host_port, container_port = str(entry).split(":")
        result[int(container_port)] = f"{host_ip}:{host_port}"
    return result


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> repository file or directory, for the `./...` volumes."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target, *_ = str(entry).split(":")
        if source.startswith("./"):
            mounts[target] = REPO_ROOT / source
    return mounts


def pom_kafka_version() -> str:
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = ET.parse(KAFKA_POM).getroot().find("m:properties/m:kafka.version", namespace)
    assert version is not None and version.text
    return version.text


def test_the_whole_stack_is_defined(compose: dict[str, Any]) -> None:
    assert set(services_of(compose)) == {
        "kafka",
        "redis",
        *PRODUCT,
        "prometheus",
        "grafana",
    }


def test_every_image_is_pinned_to_a_release(compose: dict[str, Any]) -> None:
    release = re.compile(
        r"^[a-z0-9./_-]+:v?[0-9]+\.[0-9]+\.[0-9]+(-[a-z0-9.]+)?(@sha256:[0-9a-f]{64})?$"
    )
    for name, service in services_of(compose).items():
        if "build" in service:
            continue  # the repository's own image, built here
        assert release.match(service["image"]), (
            f"{name}: {service['image']} is not a pinned release"
        )


def test_kafka_is_apaches_image_of_the_local_release_in_kraft_mode(
    compose: dict[str, Any],
) -> None:
    kafka = services_of(compose)["kafka"]
    env = environment(kafka)

    assert kafka["image"] == f"apache/kafka:{pom_kafka_version()}"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in name for name in env)
    assert "zookeeper" not in services_of(compose)
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in services_of(compose).items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_host_clients_reach_kafka_and_redis_with_the_default_settings(
    compose: dict[str, Any],
) -> None:
    services = services_of(compose)
    defaults = settings_defaults()
    bootstrap = str(defaults["SEGMENTS_KAFKA_BOOTSTRAP"])
    advertised = environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    assert f"//{bootstrap}" in advertised
    port = int(bootstrap.rpartition(":")[2])
    assert published(services["kafka"])[port] == bootstrap
    redis_default = urlsplit(str(defaults["SEGMENTS_REDIS_URL"]))
    assert published(services["redis"])[redis_default.port or 6379] == redis_default.netloc


def test_containers_reach_kafka_and_redis_where_they_listen(compose: dict[str, Any]) -> None:
    services = services_of(compose)
    kafka = environment(services["kafka"])
    listeners = {url.partition("://")[2] for url in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    listen_ports = {url.rpartition(":")[2] for url in kafka["KAFKA_LISTENERS"].split(",")}
    redis_command = services["redis"]["command"]
    redis_port = (
        redis_command[redis_command.index("--port") + 1] if "--port" in redis_command else "6379"
    )
    for name in PRODUCT:
        env = environment(services[name])
        for server in env["SEGMENTS_KAFKA_BOOTSTRAP"].split(","):
            assert server in listeners, f"{name}: {server} is not an advertised listener"
            host, _, port = server.rpartition(":")
            assert host in services and port in listen_ports
        redis = urlsplit(env["SEGMENTS_REDIS_URL"])
        assert redis.hostname == "redis" and str(redis.port or 6379) == redis_port


def test_product_http_ports_are_the_settings_ports(compose: dict[str, Any]) -> None:
    services = services_of(compose)
    for name in SERVERS:
        service = services[name]
        port = web_port(service)
        assert environment(service)["SEGMENTS_WEB_HOST"] == "0.0.0.0", name
        assert set(published(service)) == {port}, f"{name} publishes {published(service)}"
        probe = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/healthz" in probe, f"{name}'s health check misses its port"
    hosts = [published(services[name])[web_port(services[name])] for name in SERVERS]
    assert len(set(hosts)) == len(hosts), "two services on one host port"
    # The lookup API (serve) is where a user looks first: the settings' default port.
    default = settings_defaults()["SEGMENTS_WEB_PORT"]
    assert published(services["serve"])[web_port(services["serve"])] == f"127.0.0.1:{default}"


def test_servers_have_health_checks_and_start_in_order(compose: dict[str, Any]) -> None:
    services = services_of(compose)
    for name in ("kafka", "redis", *SERVERS):
        assert services[name]["healthcheck"]["test"], f"{name} has no health check"
    assert services["worker"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert services["serve"]["depends_on"]["worker"] == {"condition": "service_healthy"}
    assert services["generator"]["depends_on"] == {"worker": {"condition": "service_healthy"}}


def product_commands(service: dict[str, Any]) -> list[list[str]]:
    """The `segments` argument lists a product service runs (the image's entrypoint is
    `segments`; a shell entrypoint runs a script of `segments` commands)."""
    command = service.get("command", [])
    entrypoint = service.get("entrypoint")
    if entrypoint is None:
        return [list(command)]
    assert entrypoint == ["sh", "-c"], f"unexpected entrypoint {entrypoint}"
    return [args for script in command for args in segments_invocations(script)]


def test_product_services_run_existing_commands_from_the_repo_image(
    compose: dict[str, Any],
) -> None:
    services = services_of(compose)
    run = {}
    for name in PRODUCT:
        service = services[name]
        assert service["build"] == "." and service["image"] == "purchase-segments:local"
        commands = product_commands(service)
        assert commands, f"{name} runs no segments command"
        for args in commands:
            assert command_problem(args) is None, f"{name}: {command_problem(args)}"
        run[name] = [args[0] for args in commands]
    assert run == {"worker": ["worker"], "serve": ["serve"], "generator": ["generate", "produce"]}


def test_the_command_check_refuses_unknown_commands_and_options() -> None:
    assert command_problem(["serve", "--lookup-prot", "6067"]) is not None
    assert command_problem(["serve", "--workers", "two"]) is not None
    assert command_problem(["produce"]) is not None  # --input is required
    assert command_problem(["wrker"]) is not None
    assert segments_invocations("segments generate --seed 1 | gzip | segments produce") == [
        ["generate", "--seed", "1"],
        ["produce"],
    ]


def test_every_segments_variable_is_a_setting(compose: dict[str, Any]) -> None:
    known = known_settings()
    for name, service in services_of(compose).items():
        for variable in environment(service):
            if variable.upper().startswith("SEGMENTS_"):
                assert variable in known, f"{name} sets {variable}, which Settings does not read"
    assert "SEGMENTS_WEB_PORRT" not in known  # the check above can fail


@pytest.mark.parametrize("service", PRODUCT)
def test_segments_values_pass_validation(
    compose: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SEGMENTS_"):
            monkeypatch.delenv(name)
    for name, value in environment(services_of(compose)[service]).items():
        if name.startswith("SEGMENTS_") and not value.startswith("${"):
            monkeypatch.setenv(name, value)
    settings = load_settings_from_environment()
    assert settings.kafka_bootstrap == "kafka:19092"  # type: ignore[attr-defined]


def test_prometheus_scrapes_every_product_server_on_its_metrics_port(
    compose: dict[str, Any],
) -> None:
    services = services_of(compose)
    prometheus = services["prometheus"]
    mounts = bind_mounts(prometheus)
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_path = mounts[config_flag.partition("=")[2]]
    assert config_path.is_file()
    config = yaml.safe_load(config_path.read_text())
    scraped: dict[str, int] = {}
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for group in job["static_configs"]:
            for target in group["targets"]:
                host, _, port = target.rpartition(":")
                scraped[host] = int(port)
    assert scraped == {name: web_port(services[name]) for name in SERVERS}


def test_prometheus_loads_the_alert_rules_of_deploy_prometheus(compose: dict[str, Any]) -> None:
    prometheus = services_of(compose)["prometheus"]
    mounts = bind_mounts(prometheus)
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config = yaml.safe_load(mounts[config_flag.partition("=")[2]].read_text())
    assert config["rule_files"], "Prometheus evaluates no alert rules"
    for rule_file in config["rule_files"]:
        assert mounts[rule_file] == ALERTS, f"{rule_file} is not deploy/prometheus/alerts.yml"
    for target, source in mounts.items():
        assert source.exists(), f"prometheus mounts {source}, which does not exist ({target})"


def test_grafana_provisions_the_datasource_and_every_dashboard(compose: dict[str, Any]) -> None:
    services = services_of(compose)
    mounts = bind_mounts(services["grafana"])
    for target, source in mounts.items():
        assert source.exists(), f"grafana mounts {source}, which does not exist ({target})"
    provisioning = {
        kind: mounts[f"/etc/grafana/provisioning/{kind}"] for kind in ("datasources", "dashboards")
    }
    (datasource,) = (
        ds
        for f in provisioning["datasources"].glob("*.yml")
        for ds in yaml.safe_load(f.read_text())["datasources"]
    )
    url = urlsplit(datasource["url"])
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    assert url.hostname == "prometheus" and url.port == 9090
    assert 9090 in published(services["prometheus"])
    (provider,) = (
        p
        for f in provisioning["dashboards"].glob("*.yml")
        for p in yaml.safe_load(f.read_text())["providers"]
    )
    folder = provider["options"]["path"]
    mounted = {source for target, source in mounts.items() if target.startswith(f"{folder}/")}
    assert mounted == set(GRAFANA.glob("*.json")), "every dashboard of deploy/grafana is loaded"
    for dashboard in mounted:
        document = json.loads(dashboard.read_text())
        kinds = {v["query"] for v in document["templating"]["list"] if v["type"] == "datasource"}
        assert kinds <= {"prometheus"}, f"{dashboard.name} needs a data source not provisioned"


def test_dockerfile_builds_the_image_compose_runs() -> None:
    dockerfile = DOCKERFILE.read_text()
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "FROM python:3.11" in dockerfile and ">=3.11" in pyproject["project"]["requires-python"]
    # The entrypoint is the console script compose's commands are arguments of.
    assert pyproject["project"]["scripts"]["segments"]
    assert 'ENTRYPOINT ["segments"]' in dockerfile
    assert 'CMD ["worker"]' in dockerfile
    assert "-c requirements.lock" in dockerfile  # the image installs the locked versions
    for package in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert f"COPY {package} ./{package}" in dockerfile, f"the image lacks {package}/"
    exposed = {int(port) for port in re.findall(r"^EXPOSE (\d+)", dockerfile, re.MULTILINE)}
    assert exposed == {int(settings_defaults()["SEGMENTS_WEB_PORT"])}  # type: ignore[call-overload]
    for variable in re.findall(r"\b(SEGMENTS_[A-Z_]+)=", dockerfile):
        assert variable in known_settings(), f"the Dockerfile sets {variable}, not a setting"


def _docker_compose() -> list[str] | None:
    """The compose command that works here: `docker compose`, else `docker-compose`, else None."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return command
    return None


def test_docker_compose_accepts_the_file() -> None:
    command = _docker_compose()
    if command is None:
        pytest.skip("no docker compose here: the file was checked by the tests above only")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
