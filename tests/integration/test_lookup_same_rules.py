"""Both lookup ports (aiohttp and the checkout fast path) name the same customer for the same
bytes and refuse the same requests, over real sockets against the real local Redis."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable

import orjson
import pytest

from streams.serving.cache import CacheWrite, RedisCache, connect
from streams.serving.process import run_serving
from streams.settings import load_settings

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def exchange(port: int, request: bytes) -> tuple[int, bytes]:
    """Sends one raw request (which asks to close) and reads the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)  # until the server closes
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def get(path: bytes, headers: bytes = b"") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"Connection: close\r\n\r\n"


def run(body: Callable[[tuple[int, int]], Awaitable[None]], redis_url: str) -> None:
    async def main() -> None:
        prefix = f"test-{uuid.uuid4().hex[:8]}:"
        client = connect(redis_url)
        cache = RedisCache(client, prefix)
        await cache.apply(
            [
                CacheWrite("a b/ü", "vip", 1, True, "2026-05-05T00:00:00Z"),
                CacheWrite("é" * 128, "vip", 1, True, "2026-05-05T00:00:00Z"),
                # Where the two ports used to look for an invalid-UTF-8 id: aiohttp kept
                # the escape as it was, the fast path replaced the byte with U+FFFD.
                CacheWrite("%FF", "vip", 1, True, "2026-05-05T00:00:00Z"),
                CacheWrite("\ufffd", "runner", 1, True, "2026-05-05T00:00:00Z"),
            ]
        )
        await client.set(cache.keys.sentinel(), "resynced")
        config = load_settings(
            env_file=None, redis_url=redis_url, redis_prefix=prefix, web_port=free_port()
        )
        lookup_port = free_port()
        stop, started = asyncio.Event(), asyncio.Event()
        serving = asyncio.create_task(
            run_serving(
                config,
                stop=stop,
                cache_sink=False,
                triggers=False,
                lookup_port=lookup_port,
                started=started,
            )
        )
        try:
            await asyncio.wait_for(started.wait(), 30)
            await body((config.web_port, lookup_port))
        finally:
            stop.set()
            await asyncio.wait_for(serving, 30)
            await cache.delete_all()
            await client.aclose()

    asyncio.run(main())


MANY_HEADERS = b"".join(b"X-%d: v\r\n" % i for i in range(200))


def test_both_ports_answer_the_same_status_for_the_same_bytes(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad_id = "bad-customer-id"
    cases = [
        # (request, the status both ports give, the JSON error both give when both do)
        (get(b"/customers/%FF/segments"), 400, bad_id),  # not UTF-8 once percent-decoded
        (get(b"/customers/%C3%28/segments"), 400, bad_id),
        (get(b"/customers/" + b"x" * 129 + b"/segments"), 400, bad_id),  # 129 characters
        # Refused by aiohttp's parser (a text body) and by the fast path (JSON).
        (get(b"/customers/caf\xc3\xa9/segments"), 400, None),  # raw, not percent-encoded
        (get(b"/customers/" + b"x" * 100_000 + b"/segments"), 400, None),
        (get(b"/customers/c-1/segments", b"X-Big: " + b"v" * 20_000 + b"\r\n"), 400, None),
        (get(b"/customers/c-1/segments", b"X-" + b"n" * 9_000 + b": v\r\n"), 400, None),
        (get(b"/customers/c-1/segments", MANY_HEADERS), 400, None),
        (get(b"/customers/c-1/segments", b"X-Fine: " + b"v" * 4_000 + b"\r\n"), 200, None),
        (get(b"/customers/" + b"%C3%A9" * 128 + b"/segments"), 200, None),  # 128 characters
        (get(b"/customers/a%20b%2F%C3%BC/segments"), 200, None),
        (get(b"/customers/nobody/segments"), 200, None),
    ]

    async def body(ports: tuple[int, int]) -> None:
        for request, expected, reason in cases:
            for port in ports:
                status, answer = await exchange(port, request)
                where = (request[:50], port, status, answer[:200])
                assert status == expected, where
                if reason is not None:
                    document = orjson.loads(answer)
                    assert document["error"] == reason and document["message"], where

    run(body, redis_url)
    # A client's malformed request is answered, not logged as a server error with a
    # traceback (a client could otherwise fill the log).
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING and r.exc_info]
    assert noisy == [], [r.getMessage() for r in noisy]


def test_both_ports_look_up_the_same_customer(redis_url: str) -> None:
    async def body(ports: tuple[int, int]) -> None:
        for path, customer, segments in [
            (b"/customers/a%20b%2F%C3%BC/segments", "a b/ü", ["vip"]),
            (b"/customers/" + b"%C3%A9" * 128 + b"/segments", "é" * 128, ["vip"]),
            (b"/customers/%EF%BF%BD/segments", "\ufffd", ["runner"]),
        ]:
            answers = [await exchange(port, get(path)) for port in ports]
            for status, answer in answers:
                document = orjson.loads(answer)
                assert status == 200
                assert document["customer_id"] == customer
                assert [s["name"] for s in document["segments"]] == segments
        for port in ports:  # neither looks up "%FF" nor U+FFFD for an invalid id
            status, answer = await exchange(port, get(b"/customers/%FF/segments"))
            assert status == 400 and b"UTF-8" in answer

    run(body, redis_url)
