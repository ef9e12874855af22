"""The product on a 3-master Redis Cluster and on a TLS-only Redis, end to end.

Real processes: `segments serve` (cache sink, HTTP port, checkout fast path),
`segments resync-cache` and `segments lookup` against real Kafka and the services of
deploy/local/redis-cluster.sh (nodes 7001-7003, TLS Redis 6390 with client certificates),
which a session fixture starts when they do not answer and stops again afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from streams.kafka.connection import KafkaConnection
from streams.serving.cache import CacheWrite, RedisCache, connect
from streams.serving.lookup_reader import lookup_reader
from streams.serving.redis_connection import RedisTarget
from streams.serving.triggers import DispatchConfig, TriggerDispatcher
from tests.helpers import wait_for, wait_until
from tests.integration.test_cache_rebuild import Serve, World, get
from tests.integration.test_traits_serving import Publisher, answers, history
from tests.integration.test_triggers_dispatch import (
    BOOTSTRAP,
    FAST_RETRIES,
    Receiver,
    change,
    names,  # noqa: F401  (a fixture)
    send,
    winback,
)
from tests.integration.worker_harness import segments_result

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("redis-cluster")]

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "deploy" / "local" / "services.sh"
CLUSTER_PORTS = (7001, 7002, 7003)
CLUSTER_URL = "redis://127.0.0.1:7001/0"
TLS_URL = "rediss://127.0.0.1:6390/0"
CERTS = REPO / ".local" / "redis-tls" / "certs"


@contextlib.contextmanager
def _start_lock() -> Iterator[None]:
    lock = REPO / ".local" / "redis-cluster-start.lock"
    lock.parent.mkdir(exist_ok=True)
    with lock.open("w") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def _services(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SERVICES), "redis-cluster", command],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="session")
def redis_cluster_services() -> Iterator[None]:
    """The Cluster and the TLS Redis answer; started here (and stopped at the end) if not."""
    with _start_lock():
        started = _services("status").returncode != 0
        if started:
            result = _services("up")
            if result.returncode != 0:
                pytest.fail(f"services.sh redis-cluster up failed:\n{result.stderr}")
    yield
    if started:
        with _start_lock():
            _services("down")


def node(port: int) -> redis.Redis:
    return redis.Redis(port=port, decode_responses=True)


def tls_client() -> redis.Redis:
    return redis.Redis(
        port=6390,
        ssl=True,
        ssl_ca_certs=str(CERTS / "ca.crt"),
        ssl_certfile=str(CERTS / "client.crt"),
        ssl_keyfile=str(CERTS / "client.key"),
        decode_responses=True,
    )


def keys_per_node(prefix: str) -> dict[int, int]:
    """How many keys under the prefix each cluster node holds."""
    counts = {}
    for port in CLUSTER_PORTS:
        with node(port) as client:
            counts[port] = sum(1 for _ in client.scan_iter(match=prefix + "*", count=1000))
    return counts


def delete_prefix(clients: list[redis.Redis], prefix: str) -> None:
    for client in clients:
        with client:
            for key in list(client.scan_iter(match=prefix + "*", count=1000)):
                client.unlink(key)  # one key per command: keys of a node are in many slots


@pytest.fixture
def cluster_env(
    segments_env: dict[str, str], redis_cluster_services: None
) -> Iterator[dict[str, str]]:
    env = {**segments_env, "SEGMENTS_REDIS_URL": CLUSTER_URL, "SEGMENTS_REDIS_CLUSTER": "true"}
    yield env
    delete_prefix([node(port) for port in CLUSTER_PORTS], env["SEGMENTS_REDIS_PREFIX"])


@pytest.fixture
def tls_env(segments_env: dict[str, str], redis_cluster_services: None) -> Iterator[dict[str, str]]:
    env = {
        **segments_env,
        "SEGMENTS_REDIS_URL": TLS_URL,
        "SEGMENTS_REDIS_SSL_CAFILE": str(CERTS / "ca.crt"),
        "SEGMENTS_REDIS_SSL_CERTFILE": str(CERTS / "client.crt"),
        "SEGMENTS_REDIS_SSL_KEYFILE": str(CERTS / "client.key"),
    }
    yield env
    delete_prefix([tls_client()], env["SEGMENTS_REDIS_PREFIX"])


@pytest.fixture
def world(kafka_bootstrap: str, create_topics, topics) -> Iterator[World]:
    create_topics(topics.segment_changes, partitions=2)
    create_topics(topics.segment_memberships, partitions=2, config={"cleanup.policy": "compact"})
    built = World(kafka_bootstrap, topics.segment_changes, topics.segment_memberships)
    yield built
    built.producer.close()


def sizes(port: int) -> dict[str, int]:
    status, _, body = get(port, "/segments")
    assert status == 200, body
    return {s["name"]: s["size"] for s in orjson.loads(body)["segments"]}


def all_members(port: int, segment: str) -> list[str]:
    """Every member of a segment through GET /segments/{name}/members, page by page."""
    members, cursor = [], "0"
    while True:
        status, _, body = get(port, f"/segments/{segment}/members?count=7&cursor={cursor}")
        assert status == 200, body
        page = orjson.loads(body)
        members += page["members"]
        cursor = page["cursor"]
        if cursor == "0":
            return sorted(set(members))


def expected_members(members: dict[str, list[str]], segment: str) -> list[str]:
    return sorted(c for c, segments in members.items() if segment in segments)


def check_cache(serve: Serve, world: World, env: dict[str, str]) -> None:
    """Lookups on both ports, sizes, member pages and `segments lookup` agree with the world."""
    members = world.members()
    wait_until(lambda: serve.answers(members), 60, what="every lookup to answer the memberships")
    by_segment = sizes(serve.port)
    for segment in ("vip", "runner"):
        assert by_segment[segment] == len(expected_members(members, segment)), segment
    assert all_members(serve.port, "runner") == expected_members(members, "runner")
    for port in serve.ports:
        assert get(port, "/readyz")[0] == 200
    result = segments_result(env, "lookup", "c-0")
    assert result.returncode == 0, result.stderr
    assert [s["name"] for s in orjson.loads(result.stdout)["segments"]] == members["c-0"]


def resync(env: dict[str, str]) -> str:
    result = segments_result(env, "resync-cache")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_serve_on_a_cluster_fills_answers_and_is_restored_by_resync_after_flushall_everywhere(
    world: World, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    world.history()
    serve = Serve(cluster_env, tmp_path / "serve.log")
    try:
        # Built from segment-memberships at start, then changes in through the cache sink.
        check_cache(serve, world, cluster_env)
        per_node = keys_per_node(cluster_env["SEGMENTS_REDIS_PREFIX"])
        assert all(count > 0 for count in per_node.values()), per_node
        world.publish("c-1", "vip", 1)
        world.publish("c-5", "runner", 2)
        world.producer.flush()
        check_cache(serve, world, cluster_env)

        for port in CLUSTER_PORTS:
            with node(port) as client:
                client.flushall()
        assert sum(keys_per_node(cluster_env["SEGMENTS_REDIS_PREFIX"]).values()) == 0
        out = resync(cluster_env)
        assert "wrote" in out
        check_cache(serve, world, cluster_env)
        assert "cache_sink_redis_unavailable" not in (tmp_path / "serve.log").read_text()
    finally:
        serve.stop()


def owner(slot: int) -> int:
    """The port of the master that serves the slot."""
    with node(CLUSTER_PORTS[0]) as client:
        ranges = client.execute_command("CLUSTER SLOTS")
    return next(int(entry[2][1]) for entry in ranges if entry[0] <= slot <= entry[1])


def test_one_node_flushed_alone_answers_503_for_its_customers_until_serve_rebuilt_it(
    world: World, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    """One sentinel per slot, next to that slot's customers: a node that loses its data
    loses their sentinels too, so its customers' lookups say 503, never 200 without their
    segments, and the cache sink notices the missing sentinels and rebuilds by itself."""
    world.history()
    prefix = cluster_env["SEGMENTS_REDIS_PREFIX"]
    serve = Serve(cluster_env, tmp_path / "serve.log")
    try:
        members = world.members()
        check_cache(serve, world, cluster_env)
        by_port = {
            customer: owner(key_slot(f"{prefix}cust:{customer}".encode())) for customer in members
        }
        flushed = by_port["c-0"]
        on_flushed = sorted(c for c, port in by_port.items() if port == flushed)
        elsewhere = sorted(c for c, port in by_port.items() if port != flushed)
        assert on_flushed and elsewhere, by_port
        before = keys_per_node(prefix)
        assert before[flushed] > 0, before

        with node(flushed) as client:
            client.flushall()
        after = keys_per_node(prefix)
        assert after[flushed] < before[flushed]
        assert all(after[port] == before[port] for port in CLUSTER_PORTS if port != flushed)

        wrong: list[tuple[int, str, int, dict]] = []
        rebuilding: list[str] = []

        def back() -> bool:
            done = True
            for port in serve.ports:
                for customer in on_flushed:
                    status, headers, body = serve.lookup(port, customer)
                    if status == 503:
                        rebuilding.append(body["error"])
                        if headers.get("Retry-After") != "1" or body["error"] not in (
                            "cache-rebuilding",
                            "cache-unavailable",
                        ):
                            wrong.append((port, customer, status, body))
                        done = False
                    elif (
                        status != 200 or [s["name"] for s in body["segments"]] != members[customer]
                    ):
                        wrong.append((port, customer, status, body))
                        done = False
            return done

        wait_until(back, 90, interval=0.01, what="serve to rebuild the flushed node's part")
        assert wrong == [], f"lookups that said something else than 503 or the truth: {wrong}"
        check_cache(serve, world, cluster_env)
        log = (tmp_path / "serve.log").read_text()
        assert "cache_sink_cache_lost" in log and "cache_sink_resynced" in log
        print(f"customers on the flushed node: {len(on_flushed)}; 503 answers: {len(rebuilding)}")
    finally:
        serve.stop()


def test_serve_on_tls_redis_fills_answers_and_is_restored_by_resync_after_flushall(
    world: World, tls_env: dict[str, str], tmp_path: Path
) -> None:
    world.history()
    serve = Serve(tls_env, tmp_path / "serve.log")
    try:
        check_cache(serve, world, tls_env)
        world.publish("c-1", "vip", 1)
        world.producer.flush()
        check_cache(serve, world, tls_env)
        with tls_client() as client:
            client.flushall()
        resync(tls_env)
        check_cache(serve, world, tls_env)
    finally:
        serve.stop()


def test_tls_redis_with_an_untrusted_certificate_fails_with_a_clear_message(
    tls_env: dict[str, str],
) -> None:
    env = {**tls_env, "SEGMENTS_REDIS_URL": "rediss://cache:s3cret-pass@127.0.0.1:6390/0"}
    del env["SEGMENTS_REDIS_SSL_CAFILE"]  # the system's CAs do not know the test CA
    result = segments_result(env, "lookup", "c-0")
    assert result.returncode != 0
    assert "rediss://cache:***@127.0.0.1:6390/0 did not answer" in result.stderr
    assert "certificate verify failed" in result.stderr
    assert "s3cret-pass" not in result.stderr + result.stdout


def test_triggers_on_a_cluster_claim_call_and_mark_each_change_once(
    names: dict[str, str],  # noqa: F811
    redis_cluster_services: None,
) -> None:
    """The claim script's two keys share the customer's hash tag: one slot on any node."""
    customers = [f"c-{i}" for i in range(12)]

    async def main() -> None:
        client = connect(RedisTarget(CLUSTER_URL, cluster=True))
        async with Receiver() as receiver:
            dispatcher = TriggerDispatcher(
                client,
                [winback(receiver.url, cooldown=3_600_000_000)],
                kafka=KafkaConnection(BOOTSTRAP),
                topic=names["changes"],
                dlq_topic=names["dlq"],
                group_id=names["prefix"] + "triggers",
                redis_prefix=names["prefix"],
                config=DispatchConfig(**FAST_RETRIES),
            )
            stop = asyncio.Event()
            task = asyncio.create_task(dispatcher.run(stop))
            try:
                await wait_for(lambda: dispatcher.ready.is_set() or task.done(), 60, "partitions")
                await send(names["changes"], [change(c, "win_back", 1) for c in customers])
                await wait_for(lambda: len(receiver.keys()) == len(customers), 60, "every call")
                again = [change("c-0", "win_back", 1), change("c-1", "win_back", 3)]
                await send(names["changes"], again)  # the same change; one within the cooldown
                await wait_for(
                    lambda: (
                        dispatcher.stats.skipped.get("already-done")
                        and dispatcher.stats.skipped.get("cooldown")
                    ),
                    60,
                    "the repeated change and the cooldown to be skipped",
                )
                assert sorted(receiver.keys()) == sorted(f"{c}:win_back:1" for c in customers)
            finally:
                stop.set()
                await task
                await client.aclose()

    try:
        asyncio.run(main())
        markers = keys_per_node(names["prefix"] + "trig:")
        assert sum(markers.values()) == len(customers) + 1  # +1: c-1's cooldown marker
        assert sum(1 for count in markers.values() if count) > 1, markers  # spread over nodes
    finally:
        delete_prefix([node(port) for port in CLUSTER_PORTS], names["prefix"])


def test_the_cluster_really_has_three_masters_and_the_cache_keys_pair_up_by_slot(
    redis_cluster_services: None,
) -> None:
    """What the tests above stand on: three masters serving all 16384 slots."""
    with node(7001) as client:
        slots = client.execute_command("CLUSTER SLOTS")
    masters = {tuple(entry[2][:2]) for entry in slots}
    assert len(masters) == 3
    assert sum(end - start + 1 for start, end, *_ in slots) == 16384
    assert key_slot(b"p:segm:{vip:3}") == key_slot(b"p:segq:{vip:3}")


def move_slot(slot: int) -> tuple[int, int]:
    """Moves a slot and its keys to another master, as a resharding does; (from, to) ports."""
    ids = {}
    for port in CLUSTER_PORTS:
        with node(port) as client:
            ids[port] = client.execute_command("CLUSTER MYID")
    with node(CLUSTER_PORTS[0]) as client:
        ranges = client.execute_command("CLUSTER SLOTS")
    source = next(int(entry[2][1]) for entry in ranges if entry[0] <= slot <= entry[1])
    target = next(port for port in CLUSTER_PORTS if port != source)
    with node(target) as importing, node(source) as migrating:
        importing.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
        migrating.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target])
        while keys := migrating.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            migrating.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
    for port in (target, source, *CLUSTER_PORTS):
        with node(port) as client:
            client.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])
    return source, target


def test_the_fast_path_reader_follows_a_slot_moved_to_another_master(
    redis_cluster_services: None,
) -> None:
    """The node that owned the slot answers MOVED: that lookup goes through redis-py, which
    learns the new owner; the next one goes to the new owner's pipelined connection."""
    prefix = f"test-moved-{uuid.uuid4().hex[:8]}:"
    target = RedisTarget(CLUSTER_URL, cluster=True)

    async def main() -> None:
        client = connect(target)
        reader = lookup_reader(target, client)
        try:
            cache = RedisCache(client, prefix)
            await cache.apply([CacheWrite("c-moved", "vip", 3, True, "2026-11-20T14:00:00Z")])
            sentinel = cache.keys.sentinel_of("c-moved", cluster=True)
            await client.set(sentinel, "test")
            key = cache.keys.customer("c-moved").encode()
            assert key_slot(sentinel.encode()) == key_slot(key)  # moved together
            lookup = ((b"HGETALL", key), (b"EXISTS", sentinel.encode()))
            expected = (["vip", "3|1|2026-11-20T14:00:00Z"], 1)
            assert await reader.pair_future(*lookup) == expected
            assert reader.fallbacks == 0  # type: ignore[attr-defined]
            moved_from, moved_to = move_slot(key_slot(key))
            assert moved_from != moved_to
            assert await reader.pair_future(*lookup) == expected  # the old owner said MOVED
            assert reader.fallbacks == 1  # type: ignore[attr-defined]
            assert await reader.pair_future(*lookup) == expected
            assert reader.fallbacks == 1  # type: ignore[attr-defined]
            assert ("127.0.0.1", moved_to) in reader.nodes  # type: ignore[attr-defined]
        finally:
            reader.close()
            await client.aclose()

    try:
        asyncio.run(main())
    finally:
        delete_prefix([node(port) for port in CLUSTER_PORTS], prefix)


