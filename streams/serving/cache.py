"""The Redis membership cache (SPEC section 5): versioned writes through Lua, lookups, paging."""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import zlib
from collections import deque
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
import orjson
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from segments.changes import Change, CodecError, MembershipRecord
from streams.serving.redis_connection import RedisClient, RedisTarget, connect, is_cluster
from streams.serving.slot_tags import SLOTS, slot_tags

__all__ = ["connect"]  # re-exported: the cache's users connect through here

SHARDS = 16
_LUA = Path(__file__).with_name("lua")
CUSTOMER_SCRIPT = (_LUA / "customer.lua").read_text()
MEMBERS_SCRIPT = (_LUA / "members.lua").read_text()
SENTINELS_SCRIPT = (_LUA / "sentinels.lua").read_text()
TRAIT_SCRIPT = (_LUA / "trait.lua").read_text()
# A trait's field in the customer hash: the colon makes it impossible as a segment name
# ([a-z][a-z0-9_]*), so segments and traits of one customer never collide.
TRAIT_FIELD_PREFIX = "trait:"


def shard_of(customer_id: str) -> int:
    """The member-set shard of a customer: crc32 of its UTF-8 id, mod 16."""
    return zlib.crc32(customer_id.encode()) % SHARDS


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix; the `{...}` hash tag keeps a shard's two keys in one slot."""

    prefix: str = ""

    def customer(self, customer_id: str) -> str:
        return f"{self.prefix}cust:{customer_id}"

    def members(self, segment: str, shard: int) -> str:
        return f"{self.prefix}segm:{{{segment}:{shard}}}"

    def seqs(self, segment: str, shard: int) -> str:
        return f"{self.prefix}segq:{{{segment}:{shard}}}"

    def sentinel(self) -> str:
        """Set once the cache holds the memberships; its absence means an empty or lost cache."""
        return f"{self.prefix}meta:cache"

    def slot_sentinel(self, slot: int) -> str:
        """On a Cluster: the sentinel of one hash slot, a key in that slot (its hash tag)."""
        return f"{self.prefix}meta:cache:{{{slot_tags()[slot]}}}"

    def sentinel_of(self, customer_id: str, cluster: bool) -> str:
        """The sentinel a lookup of the customer reads: on a Cluster, that of its hash's slot."""
        if not cluster:
            return self.sentinel()
        return self.slot_sentinel(key_slot(self.customer(customer_id).encode()))

    def sentinels(self, cluster: bool) -> list[str]:
        """Every sentinel a complete cache has: one per slot on a Cluster, else one."""
        if not cluster:
            return [self.sentinel()]
        return list(_slot_sentinels(self.prefix))

    def patterns(self) -> list[str]:
        """SCAN patterns covering every key this cache owns (for a prefix-scoped flush)."""
        return [f"{_glob_escape(self.prefix)}{kind}:*" for kind in ("cust", "segm", "segq", "meta")]


@functools.lru_cache(maxsize=8)
def _slot_sentinels(prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}meta:cache:{{{tag}}}" for tag in slot_tags())


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@dataclass(frozen=True, slots=True)
class CacheWrite:
    """One membership fact to apply: the customer is (or is not) in the segment as of seq."""

    customer_id: str
    segment: str
    seq: int
    member: bool
    since: str  # ISO-8601 UTC instant of the change that made this fact true

    @classmethod
    def from_change(cls, change: Change) -> CacheWrite:
        """The fact a change (segment-changes) states."""
        return cls(change.customer_id, change.segment, change.seq, change.entered, change.at_iso)

    @classmethod
    def from_membership(cls, record: MembershipRecord) -> CacheWrite:
        """The fact a membership record (segment-memberships) states: a member since."""
        return cls(record.customer_id, record.segment, record.seq, True, record.since_iso)


