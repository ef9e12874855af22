"""Fixtures of the fault-injection suite: the proxies, a private Redis, the product, the report.

The suite uses the integration fixtures (real Kafka; a topic and key prefix per test)
and adds what breaks: a private `redis-server` per test (stopped, restarted, emptied;
the shared Redis is never touched), a TCP proxy in front of it, and a TCP proxy in front
of the broker's PROXIED listener (deploy/local/kafka.sh). Kafka clients reconnect to the
address the broker advertises, so a proxy only works on a listener that advertises the
proxy's own port: PROXIED does, and the broker is never stopped, only cut off.

Environment:
  FAULTS_REPORT  where to write the JSON list of scenario outcomes (recovery times);
                 default: faults-report.json in pytest's temporary directory.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from tests.faults.harness import FaultReport, Product, report_path
from tests.faults.proxy import TcpProxy
from tests.helpers import PrivateRedis
from tests.integration import conftest as integration

# The integration fixtures this suite builds on (real Kafka, a topic and key prefix per
# test), made visible here; pytest finds fixtures by the conftest module's attributes.
for _name in (
    "services",
    "kafka_bootstrap",
    "redis_url",
    "kafka_admin",
    "topic_prefix",
    "topics",
    "redis_prefix",
    "segments_env",
):
    globals()[_name] = getattr(integration, _name)

PROXIED = "PROXIED"


@dataclass(frozen=True)
class ProxiedListener:
    """The broker's PROXIED listener: it listens on `port` and advertises `advertised`."""

    port: int
    advertised: int


def _listeners(value: str) -> dict[str, int]:
    result = {}
    for item in filter(None, value.split(",")):
        name, _, address = item.partition("://")
        result[name.strip()] = int(address.rpartition(":")[2])
    return result


def find_proxied_listener(bootstrap: str) -> ProxiedListener | None:
    """Read the broker's own configuration: the PROXIED listener, or None when it has none."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="faults-probe")
    try:
        broker = admin.describe_cluster()["brokers"][0]["node_id"]
        wanted = {"listeners": None, "advertised.listeners": None}
        response = admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(broker), configs=wanted)]
        )
    finally:
        admin.close()
    entries = {entry[0]: entry[1] or "" for entry in response[0].resources[0][4]}
    listening = _listeners(entries.get("listeners", ""))
    advertised = _listeners(entries.get("advertised.listeners", ""))
    if PROXIED not in listening or PROXIED not in advertised:
        return None
    return ProxiedListener(listening[PROXIED], advertised[PROXIED])


@pytest.fixture(scope="session")
def proxied_listener(kafka_bootstrap: str) -> ProxiedListener | None:
    return find_proxied_listener(kafka_bootstrap)


@pytest.fixture
def kafka_proxy(proxied_listener: ProxiedListener | None) -> Iterator[TcpProxy | None]:
    """A proxy on the PROXIED listener's advertised port, or None when the broker has none.

    Scenarios that cut the broker off fail with the reason when it is None
    (Product.require_kafka_proxy); the others run with direct connections.
    """
    if proxied_listener is None:
        yield None
        return
    upstream = ("127.0.0.1", proxied_listener.port)
    with TcpProxy(upstream, listen=("127.0.0.1", proxied_listener.advertised)) as proxy:
        yield proxy


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed (deploy/local/services.sh up installs it)")
    (tmp_path / "redis").mkdir()
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_proxy(redis_server: PrivateRedis) -> Iterator[TcpProxy]:
    with TcpProxy(("127.0.0.1", redis_server.port)) as proxy:
        yield proxy


@pytest.fixture
def product(
    segments_env: dict[str, str],
    kafka_bootstrap: str,
    tmp_path: Path,
    redis_server: PrivateRedis,
    redis_proxy: TcpProxy,
    kafka_proxy: TcpProxy | None,
) -> Iterator[Product]:
    running = Product(
        segments_env, tmp_path, kafka_bootstrap, redis_server, redis_proxy, kafka_proxy
    )
    yield running
    running.stop()


@pytest.fixture(scope="session")
def fault_report(tmp_path_factory: pytest.TempPathFactory) -> FaultReport:
    """The scenarios' outcomes, written as JSON; tests/conftest.py prints them at the end."""
    return FaultReport(report_path(tmp_path_factory.getbasetemp() / "faults-report.json"))
