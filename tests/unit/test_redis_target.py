"""Redis Cluster and TLS: the settings, the clients they make, and SPEC section 5's slots."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import example, given
from hypothesis import strategies as st
from redis.crc import key_slot
from redis.exceptions import ResponseError

from streams.serving.cache import SHARDS, Keys, PipelinedReader
from streams.serving.lookup_reader import ClientReader, SlotRoutedReader, lookup_reader
from streams.serving.redis_connection import RedisTarget, connect
from streams.serving.triggers import TriggerDispatcher
from streams.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.upper().startswith("SEGMENTS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("not read until a connection is made\n")
    return path


def test_by_default_one_plain_node() -> None:
    target = load_settings(env_file=None).redis_target
    assert target == RedisTarget("redis://127.0.0.1:6379/0")
    assert not target.cluster and not target.tls and target.ssl_context() is None


def test_a_cluster_is_asked_for_with_redis_cluster_and_any_one_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SEGMENTS_REDIS_URL", "rediss://:pw@redis-0.cache:6379")
    monkeypatch.setenv("SEGMENTS_REDIS_CLUSTER", "true")
    target = load_settings(env_file=None).redis_target
    assert target.cluster and target.tls
    assert isinstance(connect(target), aioredis.RedisCluster)
    assert isinstance(connect("redis://127.0.0.1:1/0"), aioredis.Redis)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://h:7001/2", "SEGMENTS_REDIS_CLUSTER: needs database 0"),
        ("unix:///run/redis.sock", "SEGMENTS_REDIS_CLUSTER: needs a redis:// or rediss://"),
    ],
)
def test_a_cluster_refuses_what_a_cluster_cannot_be(
    monkeypatch: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    monkeypatch.setenv("SEGMENTS_REDIS_URL", url)
    monkeypatch.setenv("SEGMENTS_REDIS_CLUSTER", "yes")
    with pytest.raises(SettingsError) as excinfo:
        load_settings(env_file=None)
    assert any(p.startswith(problem) for p in excinfo.value.problems), excinfo.value.problems


def test_tls_files_become_the_clients_options(monkeypatch: pytest.MonkeyPatch, pem: Path) -> None:
    monkeypatch.setenv("SEGMENTS_REDIS_URL", "rediss://127.0.0.1:6390/0")
    monkeypatch.setenv("SEGMENTS_REDIS_SSL_CAFILE", str(pem))
    monkeypatch.setenv("SEGMENTS_REDIS_SSL_CERTFILE", str(pem))
    monkeypatch.setenv("SEGMENTS_REDIS_SSL_KEYFILE", str(pem))
    target = load_settings(env_file=None).redis_target
    assert target.ssl_options() == {
        "ssl_ca_certs": str(pem),
        "ssl_certfile": str(pem),
        "ssl_keyfile": str(pem),
    }
    client = connect(RedisTarget(target.url, ssl_cafile=pem))
    assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == str(pem)


def test_tls_files_are_refused_without_rediss_or_when_missing(
    monkeypatch: pytest.MonkeyPatch, pem: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv("SEGMENTS_REDIS_SSL_CAFILE", str(pem))
    monkeypatch.setenv("SEGMENTS_REDIS_SSL_KEYFILE", str(tmp_path / "missing.key"))
    with pytest.raises(SettingsError) as excinfo:
        load_settings(env_file=None)
    problems = excinfo.value.problems
    assert any(
        p.startswith("SEGMENTS_REDIS_SSL_CAFILE: applies to a rediss:// SEGMENTS_REDIS_URL only")
        for p in problems
    ), problems
    monkeypatch.setenv("SEGMENTS_REDIS_URL", "rediss://h:6390/0")
    with pytest.raises(SettingsError) as excinfo:
        load_settings(env_file=None)
    assert [p.split(",")[0] for p in excinfo.value.problems] == [
        "SEGMENTS_REDIS_SSL_KEYFILE: needs SEGMENTS_REDIS_SSL_CERTFILE"
    ]


def test_a_password_in_a_cluster_url_is_masked_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTS_REDIS_URL", "redis://u:s3cret@h:7001/5")
    monkeypatch.setenv("SEGMENTS_REDIS_CLUSTER", "true")
    with pytest.raises(SettingsError) as excinfo:
        load_settings(env_file=None)
    assert "s3cret" not in str(excinfo.value)


def test_the_pipelined_reader_speaks_tls_to_one_node_and_a_cluster_gets_one_per_node(
    pem: Path,
) -> None:
    reader = PipelinedReader(RedisTarget("rediss://127.0.0.1:6390/0"))
    assert isinstance(reader.ssl, ssl.SSLContext)
    assert reader.ssl.verify_mode == ssl.CERT_REQUIRED and reader.ssl.check_hostname
    with pytest.raises(ValueError, match="one node"):
        PipelinedReader(RedisTarget("redis://127.0.0.1:7001/0", cluster=True))
    cluster = RedisTarget("redis://127.0.0.1:7001/0", cluster=True)
    client = connect(cluster)
    assert isinstance(lookup_reader(cluster, client), SlotRoutedReader)
    assert isinstance(lookup_reader(RedisTarget("redis://h:1/0"), client), PipelinedReader)
    assert isinstance(lookup_reader(RedisTarget("unix:///run/r.sock"), client), ClientReader)


class RecordingClient:
    """Answers like redis-py; records when each command started and finished."""

    def __init__(self) -> None:
        self.log: list[str] = []

    async def execute_command(self, *args: Any) -> Any:
        self.log.append(f"start {args[0]}")
        await asyncio.sleep(0)  # let anything sent concurrently start now
        self.log.append(f"end {args[0]}")
        if args[0] == "HGETALL":
            return {"vip": "3|1|2026-01-01T00:00:00Z"}
        return 1


def test_on_a_cluster_the_sentinel_is_read_after_the_customer_hash_has_answered() -> None:
    """Decision 0004's order (HGETALL, then EXISTS) across two nodes: never concurrent."""
    client = RecordingClient()

    async def main() -> tuple[Any, Any]:
        reader = ClientReader(client)  # type: ignore[arg-type]
        return await reader.pair_future((b"HGETALL", b"cust:c-1"), (b"EXISTS", b"meta:cache"))

    flat, complete = asyncio.run(main())
    assert client.log == ["start HGETALL", "end HGETALL", "start EXISTS", "end EXISTS"]
    assert flat == ["vip", "3|1|2026-01-01T00:00:00Z"] and complete == 1