@dataclass(frozen=True, slots=True)
class TraitWrite:
    """One trait value to apply: the customer's trait is `value` (None: no value) as of seq."""

    customer_id: str
    trait: str
    seq: int
    value: str | None

    @property
    def field(self) -> str:
        return TRAIT_FIELD_PREFIX + self.trait

    @classmethod
    def from_json(cls, raw: bytes) -> TraitWrite:
        """A trait change (a `trait-changes` value, or a `trait-values` one) -> TraitWrite.

        customer_id, trait, seq and value are what the cache needs; the rest of the change
        is not read. Raises CodecError when the bytes are not a trait change.
        """
        try:
            data = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError) as error:
            raise CodecError(f"not JSON: {error}") from None
        if not isinstance(data, dict):
            raise CodecError("not a JSON object")
        customer_id, trait, seq = data.get("customer_id"), data.get("trait"), data.get("seq")
        for name, text in (("customer_id", customer_id), ("trait", trait)):
            if not isinstance(text, str) or not text:
                raise CodecError(
                    f"missing field {name!r}" if text is None else f"{name} must be text"
                )
        if "value" not in data:
            raise CodecError("missing field 'value'")
        value = data["value"]
        if value is not None and not isinstance(value, str):
            raise CodecError("value must be a JSON string or null")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise CodecError("seq must be a positive integer")
        assert isinstance(customer_id, str) and isinstance(trait, str)
        return cls(customer_id, trait, seq, value)


@dataclass(frozen=True, slots=True)
class Applied:
    """Outcome of one write: whether it was newer, and the customer field it replaced."""

    write: CacheWrite
    applied: bool
    previous: str | None  # "seq|member|since" before this write, when applied


def parse_field(value: str) -> tuple[int, bool, str]:
    """A `<P>cust:` hash value "seq|member|since" -> (seq, member, since)."""
    seq, member, since = value.split("|", 2)
    return int(seq), member == "1", since


