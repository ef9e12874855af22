"""Real Kafka and Redis for integration tests: started once per session, isolated per test.

Session fixtures make sure the local services answer (running
`deploy/local/services.sh up` when they do not) and yield their addresses. Each test
gets its own topic prefix and Redis key prefix, and everything created under them
(topics, consumer groups, keys) is deleted when the test ends.

    def test_x(kafka_bootstrap, create_topics, topic_prefix, redis_client, redis_prefix): ...
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import GroupIdNotFoundError, UnknownTopicOrPartitionError

from streams.settings import Settings, Topics, load_settings
from tests.helpers import PrivateRedis, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICES_SCRIPT = REPO_ROOT / "deploy" / "local" / "services.sh"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class LocalServices:
    """Where the running Kafka and Redis answer."""

    kafka_bootstrap: str
    redis_url: str


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(address if "://" in address else f"//{address}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _start_local_services(kafka: tuple[str, int], redis_at: tuple[str, int]) -> None:
    """Runs services.sh up on the configured ports; fails the session if that fails."""
    for what, (host, port) in (("Kafka", kafka), ("Redis", redis_at)):
        if host not in _LOOPBACK:
            pytest.fail(
                f"{what} at {host}:{port} does not answer and is not local, so it cannot be "
                "started here; start it or point SEGMENTS_KAFKA_BOOTSTRAP/SEGMENTS_REDIS_URL "
                "at the local services"
            )
    env = {**os.environ, "LOCAL_KAFKA_PORT": str(kafka[1]), "LOCAL_REDIS_PORT": str(redis_at[1])}
    result = subprocess.run(
        ["bash", str(SERVICES_SCRIPT), "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"deploy/local/services.sh up failed (exit {result.returncode}):\n"
            f"{result.stdout}{result.stderr}"
        )


@pytest.fixture(scope="session")
def services() -> LocalServices:
    """Kafka and Redis that answer; started with deploy/local/services.sh if needed.

    Addresses come from SEGMENTS_KAFKA_BOOTSTRAP and SEGMENTS_REDIS_URL (defaults:
    the local services' default ports). The services are left running afterwards.
    """
    settings = load_settings()
    kafka = _host_port(settings.kafka_bootstrap.split(",")[0], 9092)
    redis_at = _host_port(settings.redis_url, 6379)
    # With several pytest-xdist workers each asks; one at a time starts what is missing.
    with _services_lock():
        if not (_accepts_connections(*kafka) and _accepts_connections(*redis_at)):
            _start_local_services(kafka, redis_at)
    # Ports that accept connections may still belong to a broker that is starting.
    wait_until(lambda: _kafka_answers(settings.kafka_bootstrap), 60, what="Kafka metadata answer")
    wait_until(redis.Redis.from_url(settings.redis_url).ping, 20, what="Redis PING")
    return LocalServices(settings.kafka_bootstrap, settings.redis_url)


@contextlib.contextmanager
def _services_lock() -> Iterator[None]:
    lock = REPO_ROOT / ".local" / "services-start.lock"
    lock.parent.mkdir(exist_ok=True)
    with lock.open("w") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def _kafka_answers(bootstrap: str) -> bool:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="pytest-probe")
    try:
        return bool(admin.describe_cluster()["brokers"])
    finally:
        admin.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(services: LocalServices) -> str:
    """`host:port` of the running Kafka broker."""
    return services.kafka_bootstrap


@pytest.fixture(scope="session")
def redis_url(services: LocalServices) -> str:
    """`redis://...` URL of the running Redis."""
    return services.redis_url


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Iterator[KafkaAdminClient]:
    """A kafka-python admin client shared by the session."""
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="pytest-admin")
    yield admin
    admin.close()


def _slug(node_name: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", node_name.lower()).strip("-")[:limit].strip("-")


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest, kafka_admin: KafkaAdminClient) -> Iterator[str]:
    """A SEGMENTS_TOPIC_PREFIX unique to this test, like `test-<test-name>-<hex>.`.

    At teardown every topic and consumer group whose name starts with it is deleted, so
    name Faust apps and groups with this prefix too (the `segments_env` fixture does).
    """
    prefix = f"test-{_slug(request.node.name)}-{uuid.uuid4().hex[:8]}."
    yield prefix
    delete_kafka_names(kafka_admin, prefix)


def delete_kafka_names(admin: KafkaAdminClient, prefix: str) -> None:
    """Deletes the topics and consumer groups whose names start with `prefix`."""
    topics = [name for name in admin.list_topics() if name.startswith(prefix)]
    if topics:
        with contextlib.suppress(UnknownTopicOrPartitionError):  # already gone
            admin.delete_topics(topics, timeout_ms=30_000)
    groups = [group for group, _ in admin.list_consumer_groups() if group.startswith(prefix)]
    if groups:
        # A group can only be deleted once empty; a member that just left may still count.
        def deleted() -> bool:
            # kafka-python answers [(group, error class)]; NoError and "not found" are done.
            results = admin.delete_consumer_groups(groups)
            return all(
                getattr(error, "errno", 0) in (0, GroupIdNotFoundError.errno)
                for _, error in results
            )

        wait_until(deleted, 30, interval=0.2, what=f"deletion of consumer groups {groups}")


@pytest.fixture
def topics(topic_prefix: str) -> Topics:
    """The SPEC topic names under this test's prefix (not created; see `create_topics`)."""
    return Topics(topic_prefix)


CreateTopics = Callable[..., list[str]]


@pytest.fixture
def create_topics(kafka_admin: KafkaAdminClient, topic_prefix: str) -> CreateTopics:
    """Creates topics and waits until every partition has a leader; returns their names.

    `create_topics("a", "b", partitions=3, config={"cleanup.policy": "compact"})`: names
    without this test's prefix get it added. The broker does not auto-create topics.
    """

    def create(
        *names: str, partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> list[str]:
        full = [name if name.startswith(topic_prefix) else topic_prefix + name for name in names]
        kafka_admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs=dict(config or {})) for name in full],
            timeout_ms=30_000,
        )

        def all_led() -> bool:
            described = kafka_admin.describe_topics(full)
            return len(described) == len(full) and all(
                topic["error_code"] == 0
                and len(topic["partitions"]) == partitions
                and all(p["leader"] >= 0 for p in topic["partitions"])
                for topic in described
            )

        wait_until(all_led, 30, what=f"leaders for {full}")
        return full

    return create


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest, redis_url: str) -> Iterator[str]:
    """A SEGMENTS_REDIS_PREFIX unique to this test, like `test:<test-name>:<hex>:`.

    Every key starting with it is deleted at teardown.
    """
    prefix = f"test:{_slug(request.node.name)}:{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        delete_redis_keys(client, prefix)
    finally:
        client.close()