_names = st.text(min_size=1, max_size=12)


@given(
    prefix=_names.filter(lambda p: "{" not in p and "}" not in p),
    segment=st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
)
def test_each_member_shard_keeps_its_two_keys_in_one_slot(prefix: str, segment: str) -> None:
    """SPEC section 5: members.lua's two keys must share a slot for every segment name the
    rules allow; the settings refuse braces in the prefix."""
    keys = Keys(prefix)
    for shard in range(SHARDS):
        assert key_slot(keys.members(segment, shard).encode()) == key_slot(
            keys.seqs(segment, shard).encode()
        )


def test_member_shards_spread_over_the_slots() -> None:
    keys = Keys("p:")
    slots = {key_slot(keys.members("vip", shard).encode()) for shard in range(SHARDS)}
    assert len(slots) == SHARDS


@example(prefix="", customer="}")  # an empty hash tag: Redis would hash each whole key
@example(prefix="", customer="a}b{c")
@given(prefix=_names.filter(lambda p: "{" not in p and "}" not in p), customer=_names)
def test_a_trigger_claim_keeps_its_marker_and_cooldown_in_one_slot(
    prefix: str, customer: str
) -> None:
    dispatcher = TriggerDispatcher.__new__(TriggerDispatcher)
    dispatcher.prefix = prefix
    trigger: Any = type("T", (), {"name": "winback"})()
    change: Any = type("C", (), {"customer_id": customer, "change_id": f"{customer}:s:1"})()
    marker = dispatcher.marker_key(trigger, change)
    assert key_slot(marker.encode()) == key_slot(
        dispatcher.cooldown_key(trigger, customer).encode()
    )


