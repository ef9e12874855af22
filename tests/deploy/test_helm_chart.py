"""The Helm chart (deploy/helm/purchase-segments): lint, render, and every rendered object
decoded strictly into the Kubernetes and prometheus-operator API types, offline.

Helm (pinned) and the validator (deploy/helm/validate, pinned by its go.sum) are built
once by scripts/install-deploy-tools.sh into a cache outside the checkout.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from segments.data import EXAMPLE_RULES
from tests.product_interface import command_problem, known_settings

# The first build of Helm from source takes about 5 minutes on the 2-core machine.
pytestmark = pytest.mark.timeout(1800)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "purchase-segments"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"

# Value sets the chart is rendered with: the defaults, one that turns on every optional
# part but the Kafka security settings (KAFKA_SECURED, below), and Redis Cluster over TLS.
FULL = [
    "--set", "apiToken.value=s3cret",
    "--set", "serve.lookupPort=6067",
    "--set", "serve.workers=2",
    "--set", "settings.changesRetention=90d",
    "--set", "settings.clock=event",
    "--set", "settings.topicPrefix=shop1.",
    "--set", "settings.extra.SEGMENTS_TRIGGER_RETRY_SPAN=2h",
    "--set", "worker.persistence.storageClassName=fast",
    "--set", "imagePullSecrets[0].name=registry",
    "--set", "monitoring.labels.release=prometheus",
    "--set", "worker.nodeSelector.disk=ssd",
    "--set", "worker.tolerations[0].key=dedicated",
    "--set", "worker.tolerations[0].operator=Exists",
]  # fmt: skip
KAFKA_SECURED = [
    "--set", "kafka.security.protocol=SASL_SSL",
    "--set", "kafka.security.saslMechanism=SCRAM-SHA-512",
    "--set", "kafka.security.saslUsername=segments",
    "--set", "kafka.security.saslPassword=pw",
    "--set", "kafka.security.caCert=-----BEGIN CERTIFICATE-----",
    "--set", "kafka.security.clientCert=-----BEGIN CERTIFICATE-----",
    "--set", "kafka.security.clientKey=-----BEGIN PRIVATE KEY-----",
]  # fmt: skip
EXISTING_SECRETS = [
    "--set", "redis.existingSecret=my-redis",
    "--set", "apiToken.existingSecret=my-token",
    "--set", "kafka.security.existingSecret=my-kafka",
]  # fmt: skip
REDIS_CLUSTER_TLS = [
    "--set", "redis.url=rediss://:pw@redis-0.redis:6379/0",
    "--set", "redis.cluster=true",
    "--set", "redis.tls.caCert=-----BEGIN CERTIFICATE-----",
    "--set", "redis.tls.clientCert=-----BEGIN CERTIFICATE-----",
    "--set", "redis.tls.clientKey=-----BEGIN PRIVATE KEY-----",
]  # fmt: skip
VARIANTS = {
    "defaults": [],
    "full": FULL,
    "existing-secrets": EXISTING_SECRETS,
    "redis-cluster-tls": REDIS_CLUSTER_TLS,
}

EXPECTED_KINDS = {
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


@pytest.fixture(scope="session")
def tools() -> dict[str, str]:
    """{"helm": path, "validate": path}, built on first use, cached by version."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-deploy-tools.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    paths = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert set(paths) == {"helm", "validate"}, result.stdout
    return paths


def helm(tools: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tools["helm"], *args], capture_output=True, text=True, check=False, cwd=REPO
    )


def render_text(tools: dict[str, str], values: list[str]) -> str:
    result = helm(tools, "template", "shop", str(CHART), "--namespace", "segments", *values)
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(tools: dict[str, str], values: list[str]) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_text(tools, values)) if doc]


def validate(tools: dict[str, str], manifest: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tools["validate"]], input=manifest, capture_output=True, text=True, check=False
    )


def pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        obj["spec"]["template"]["spec"]
        for obj in objects
        if obj["kind"] in ("StatefulSet", "Deployment")
    ]


def find(objects: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    (found,) = (o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix))
    return found