class RedisCache:
    """Seq-checked membership writes and the reads the lookup API needs.

    Works with a redis.asyncio client (decode_responses=True) or a cluster client: every
    script call touches keys of one hash slot only (SPEC section 5).
    """

    def __init__(self, client: RedisClient, prefix: str = "") -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.cluster = is_cluster(client)
        # redis-py types scripts for the single-node client only; the cluster one has them too.
        scripts: Any = client
        self._customer_script = scripts.register_script(CUSTOMER_SCRIPT)
        self._members_script = scripts.register_script(MEMBERS_SCRIPT)
        self._trait_script = scripts.register_script(TRAIT_SCRIPT)

    async def apply(self, writes: Sequence[CacheWrite]) -> list[Applied]:
        """Applies writes in one pipeline (two script calls each, no MULTI): at-least-once safe."""
        if not writes:
            return []
        try:
            replies = await self._apply_pipeline(writes)
        except NoScriptError:
            # A cluster pipeline sends EVALSHA without loading the scripts first (a
            # single-node pipeline loads them): a node that has not seen them, or lost
            # them in a restart or failover, refuses. Load them on every primary and run
            # the writes again; they are seq-checked, so the ones already applied are no-ops.
            await self._load_scripts()
            replies = await self._apply_pipeline(writes)
        results = []
        for index, write in enumerate(writes):
            applied, previous = replies[2 * index]
            results.append(Applied(write, bool(applied), previous if applied else None))
        return results

    async def _load_scripts(self) -> None:
        for script in (CUSTOMER_SCRIPT, MEMBERS_SCRIPT, TRAIT_SCRIPT):
            await self.client.script_load(script)

    async def _apply_pipeline(self, writes: Sequence[CacheWrite]) -> list[Any]:
        pipe: Any = self.client.pipeline(transaction=False)
        if not self.cluster:
            pipe.scripts.update((self._customer_script, self._members_script))  # loaded first
        customer_sha, members_sha = self._customer_script.sha, self._members_script.sha
        for write in writes:
            member = "1" if write.member else "0"
            shard = shard_of(write.customer_id)
            # EVALSHA as a plain command: redis-py refuses its script helpers in a cluster
            # pipeline; the cluster one routes by the script's keys (one slot each).
            pipe.execute_command(
                "EVALSHA",
                customer_sha,
                1,
                self.keys.customer(write.customer_id),
                write.segment,
                write.seq,
                member,
                write.since,
            )
            pipe.execute_command(
                "EVALSHA",
                members_sha,
                2,
                self.keys.members(write.segment, shard),
                self.keys.seqs(write.segment, shard),
                write.customer_id,
                write.seq,
                member,
            )
        replies: list[Any] = await pipe.execute()
        return replies

    async def apply_traits(self, writes: Sequence[TraitWrite]) -> list[bool]:
        """Applies trait values in one pipeline, each seq-checked; True where it was newer.

        One script call per write, on the customer's hash alone (one slot on a Cluster).
        """
        if not writes:
            return []
        try:
            replies = await self._apply_traits_pipeline(writes)
        except NoScriptError:  # as in apply(): a node without the script (Cluster)
            await self._load_scripts()
            replies = await self._apply_traits_pipeline(writes)
        return [bool(reply) for reply in replies]

    async def _apply_traits_pipeline(self, writes: Sequence[TraitWrite]) -> list[Any]:
        pipe: Any = self.client.pipeline(transaction=False)
        if not self.cluster:
            pipe.scripts.add(self._trait_script)  # loaded first
        sha = self._trait_script.sha
        for write in writes:
            pipe.execute_command(
                "EVALSHA",
                sha,
                1,
                self.keys.customer(write.customer_id),
                write.field,
                write.seq,
                orjson.dumps(write.value),  # the field becomes "seq|<JSON string or null>"
            )
        replies: list[Any] = await pipe.execute()
        return replies

    async def customer_segments(self, customer_id: str) -> list[tuple[str, str]]:
        """[(segment, since)] the customer is in now, sorted by name: one HGETALL."""
        # redis-py types an asyncio client's replies as `Awaitable[T] | T`.
        reply = cast(
            "Awaitable[dict[str, str]]", self.client.hgetall(self.keys.customer(customer_id))
        )
        return member_segments(await reply)

    async def customer_fields(self, customer_id: str) -> tuple[dict[str, str], bool]:
        """The customer's hash and whether the cache is complete, in one round trip.

        HGETALL first, then EXISTS of the sentinel on the same connection: a cache that was
        emptied before or during the read has no sentinel afterwards, so an empty hash is
        only ever taken for "in no segment" when the cache was complete. On a Cluster the
        sentinel is that of the customer's slot, on the same node (so the same connection).
        """
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.customer(customer_id))
        pipe.exists(self.keys.sentinel_of(customer_id, self.cluster))
        fields, complete = await pipe.execute()
        return fields, bool(complete)

    async def is_complete(self) -> bool:
        """True when the sentinel is present: the cache was built from segment-memberships.

        On a Cluster every slot's sentinel must be there (one EXISTS per slot, pipelined:
        redis-py sends each node its own): a node that lost its data lost its slots' ones.
        """
        if not self.cluster:
            return bool(await self.client.exists(self.keys.sentinel()))
        try:
            return await self._sentinels_by_node()
        except (ResponseError, RedisClusterException, LookupError):
            pass  # no slot map yet, a stale one, or a Redis before 7.0: the slow way
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys.sentinels(cluster=True):
            pipe.exists(key)
        return all(await pipe.execute())

    async def _sentinels_by_node(self) -> bool:
        """Every slot's sentinel exists: one script call per primary, with its slots' keys.

        About 10x less client CPU than a cluster pipeline of 16,384 EXISTS (docs/serving.md).
        """
        client: Any = self.client
        slots = client.nodes_manager.slots_cache
        by_node: dict[str, tuple[Any, list[str]]] = {}
        for slot, key in enumerate(_slot_sentinels(self.keys.prefix)):
            primary = slots[slot][0]
            by_node.setdefault(primary.name, (primary, []))[1].append(key)
        counts = await asyncio.gather(
            *(
                client.execute_command("EVAL", SENTINELS_SCRIPT, 0, *keys, target_nodes=primary)
                for primary, keys in by_node.values()
            )
        )
        return sum(int(count) for count in counts) == SLOTS

    async def mark_incomplete(self) -> None:
        """Deletes the sentinel(s): lookups answer 503 until mark_complete."""
        if not self.cluster:
            await self.client.delete(self.keys.sentinel())
            return
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys.sentinels(cluster=True):
            pipe.delete(key)
        await pipe.execute()

    async def mark_complete(self, value: str = "resynced") -> None:
        """Sets the sentinel(s): the cache holds the memberships."""
        if not self.cluster:
            await self.client.set(self.keys.sentinel(), value)
            return
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys.sentinels(cluster=True):
            pipe.set(key, value)
        await pipe.execute()

    async def segment_sizes(self, segments: Iterable[str]) -> dict[str, int]:
        """Members per segment: the sum of its shards' SCARD, one pipeline for all."""
        names = list(segments)
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            for shard in range(SHARDS):
                pipe.scard(self.keys.members(name, shard))
        counts = await pipe.execute()
        return {name: sum(counts[i * SHARDS : (i + 1) * SHARDS]) for i, name in enumerate(names)}

    async def members_page(
        self, segment: str, cursor: str = "0", count: int = 100
    ) -> tuple[list[str], str]:
        """One page of a segment's members and the cursor of the next ("0" when done).

        The cursor is "<shard>:<SSCAN cursor>"; SSCAN's guarantees hold per shard: a member
        present for the whole scan is returned at least once (rarely twice).
        """
        shard, scan_cursor = parse_cursor(cursor)
        members: list[str] = []
        while shard < SHARDS and len(members) < count:
            scan_cursor, batch = await self.client.sscan(
                self.keys.members(segment, shard), cursor=scan_cursor, count=count - len(members)
            )
            members.extend(batch)
            if int(scan_cursor) == 0:
                shard, scan_cursor = shard + 1, 0
        if shard >= SHARDS:
            return members, "0"
        return members, f"{shard}:{scan_cursor}"

    async def delete_all(self) -> int:
        """Deletes every key under this cache's prefix (SCAN + UNLINK); returns how many."""
        deleted = 0
        for pattern in self.keys.patterns():
            batch: list[str] = []
            async for key in self.client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += await self.client.unlink(*batch)
                    batch = []
            if batch:
                deleted += await self.client.unlink(*batch)
        return deleted


