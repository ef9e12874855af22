"""Every Kafka client of the product over SASL_SSL with SCRAM, against a real broker.

deploy/local/kafka-secure.sh runs a second local broker (ports 29092-29094) with a
SASL_SSL listener, SCRAM-SHA-256/512 and PLAIN users, an SSL listener that requires a
client certificate, and certificates made on its first start. Here: `segments produce`
-> `segments worker` -> changes -> `segments serve` -> Redis -> lookups, then
`segments resync-cache`, and the trigger dispatcher, all over SASL_SSL; a wrong
password ends `worker`, `produce`, `serve`, `triggers` and `resync-cache` at start, and
an untrusted CA `worker`, `produce` and `serve`, with a clear message, a non-zero exit
and no secret in the output.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
from aiokafka import AIOKafkaProducer
from dotenv import dotenv_values
from kafka import KafkaAdminClient
from pydantic import SecretStr

from segments.data import EXAMPLE_RULES
from segments.generate import generate_events
from streams.kafka.connection import (
    KafkaConnection,
    KafkaConnectionFailed,
    check_connection_now,
)
from streams.kafka.produce import publish
from streams.kafka.topics import ensure_topic, ensure_topics
from streams.serving.cache import connect
from streams.serving.triggers import DispatchConfig, TriggerDispatcher
from streams.settings import Topics, load_settings
from tests.helpers import wait_for, wait_until
from tests.integration.conftest import delete_kafka_names, delete_redis_keys
from tests.integration.test_cache_rebuild import Serve
from tests.integration.test_triggers_dispatch import FAST_RETRIES, Receiver, change, winback
from tests.integration.worker_harness import (
    assert_equals_replay,
    drain_with_one_worker,
    kafka_args,
    produce,
    read_topic,
    replay_reference,
    run_cli,
    segments_result,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "deploy" / "local" / "services.sh"
HOME = REPO_ROOT / ".local" / "kafka-secure"
CERTS = HOME / "certs"
AS_OF = "2026-12-01T00:00:00Z"

# One broker for the module's tests, started once and stopped at the end.
pytestmark = [pytest.mark.xdist_group("kafka-secure"), pytest.mark.slow]


def _services(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "kafka-secure", command],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="session")
def secure_env() -> Iterator[dict[str, str]]:
    """SEGMENTS_KAFKA_* of the SASL_SSL listener (its client.env), the broker started if need be.

    Stopped at the end when this session started it."""
    started = False
    lock = REPO_ROOT / ".local" / "kafka-secure-start.lock"
    lock.parent.mkdir(exist_ok=True)
    with lock.open("w") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        if _services("status").returncode != 0:
            result = _services("up")
            if result.returncode != 0:
                pytest.fail(f"services.sh kafka-secure up failed:\n{result.stderr}")
            started = True
        fcntl.flock(file, fcntl.LOCK_UN)
    env = {name: str(value) for name, value in dotenv_values(HOME / "client.env").items()}
    try:
        yield env
    finally:
        if started:
            _services("down")


def connection(env: dict[str, str]) -> KafkaConnection:
    """The product's own reading of these variables."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        return KafkaConnection.from_settings(load_settings(env_file=None))


@pytest.fixture
def sandbox(
    secure_env: dict[str, str], redis_url: str, redis_prefix: str, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """The secure broker's variables plus this test's own topics, group, keys and state."""
    prefix = f"test-secure-{uuid.uuid4().hex[:8]}."
    env = {
        **secure_env,
        "SEGMENTS_REDIS_URL": redis_url,
        "SEGMENTS_TOPIC_PREFIX": prefix,
        "SEGMENTS_REDIS_PREFIX": redis_prefix,
        "SEGMENTS_APP_ID": f"{prefix}app",
        "SEGMENTS_DATA_DIR": str(tmp_path / "segments-data"),
        "SEGMENTS_PARTITIONS": "2",
        "SEGMENTS_CLOCK": "event",
        "SEGMENTS_RULES": str(EXAMPLE_RULES),
    }
    yield env
    admin = KafkaAdminClient(**kafka_args(connection(secure_env), client_id="pytest-admin"))
    try:
        delete_kafka_names(admin, prefix)
    finally:
        admin.close()


def expected_lookups(memberships: dict[str, list[str]]) -> dict[str, list[str]]:
    by_customer: dict[str, list[str]] = {}
    for segment, members in memberships.items():
        for customer in members:
            by_customer.setdefault(customer, []).append(segment)
    return {customer: sorted(segments) for customer, segments in by_customer.items()}


def test_produce_worker_serve_and_resync_work_over_sasl_ssl_with_scram(
    sandbox: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    password = sandbox["SEGMENTS_KAFKA_SASL_PASSWORD"]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in generate_events(400, 300, seed=12)))
    reference = replay_reference(EXAMPLE_RULES, events, tmp_path / "replay", AS_OF)
    expected = expected_lookups(reference.memberships)
    assert len(expected) >= 50, "enough members to look up"

    produce(sandbox, events, AS_OF)
    topics = Topics(sandbox["SEGMENTS_TOPIC_PREFIX"])
    kafka = connection(sandbox)
    published, dead = drain_with_one_worker(
        sandbox, tmp_path, topics, list(reference.memberships), kafka=kafka
    )
    assert dead == []
    assert_equals_replay(published, reference)

    # serve's cache sink fills Redis from segment-changes (after its first resync from
    # segment-memberships), both over SASL_SSL; lookups answer from Redis.
    serve = Serve(sandbox, tmp_path / "serve.log")
    try:
        wait_until(lambda: serve.answers(expected), 90, what="lookups from the cache sink")
    finally:
        serve.stop()

    # resync-cache rebuilds an emptied cache from segment-memberships over SASL_SSL; serve
    # then runs without a sink (so it cannot have rebuilt the cache itself).
    client = redis.Redis.from_url(redis_url)
    try:
        assert delete_redis_keys(client, sandbox["SEGMENTS_REDIS_PREFIX"]) > 0
    finally:
        client.close()
    output = run_cli(sandbox, "resync-cache")
    serve = Serve(sandbox, tmp_path / "serve-after-resync.log", "--no-sink")
    try:
        assert serve.answers(expected)
    finally:
        serve.stop()

    logs = [path.read_text(errors="replace") for path in tmp_path.glob("*.log")]
    assert logs and all(password not in text for text in [*logs, output])


