"""docker-compose.yml and Dockerfile agree with the project: services, ports, settings, versions."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.settings import Settings, load_settings, setting_names

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
KAFKA_POM = REPO_ROOT / "deploy" / "local" / "kafka" / "pom.xml"


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


def pom_kafka_version() -> str:
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = ET.parse(KAFKA_POM).getroot().find("m:properties/m:kafka.version", namespace)
    assert version is not None and version.text
    return version.text


def test_the_four_services_are_defined(compose: dict[str, Any]) -> None:
    assert {"kafka", "redis", "worker", "generator"} <= set(services_of(compose))


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


def test_published_ports_are_the_defaults_on_loopback_only(compose: dict[str, Any]) -> None:
    services = services_of(compose)
    assert services["kafka"]["ports"] == ["127.0.0.1:9092:9092"]
    assert services["redis"]["ports"] == ["127.0.0.1:6379:6379"]
    assert services["worker"]["ports"] == ["127.0.0.1:6066:6066"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_host_clients_reach_kafka_with_the_default_bootstrap(compose: dict[str, Any]) -> None:
    advertised = environment(services_of(compose)["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    default = Settings.model_fields["kafka_bootstrap"].default
    assert f"//{default}" in advertised


def test_containers_reach_kafka_and_redis_where_they_listen(compose: dict[str, Any]) -> None:
    services = services_of(compose)
    advertised = environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    for name in ("worker", "generator"):
        env = environment(services[name])
        assert f"//{env['SEGMENTS_KAFKA_BOOTSTRAP']}" in advertised
        assert env["SEGMENTS_REDIS_URL"].startswith("redis://redis:6379/")


def test_servers_have_health_checks_and_the_worker_waits_for_them(
    compose: dict[str, Any],
) -> None:
    services = services_of(compose)
    for name in ("kafka", "redis", "worker"):
        assert services[name]["healthcheck"]["test"], f"{name} has no health check"
    assert services["worker"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert services["generator"]["depends_on"] == {"worker": {"condition": "service_healthy"}}


def test_worker_and_generator_run_segments_commands_from_the_repo_image(
    compose: dict[str, Any],
) -> None:
    services = services_of(compose)
    worker, generator = services["worker"], services["generator"]
    assert worker["build"] == "."
    assert worker["command"] == ["worker"]
    assert generator["image"] == worker["image"]
    script = " ".join(generator["command"])
    assert "segments generate" in script
    assert "segments produce --input -" in script


def test_every_segments_variable_is_a_setting(compose: dict[str, Any]) -> None:
    known = setting_names()
    for name, service in services_of(compose).items():
        for variable in environment(service):
            if variable.upper().startswith("SEGMENTS_"):
                assert variable in known, f"{name} sets {variable}, which Settings does not read"


@pytest.mark.parametrize("service", ["worker", "generator"])
def test_segments_values_pass_validation(
    compose: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SEGMENTS_"):
            monkeypatch.delenv(name)
    for name, value in environment(services_of(compose)[service]).items():
        if name.startswith("SEGMENTS_") and not value.startswith("${"):
            monkeypatch.setenv(name, value)
    settings = load_settings(env_file=None)
    assert settings.kafka_bootstrap == "kafka:19092"


def test_dockerfile_builds_the_worker_image_on_the_projects_python() -> None:
    dockerfile = DOCKERFILE.read_text()
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "requires-python"
    ]
    assert "FROM python:3.11" in dockerfile and ">=3.11" in requires
    assert 'ENTRYPOINT ["segments"]' in dockerfile
    assert 'CMD ["worker"]' in dockerfile
    assert "-c requirements.lock" in dockerfile  # the image installs the locked versions
    assert "EXPOSE 6066" in dockerfile


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