def member_segments(fields: dict[str, str]) -> list[tuple[str, str]]:
    """HGETALL of a customer hash -> [(segment, since)] where member is 1, sorted by name."""
    out = []
    for segment, value in fields.items():
        if segment.startswith(TRAIT_FIELD_PREFIX):
            continue
        _seq, member, since = parse_field(value)
        if member:
            out.append((segment, since))
    out.sort()
    return out


def customer_traits(fields: dict[str, str]) -> dict[str, str]:
    """HGETALL of a customer hash -> {trait: value} of the traits that have a value now.

    A trait whose last change set it to null is left out, as is one that never had a
    value: the answer depends on the customer's current values only, not on its history.
    """
    out = {}
    for name, stored in fields.items():
        if name.startswith(TRAIT_FIELD_PREFIX):
            value = orjson.loads(stored.partition("|")[2])
            if value is not None:
                out[name[len(TRAIT_FIELD_PREFIX) :]] = value
    return dict(sorted(out.items()))


_CURSOR = re.compile(r"([0-9]{1,2}):([0-9]{1,20})", re.ASCII)
_CURSOR_HELP = 'cursor must be "0" or the cursor a previous page returned ("<shard>:<number>")'


def parse_cursor(cursor: str | None) -> tuple[int, int]:
    """ "<shard>:<scan cursor>" (or "0"/empty for the start) -> (shard, scan cursor).

    Raises ValueError with a message for the client on anything else, including numbers
    Redis would refuse (SSCAN takes an unsigned 64-bit cursor).
    """
    if not cursor or cursor == "0":
        return 0, 0
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise ValueError(_CURSOR_HELP)
    shard, scan = int(match[1]), int(match[2])
    if shard >= SHARDS or scan >= 2**64:
        raise ValueError(f"{_CURSOR_HELP}; {cursor!r} is out of range")
    return shard, scan