def delete_redis_keys(client: redis.Redis, prefix: str) -> int:
    """Deletes every key starting with `prefix` (no glob characters); returns how many."""
    if re.search(r"[*?\[\]\\]", prefix):
        raise ValueError(f"prefix {prefix!r} contains glob characters")
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=prefix + "*", count=500):
        batch.append(key)
        if len(batch) == 500:
            deleted += int(client.unlink(*batch))
            batch.clear()
    if batch:
        deleted += int(client.unlink(*batch))
    return deleted


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous redis-py client (bytes in, bytes out) on the running Redis."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def segments_env(
    kafka_bootstrap: str,
    redis_url: str,
    topic_prefix: str,
    redis_prefix: str,
    tmp_path: Path,
) -> dict[str, str]:
    """SEGMENTS_* variables that point a worker or CLI subprocess at this test's sandbox.

    App id (consumer group, changelog topics) and topics share the test's prefix, so
    teardown removes them; state goes to a fresh data directory under tmp_path.
    """
    return {
        "SEGMENTS_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "SEGMENTS_REDIS_URL": redis_url,
        "SEGMENTS_TOPIC_PREFIX": topic_prefix,
        "SEGMENTS_REDIS_PREFIX": redis_prefix,
        "SEGMENTS_APP_ID": f"{topic_prefix}app",
        "SEGMENTS_DATA_DIR": str(tmp_path / "segments-data"),
        "SEGMENTS_PARTITIONS": "2",
    }


@pytest.fixture
def segments_settings(segments_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for this test's sandbox (the values of `segments_env`), validated."""
    for name in list(os.environ):
        if name.upper().startswith("SEGMENTS_"):
            monkeypatch.delenv(name)
    for name, value in segments_env.items():
        monkeypatch.setenv(name, value)
    return load_settings(env_file=None)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, which it may stop, restart empty or kill."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server not installed (deploy/local/services.sh up installs it)")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()