def environment_names(objects: list[dict[str, Any]]) -> set[str]:
    """Every variable the chart's containers get: `env` entries and envFrom ConfigMaps' keys."""
    config_maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    names: set[str] = set()
    for spec in pod_specs(objects):
        for container in spec["containers"]:
            names.update(entry["name"] for entry in container.get("env", []))
            for source in container.get("envFrom", []):
                assert "configMapRef" in source, f"envFrom other than a ConfigMap: {source}"
                names.update(config_maps[source["configMapRef"]["name"]]["data"])
    return names


def test_helm_is_the_pinned_release(tools: dict[str, str]) -> None:
    result = helm(tools, "version", "--template", "{{.Version}}")
    assert result.returncode == 0, result.stderr
    assert tools["helm"].endswith(f"helm-{result.stdout}")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_passes_strictly(tools: dict[str, str], variant: str) -> None:
    result = helm(tools, "lint", "--strict", str(CHART), *VARIANTS[variant])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", [*sorted(VARIANTS), "kafka-secured"])
def test_every_rendered_object_decodes_strictly(tools: dict[str, str], variant: str) -> None:
    values = KAFKA_SECURED if variant == "kafka-secured" else VARIANTS[variant]
    manifest = render_text(tools, values)
    result = validate(tools, manifest)
    assert result.returncode == 0, result.stdout + result.stderr
    checked = {tuple(line.split()[1:3]) for line in result.stdout.splitlines()}
    # With every secret managed outside the chart, the chart renders none.
    expected = (
        EXPECTED_KINDS - {("v1", "Secret")} if variant == "existing-secrets" else EXPECTED_KINDS
    )
    assert checked == expected
    objects = [doc for doc in yaml.safe_load_all(manifest) if doc]
    assert len(result.stdout.splitlines()) == len(objects)


def _default_manifest(tools: dict[str, str]) -> list[dict[str, Any]]:
    return render(tools, [])


def _dump(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (
            lambda objs: find(objs, "StatefulSet")["spec"]["template"]["spec"]["containers"][
                0
            ].__setitem__("imagePullPolice", "Always"),
            'unknown field "spec.template.spec.containers[0].imagePullPolice"',
        ),
        (
            lambda objs: find(objs, "StatefulSet")["spec"].__setitem__("replicas", "two"),
            "StatefulSetSpec.spec.replicas of type int32",
        ),
        (
            lambda objs: find(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0][
                "ports"
            ][0].__setitem__("containerPort", "http"),
            "ContainerPort.spec.template.spec.containers.ports.containerPort of type int32",
        ),
        (
            lambda objs: find(objs, "PrometheusRule")["spec"]["groups"][0]["rules"][0].__setitem__(
                "severity", "page"
            ),
            'unknown field "spec.groups[0].rules[0].severity"',
        ),
        (
            lambda objs: find(objs, "ServiceMonitor")["spec"]["endpoints"][0].__setitem__(
                "intervall", "30s"
            ),
            'unknown field "spec.endpoints[0].intervall"',
        ),
        (
            lambda objs: find(objs, "PodDisruptionBudget", "-worker").__setitem__(
                "apiVersion", "policy/v1beta2"
            ),
            "no kind",
        ),
    ],
    ids=[
        "unknown-container-field",
        "replicas-as-string",
        "port-as-name",
        "unknown-rule-field",
        "unknown-endpoint-field",
        "unknown-api-version",
    ],
)
def test_the_validator_refuses_unknown_fields_and_wrong_types(
    tools: dict[str, str], break_it: Any, expected: str
) -> None:
    objects = _default_manifest(tools)
    assert validate(tools, _dump(objects)).returncode == 0
    break_it(objects)
    result = validate(tools, _dump(objects))
    assert result.returncode == 1
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failures) == 1, result.stdout
    assert expected in failures[0], failures[0]