class _FirstOfPair:
    """Waits for the first reply of a pair_future; the second's waiter resolves both."""

    __slots__ = ("error", "future", "reply")

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future
        self.reply: Any = None
        self.error: BaseException | None = None

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, reply: Any) -> None:
        self.reply = reply

    def set_exception(self, error: BaseException) -> None:
        self.error = error


class _SecondOfPair:
    __slots__ = ("first", "future")

    def __init__(self, first: _FirstOfPair, future: asyncio.Future[Any]) -> None:
        self.first, self.future = first, future

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, reply: Any) -> None:
        if self.first.error is not None:
            self.future.set_exception(self.first.error)
        else:
            self.future.set_result((self.first.reply, reply))

    def set_exception(self, error: BaseException) -> None:
        self.future.set_exception(error)


def _failure(future: asyncio.Future[Any]) -> BaseException | None:
    """The exception a done future ended with (cancellation counts as one), else None."""
    if future.cancelled():
        return RedisConnectionError("Redis command cancelled")
    return future.exception()


def _expire(future: asyncio.Future[Any]) -> None:
    """A command without a reply in time fails; its late reply is still consumed in order."""
    if not future.done():
        future.set_exception(RedisTimeoutError("no reply from Redis in time"))


class PipelinedReader(asyncio.Protocol):
    """One Redis connection that pipelines the lookup's HGETALLs from concurrent requests.

    The checkout lookup is one HGETALL; redis-py's per-command pool checkout, health check
    and parsing cost more CPU than Redis itself. Here every request writes its command to a
    shared connection (flushed once per loop iteration) and waits for its reply in order;
    hiredis parses. Connection loss fails the waiting requests; the next one reconnects.
    One node only, plain or TLS (`rediss://`); a Cluster is read through redis-py
    (streams.serving.lookup_reader).
    """

    def __init__(self, target: RedisTarget | str, timeout: float = 1.0) -> None:
        self.timeout = timeout  # per command and per connect: a till must not hang
        target = RedisTarget.of(target)
        parts = urlsplit(target.url)
        if parts.scheme not in ("redis", "rediss", "") or target.cluster:
            raise ValueError("PipelinedReader reads one node over redis:// or rediss://")
        self.ssl = target.ssl_context()
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.db = int(parts.path.lstrip("/") or 0)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.pending: list[bytes] = []
        self.flush_scheduled = False
        self.connecting: asyncio.Future[None] | None = None
        self.reader = hiredis.Reader(encoding="utf-8")

    async def hgetall(self, key: str) -> dict[str, str]:
        reply = await self.command(b"HGETALL", key.encode())
        return dict(zip(reply[::2], reply[1::2], strict=True))

    def commands_future(self, *commands: tuple[bytes, ...]) -> asyncio.Future[list[Any]]:
        """Sends the commands back to back on the one connection; a future of their replies.

        Redis answers one connection in order, so the commands run in the order given
        with nothing of this reader's in between. Fails with the first command's error.
        """
        loop = asyncio.get_running_loop()
        result: asyncio.Future[list[Any]] = loop.create_future()

        def send_all() -> None:
            futures = [loop.create_future() for _ in commands]
            for parts, future in zip(commands, futures, strict=True):
                self._send(parts, future)

            def one_done(_: asyncio.Future[Any]) -> None:
                if result.done() or not all(future.done() for future in futures):
                    return
                for future in futures:
                    error = _failure(future)
                    if error is not None:
                        result.set_exception(error)
                        return
                result.set_result([future.result() for future in futures])

            for future in futures:
                future.add_done_callback(one_done)

        if self.transport is None:
            connecting = asyncio.ensure_future(self._connect())

            def connected(done: asyncio.Future[None]) -> None:
                error = _failure(done)
                if error is not None:
                    if not result.done():
                        result.set_exception(error)
                else:
                    send_all()

            connecting.add_done_callback(connected)
        else:
            send_all()
        return result

    async def command(self, *parts: bytes) -> Any:
        if self.transport is None:
            await self._connect()
        future = asyncio.get_running_loop().create_future()
        self._send(parts, future)
        return await future

    def _send(self, parts: tuple[bytes, ...], future: asyncio.Future[Any]) -> None:
        self._queue(parts, future)
        self._time_out(future)

    def _queue(self, parts: tuple[bytes, ...], waiter: Any) -> None:
        """Queues one command; `waiter` (a future, or _FirstOfPair/_SecondOfPair) gets its reply."""
        self.pending.append(b"*%d\r\n" % len(parts))
        for part in parts:
            self.pending.append(b"$%d\r\n%s\r\n" % (len(part), part))
        self.waiters.append(waiter)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _time_out(self, future: asyncio.Future[Any]) -> None:
        timer = asyncio.get_running_loop().call_later(self.timeout, _expire, future)
        future.add_done_callback(lambda _: timer.cancel())

    def pair_future(
        self, first: tuple[bytes, ...], second: tuple[bytes, ...]
    ) -> asyncio.Future[tuple[Any, Any]]:
        """Two commands back to back on the one connection; a future of both replies.

        The lookup's HGETALL and EXISTS: one future and one timer for the two (the hot
        path's cost is per future and timer more than per command).
        """
        future: asyncio.Future[tuple[Any, Any]] = asyncio.get_running_loop().create_future()

        def send() -> None:
            head = _FirstOfPair(future)
            self._queue(first, head)
            self._queue(second, _SecondOfPair(head, future))
            self._time_out(future)

        if self.transport is None:
            connecting = asyncio.ensure_future(self._connect())

            def connected(done: asyncio.Future[None]) -> None:
                error = _failure(done)
                if error is None:
                    send()
                elif not future.done():
                    future.set_exception(error)

            connecting.add_done_callback(connected)
        else:
            send()
        return future

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.transport is not None and self.pending:
            self.transport.write(b"".join(self.pending))
        self.pending.clear()

    async def _connect(self) -> None:
        connecting = self.connecting
        if connecting is None:
            connecting = self.connecting = asyncio.ensure_future(self._open())
            connecting.add_done_callback(self._connected)
        await asyncio.shield(connecting)

    def _connected(self, connecting: asyncio.Future[None]) -> None:
        if self.connecting is connecting:
            self.connecting = None
        if not connecting.cancelled() and connecting.exception() is not None and self.transport:
            self.transport.close()  # e.g. AUTH refused: start afresh next time

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self.reader = hiredis.Reader(encoding="utf-8")
        await asyncio.wait_for(
            loop.create_connection(
                lambda: self,
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl is not None else None,
            ),
            self.timeout,
        )
        setup = []
        if self.password:
            user = [self.username.encode()] if self.username else []
            setup.append((b"AUTH", *user, self.password.encode()))
        if self.db:
            setup.append((b"SELECT", str(self.db).encode()))
        futures = []
        for parts in setup:
            futures.append(loop.create_future())
            self._send(parts, futures[-1])
        for future in futures:
            await future

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future = self.waiters.popleft()
            if future.done():  # the request was cancelled; its reply is still consumed
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(ResponseError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pending.clear()
        waiters, self.waiters = self.waiters, deque()
        for future in waiters:
            if not future.done():
                future.set_exception(RedisConnectionError(f"Redis connection lost: {exc}"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