class FakeNode:
    """A pipelined reader of one node: records what it was sent, answers from `replies`."""

    def __init__(self, target: RedisTarget, sent: list[tuple[str, Any]], replies: dict) -> None:
        self.target, self.sent, self.replies = target, sent, replies

    def _answer(self, command: tuple[bytes, ...]) -> Any:
        reply = self.replies.get(command[1], 0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def pair_future(self, first: Any, second: Any) -> asyncio.Future[Any]:
        self.sent.append((self.target.url, ("pair", first[1], second[1])))
        future = asyncio.get_running_loop().create_future()
        try:
            future.set_result((self._answer(first), self._answer(second)))
        except ResponseError as error:
            future.set_exception(error)
        return future

    def commands_future(self, *commands: Any) -> asyncio.Future[Any]:
        self.sent.append((self.target.url, ("commands", *(c[1] for c in commands))))
        future = asyncio.get_running_loop().create_future()
        try:
            future.set_result([self._answer(c) for c in commands])
        except ResponseError as error:
            future.set_exception(error)
        return future

    def close(self) -> None:
        pass


class FakeCluster:
    """redis-py's cluster client as the router sees it: its slot map and execute_command."""

    def __init__(self, mapped: bool = True) -> None:
        self.mapped = mapped
        self.executed: list[tuple[Any, ...]] = []
        self.nodes_manager = self

    def get_node_from_slot(self, slot: int) -> Any:
        if not self.mapped:
            raise KeyError(slot)  # redis-py before its first command: an empty slot map
        port = 7001 if slot < 5461 else 7002 if slot < 10923 else 7003
        return type("Node", (), {"host": "127.0.0.1", "port": port})()

    async def execute_command(self, *args: Any) -> Any:
        self.executed.append(args)
        return {} if args[0] == "HGETALL" else 1


def key_on(port: int, stem: str) -> bytes:
    """A customer key whose slot is on the fake cluster's node `port`."""
    for n in range(1000):
        key = f"p:cust:{stem}{n}".encode()
        slot = key_slot(key)
        if (7001 if slot < 5461 else 7002 if slot < 10923 else 7003) == port:
            return key
    raise AssertionError("no key found")


def routed(client: FakeCluster, replies: dict | None = None) -> tuple[SlotRoutedReader, list]:
    sent: list[tuple[str, Any]] = []
    reader = SlotRoutedReader(
        RedisTarget("rediss://:pw@10.0.0.9:7001/0", cluster=True),
        client,  # type: ignore[arg-type]
        open_node=lambda target: FakeNode(target, sent, replies or {}),  # type: ignore[arg-type,return-value]
    )
    return reader, sent


def test_a_cluster_lookup_goes_to_the_node_of_each_key_slot_with_the_same_credentials() -> None:
    sentinel = b"p:meta:cache"
    sentinel_port = (
        7001 if key_slot(sentinel) < 5461 else 7002 if key_slot(sentinel) < 10923 else 7003
    )
    other_port = 7003 if sentinel_port != 7003 else 7001
    near, far = key_on(sentinel_port, "near"), key_on(other_port, "far")
    reader, sent = routed(
        FakeCluster(), {near: ["vip", "1|1|x"], far: ["vip", "2|1|y"], sentinel: 1}
    )

    async def main() -> list[Any]:
        return [
            await reader.pair_future((b"HGETALL", near), (b"EXISTS", sentinel)),
            await reader.pair_future((b"HGETALL", far), (b"EXISTS", sentinel)),
            await reader.commands_future((b"EXISTS", sentinel)),
        ]

    answers = asyncio.run(main())
    assert answers == [(["vip", "1|1|x"], 1), (["vip", "2|1|y"], 1), [1]]
    home = f"rediss://:pw@127.0.0.1:{sentinel_port}/0"
    away = f"rediss://:pw@127.0.0.1:{other_port}/0"
    assert sent == [
        (home, ("pair", near, sentinel)),  # one node: one pair, in order on one connection
        (away, ("commands", far)),  # two nodes: the HGETALL first, the EXISTS after its answer
        (home, ("commands", sentinel)),
        (home, ("commands", sentinel)),
    ]
    assert reader.fallbacks == 0


def test_a_moved_answer_or_no_slot_map_yet_is_answered_through_redis_py() -> None:
    key = key_on(7002, "moved")
    reader, _ = routed(FakeCluster(), {key: ResponseError("MOVED 1234 127.0.0.1:7003")})
    cold, cold_sent = routed(FakeCluster(mapped=False))

    async def main() -> list[Any]:
        return [
            await reader.pair_future((b"HGETALL", key), (b"EXISTS", b"p:meta:cache")),
            await cold.pair_future((b"HGETALL", key), (b"EXISTS", b"p:meta:cache")),
        ]

    assert asyncio.run(main()) == [([], 1), ([], 1)]
    assert reader.fallbacks == 1 and cold.fallbacks == 1 and cold_sent == []
    assert reader.client.executed == [("HGETALL", key.decode()), ("EXISTS", "p:meta:cache")]  # type: ignore[attr-defined]


def test_other_redis_errors_are_not_taken_for_a_redirection() -> None:
    key = key_on(7001, "wrong")
    reader, _ = routed(FakeCluster(), {key: ResponseError("WRONGTYPE Operation against a key")})

    async def main() -> None:
        await reader.pair_future((b"HGETALL", key), (b"EXISTS", b"p:meta:cache"))

    with pytest.raises(ResponseError, match="WRONGTYPE"):
        asyncio.run(main())
    assert reader.fallbacks == 0