def test_the_prometheus_rule_is_deploy_prometheus_alerts(tools: dict[str, str]) -> None:
    # The chart reads files/alerts.yml (Helm reads nothing outside the chart); it must be
    # deploy/prometheus/alerts.yml byte for byte: edit that one and copy it over.
    assert (CHART / "files" / "alerts.yml").read_bytes() == ALERTS.read_bytes(), (
        "deploy/helm/purchase-segments/files/alerts.yml differs from"
        " deploy/prometheus/alerts.yml: cp deploy/prometheus/alerts.yml"
        " deploy/helm/purchase-segments/files/alerts.yml"
    )
    rule = find(_default_manifest(tools), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_the_rules_config_map_holds_the_rule_file(tools: dict[str, str], tmp_path: Path) -> None:
    assert (CHART / "files" / "rules.yaml").read_bytes() == EXAMPLE_RULES.read_bytes()
    default = find(_default_manifest(tools), "ConfigMap", "-rules")
    assert default["data"]["rules.yaml"].strip() == EXAMPLE_RULES.read_text().strip()

    mine = tmp_path / "rules.yaml"
    mine.write_text(EXAMPLE_RULES.read_text().replace("version: 1 ", "version: 2 "))
    objects = render(tools, ["--set-file", f"rules={mine}"])
    assert find(objects, "ConfigMap", "-rules")["data"]["rules.yaml"].strip() == (
        mine.read_text().strip()
    )
    # A new rule file changes the pods' checksum, so the workers roll onto it.
    before = find(_default_manifest(tools), "StatefulSet")["spec"]["template"]["metadata"]
    after = find(objects, "StatefulSet")["spec"]["template"]["metadata"]
    assert before["annotations"]["checksum/rules"] != after["annotations"]["checksum/rules"]
    for spec in pod_specs(objects):
        (container,) = spec["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["rules"] == "/etc/segments/rules"
    settings = find(objects, "ConfigMap", "-settings")["data"]
    assert settings["SEGMENTS_RULES"] == "/etc/segments/rules/rules.yaml"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variable_the_chart_sets_is_a_setting(tools: dict[str, str], variant: str) -> None:
    names = environment_names(render(tools, VARIANTS[variant]))
    assert {"SEGMENTS_KAFKA_BOOTSTRAP", "SEGMENTS_REDIS_URL", "SEGMENTS_RULES"} <= names
    assert names <= known_settings(), f"not read by the product: {sorted(names - known_settings())}"


def test_the_replication_factor_is_the_brokers_unless_set(tools: dict[str, str]) -> None:
    default = find(render(tools, []), "ConfigMap", "-settings")["data"]
    assert "SEGMENTS_REPLICATION_FACTOR" not in default
    objects = render(tools, ["--set", "kafka.replicationFactor=3"])
    assert find(objects, "ConfigMap", "-settings")["data"]["SEGMENTS_REPLICATION_FACTOR"] == "3"
    assert "SEGMENTS_REPLICATION_FACTOR" in known_settings()


def test_logs_are_json_at_the_level_of_the_values(tools: dict[str, str]) -> None:
    from streams.settings import load_settings

    default = find(render(tools, []), "ConfigMap", "-settings")["data"]
    assert (default["SEGMENTS_LOG_LEVEL"], default["SEGMENTS_LOG_FORMAT"]) == ("INFO", "json")
    objects = render(tools, ["--set", "settings.logLevel=WARNING"])
    data = find(objects, "ConfigMap", "-settings")["data"]
    settings = load_settings(
        env_file=None, log_level=data["SEGMENTS_LOG_LEVEL"], log_format=data["SEGMENTS_LOG_FORMAT"]
    )
    assert (settings.log_level, settings.log_format) == ("WARNING", "json")


def test_the_kafka_security_variables_are_settings(tools: dict[str, str]) -> None:
    names = environment_names(render(tools, KAFKA_SECURED))
    assert names <= known_settings(), f"not read by the product: {sorted(names - known_settings())}"


@pytest.mark.parametrize("variant", [*sorted(VARIANTS), "kafka-secured"])
def test_every_container_runs_an_existing_command(tools: dict[str, str], variant: str) -> None:
    values = KAFKA_SECURED if variant == "kafka-secured" else VARIANTS[variant]
    commands = []
    for spec in pod_specs(render(tools, values)):
        for container in spec["containers"]:
            assert "command" not in container, "the image's entrypoint is `segments`"
            commands.append(container["args"])
            assert command_problem(container["args"]) is None, command_problem(container["args"])
    assert sorted(args[0] for args in commands) == ["serve", "worker"]


def test_probes_secrets_volumes_and_budgets(tools: dict[str, str]) -> None:
    objects = render(tools, FULL)
    for spec in pod_specs(objects):
        (container,) = spec["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        env = {entry["name"]: entry for entry in container["env"]}
        for secret in ("SEGMENTS_REDIS_URL", "SEGMENTS_API_TOKEN"):
            assert "secretKeyRef" in env[secret]["valueFrom"], f"{secret} is not from a Secret"
    worker = find(objects, "StatefulSet")
    (claim,) = worker["spec"]["volumeClaimTemplates"]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    data_dir = {e["name"]: e.get("value") for e in container["env"]}["SEGMENTS_DATA_DIR"]
    assert mounts[claim["metadata"]["name"]] == data_dir
    assert find(objects, "Service", "-worker")["spec"]["clusterIP"] == "None"
    assert worker["spec"]["serviceName"] == find(objects, "Service", "-worker")["metadata"]["name"]
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert len(budgets) == 2
    secret_names = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
    # The token reaches Prometheus through the Secret, never as plain text in the monitor.
    endpoint = find(objects, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["authorization"]["credentials"]["name"] in secret_names
    assert "s3cret" not in yaml.safe_dump([o for o in objects if o["kind"] != "Secret"])
    serve_args = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert serve_args == ["serve", "--workers", "2", "--lookup-port", "6067"]


def test_the_kafka_credentials_are_a_secret(tools: dict[str, str]) -> None:
    objects = render(tools, KAFKA_SECURED)
    kafka = find(objects, "Secret", "-kafka")
    assert set(kafka["stringData"]) == {"sasl-username", "sasl-password", "ca.crt", "tls.crt",
                                        "tls.key"}  # fmt: skip
    for spec in pod_specs(objects):
        (container,) = spec["containers"]
        env = {entry["name"]: entry for entry in container["env"]}
        assert env["SEGMENTS_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": kafka["metadata"]["name"],
            "key": "sasl-password",
        }
    assert "pw" not in str(find(objects, "ConfigMap", "-settings")["data"].values())


def test_redis_cluster_and_tls_files_reach_both_processes(tools: dict[str, str]) -> None:
    objects = render(tools, REDIS_CLUSTER_TLS)
    data = find(objects, "ConfigMap", "-settings")["data"]
    assert data["SEGMENTS_REDIS_CLUSTER"] == "true"
    files = {name: data[name] for name in data if name.startswith("SEGMENTS_REDIS_SSL_")}
    assert files == {
        "SEGMENTS_REDIS_SSL_CAFILE": "/etc/segments/redis/ca.crt",
        "SEGMENTS_REDIS_SSL_CERTFILE": "/etc/segments/redis/tls.crt",
        "SEGMENTS_REDIS_SSL_KEYFILE": "/etc/segments/redis/tls.key",
    }
    secret = find(objects, "Secret", "-redis-tls")
    assert set(secret["stringData"]) == {"ca.crt", "tls.crt", "tls.key"}
    for spec in pod_specs(objects):
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["redis-tls"]["secret"]["secretName"] == secret["metadata"]["name"]
        (container,) = spec["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["redis-tls"] == "/etc/segments/redis"
    # The defaults: one plain node, no TLS files.
    default = render(tools, [])
    assert not {n for n in find(default, "ConfigMap", "-settings")["data"] if "REDIS_" in n} - {
        "SEGMENTS_REDIS_PREFIX"
    }
    assert not [o for o in default if o["metadata"]["name"].endswith("-redis-tls")]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            ["--set", "worker.replicas=9"],
            "worker.replicas (9) is more than settings.partitions (8)",
        ),
        (["--set", "settings.clock=sometimes"], "settings.clock must be wall or event"),
        (["--set", "kafka.security.protocol=TLS"], "kafka.security.protocol must be"),
        (["--set", "settings.extra.TRIGGER_TIMEOUT=5s"], "SEGMENTS_* settings only"),
        (["--set", "kafka.security.protocol=SASL_SSL"], "saslMechanism is needed"),
    ],
    ids=["workers-over-partitions", "clock", "kafka-protocol", "extra-name", "sasl-incomplete"],
)
def test_the_chart_refuses_a_broken_configuration(
    tools: dict[str, str], values: list[str], message: str
) -> None:
    result = helm(tools, "template", "shop", str(CHART), *values)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