@pytest.mark.parametrize("command", ["worker", "produce", "serve", "triggers", "resync-cache"])
def test_a_wrong_password_ends_the_command_at_start_without_showing_it(
    sandbox: dict[str, str], command: str, tmp_path: Path
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    env = {**sandbox, "SEGMENTS_KAFKA_SASL_PASSWORD": wrong}
    result = _run(env, command, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    assert "refused the login" in output and "SaslAuthenticationFailed" in output, output
    assert "SEGMENTS_KAFKA_SASL_PASSWORD" in output
    assert wrong not in output and sandbox["SEGMENTS_KAFKA_SASL_PASSWORD"] not in output


@pytest.mark.parametrize("command", ["worker", "produce", "serve"])
def test_an_untrusted_ca_ends_the_command_at_start(
    sandbox: dict[str, str], command: str, tmp_path: Path
) -> None:
    env = {**sandbox, "SEGMENTS_KAFKA_SSL_CAFILE": str(CERTS / "other-ca.pem")}
    result = _run(env, command, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    assert "TLS certificate is not trusted" in output, output
    assert "SEGMENTS_KAFKA_SSL_CAFILE" in output
    assert sandbox["SEGMENTS_KAFKA_SASL_PASSWORD"] not in output


def _run(env: dict[str, str], command: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if command == "produce":
        events = tmp_path / "events.jsonl"
        events.write_bytes(b"".join(line + b"\n" for line in generate_events(5, 30, seed=1)))
        return segments_result(env, "produce", "--input", str(events), timeout=60)
    return segments_result(env, command, timeout=60)


def test_every_mechanism_and_a_client_certificate_connect(
    sandbox: dict[str, str], secure_env: dict[str, str]
) -> None:
    """SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN on the SASL_SSL listener; SSL with a client
    certificate on the SSL listener (topics created and read back there)."""
    kafka = connection(secure_env)
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"):
        check_connection_now(dataclasses.replace(kafka, sasl_mechanism=mechanism))
    with pytest.raises(KafkaConnectionFailed, match="refused the login"):
        check_connection_now(dataclasses.replace(kafka, sasl_password=SecretStr("nope")))

    ssl_port = int(kafka.bootstrap.rpartition(":")[2]) + 2
    mutual = KafkaConnection(
        f"127.0.0.1:{ssl_port}",
        "SSL",
        ssl_cafile=CERTS / "ca.pem",
        ssl_certfile=CERTS / "client.pem",
        ssl_keyfile=CERTS / "client.key",
    )
    check_connection_now(mutual)
    without_certificate = dataclasses.replace(mutual, ssl_certfile=None, ssl_keyfile=None)
    with pytest.raises(KafkaConnectionFailed):
        check_connection_now(without_certificate)
    topics = Topics(sandbox["SEGMENTS_TOPIC_PREFIX"])
    ready = ensure_topics(mutual, topics, 2)
    assert topics.purchases in ready.created
    result = publish(mutual, topics.purchases, [(1, b"c-1", b"{}")], None)
    assert result.produced == 1 and not result.failures
    assert [(r.key, r.value) for r in read_topic(mutual, topics.purchases)] == [(b"c-1", b"{}")]


def test_the_trigger_dispatcher_works_over_sasl_ssl(
    sandbox: dict[str, str], redis_url: str
) -> None:
    """The dispatcher (serve's and `segments triggers`') consumes segment-changes, creates
    triggers.dlq and calls the webhook, over SASL_SSL."""
    kafka = connection(sandbox)
    topics = Topics(sandbox["SEGMENTS_TOPIC_PREFIX"])
    prefix = sandbox["SEGMENTS_REDIS_PREFIX"]

    async def main() -> None:
        await ensure_topic(kafka, topics.segment_changes, partitions=2)
        client = connect(redis_url)
        async with Receiver() as receiver:
            dispatcher = TriggerDispatcher(
                client,
                [winback(receiver.url)],
                kafka=kafka,
                topic=topics.segment_changes,
                dlq_topic=topics.triggers_dlq,
                group_id=f"{topics.prefix}triggers",
                redis_prefix=prefix,
                config=DispatchConfig(**FAST_RETRIES),
            )
            stop = asyncio.Event()
            task = asyncio.create_task(dispatcher.run(stop))
            try:
                await wait_for(dispatcher.ready.is_set, 60, "the dispatcher's partitions")
                producer = AIOKafkaProducer(**kafka.aiokafka_args())
                await producer.start()
                try:
                    item = change("c-1", "win_back", 1)
                    await producer.send_and_wait(
                        topics.segment_changes, orjson.dumps(item), key=b"c-1"
                    )
                finally:
                    await producer.stop()
                await wait_for(lambda: receiver.keys() == ["c-1:win_back:1"], 30, "the call")
            finally:
                stop.set()
                await task
                await client.aclose()

    asyncio.run(main())
    admin = KafkaAdminClient(**kafka_args(kafka, client_id="pytest-admin"))
    try:
        assert topics.triggers_dlq in admin.list_topics(), "created over SASL_SSL"
    finally:
        admin.close()