def test_the_completeness_check_sees_any_one_missing_slot_sentinel_both_ways(
    redis_cluster_services: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One script call per primary, and the fallback (a pipeline of EXISTS that follows
    MOVED) used when the script fails: both say incomplete when one slot's is missing."""
    prefix = f"test-slots-{uuid.uuid4().hex[:8]}:"

    async def main() -> list[bool]:
        client = connect(RedisTarget(CLUSTER_URL, cluster=True))
        cache = RedisCache(client, prefix)
        seen = []
        try:
            seen.append(await cache.is_complete())  # nothing set yet
            await cache.mark_complete("test")
            seen.append(await cache.is_complete())
            await client.delete(cache.keys.slot_sentinel(12345))
            seen.append(await cache.is_complete())

            async def stale() -> bool:
                raise ResponseError("Script attempted to access a non local key")

            monkeypatch.setattr(cache, "_sentinels_by_node", stale)
            seen.append(await cache.is_complete())
            await client.set(cache.keys.slot_sentinel(12345), "test")
            seen.append(await cache.is_complete())
            await cache.mark_incomplete()
            seen.append(await cache.is_complete())
        finally:
            await client.aclose()
        return seen

    try:
        assert asyncio.run(main()) == [False, True, False, False, True, False]
        assert sum(keys_per_node(prefix).values()) == 0  # mark_incomplete deleted all of them
    finally:
        delete_prefix([node(port) for port in CLUSTER_PORTS], prefix)


def test_traits_on_a_cluster_are_served_on_both_ports_and_restored_by_resync(
    cluster_env: dict[str, str], kafka_bootstrap: str, create_topics, topics, tmp_path: Path
) -> None:
    """Trait fields live in each customer's hash, so on the nodes of its slot: the routed
    lookup readers answer them, and resync-cache restores them after FLUSHALL everywhere."""
    compact = {"cleanup.policy": "compact"}
    create_topics(topics.segment_changes, partitions=2)
    create_topics(topics.segment_memberships, partitions=2, config=compact)
    create_topics(topics.trait_changes, partitions=2)
    create_topics(topics.trait_values, partitions=2, config=compact)
    publish = Publisher(kafka_bootstrap, topics)
    try:
        expected = history(publish)
        for i in range(30):  # enough customers for every node to hold some
            publish.trait(f"t-{i}", "lifecycle", 1, f"stage-{i % 4}")
            expected[f"t-{i}"] = {"segments": [], "traits": {"lifecycle": f"stage-{i % 4}"}}
        publish.flush()
    finally:
        publish.producer.close()
    prefix = cluster_env["SEGMENTS_REDIS_PREFIX"]
    assert len({owner(key_slot(f"{prefix}cust:t-{i}".encode())) for i in range(30)}) == 3
    serve = Serve(cluster_env, tmp_path / "serve.log")
    try:
        wait_until(lambda: answers(serve, expected), 60, what="traits on the cluster")
        for port in CLUSTER_PORTS:
            with node(port) as client:
                client.flushall()
        assert "33 trait values, wrote 33" in resync(cluster_env)
        wait_until(lambda: answers(serve, expected), 60, what="traits back after resync")
    finally:
        serve.stop()
