"""The checkout fast path (raw HTTP/1.1 lookup protocol) against the real local Redis."""

from __future__ import annotations

import asyncio
import os
import uuid

import aiohttp
import orjson
import pytest

from streams.serving.cache import CacheWrite, PipelinedReader, RedisCache, connect
from streams.serving.fast_path import start_lookup_server

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("SEGMENTS_REDIS_URL", "redis://127.0.0.1:6379/0")


def run(body, token=None):
    async def main():
        prefix = f"test-{uuid.uuid4().hex[:8]}:"
        client = connect(REDIS_URL)
        cache = RedisCache(client, prefix)
        reader = PipelinedReader(REDIS_URL)
        await cache.apply(
            [
                CacheWrite("c-1", "vip", 1, True, "2026-11-20T14:03:11.120Z"),
                CacheWrite("c-1", "big_spender", 1, True, "2026-01-02T00:00:00Z"),
                CacheWrite("c-1", "runner", 2, False, "2026-03-01T00:00:00Z"),
                CacheWrite("a b/ü", "vip", 1, True, "2026-05-05T00:00:00Z"),
            ]
        )
        await client.set(cache.keys.sentinel(), "resynced")  # as a rebuild leaves it
        server = await start_lookup_server(
            reader, host="127.0.0.1", port=0, prefix=prefix, api_token=token
        )
        port = server.sockets[0].getsockname()[1]
        try:
            await body(port)
        finally:
            server.close()
            await server.wait_closed()
            reader.close()
            await cache.delete_all()
            await client.aclose()

    asyncio.run(main())


def test_answers_the_same_document_as_the_api():
    async def body(port):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/customers/c-1/segments") as r:
                assert r.status == 200
                assert r.headers["Content-Type"] == "application/json"
                doc = await r.json()
            assert doc["customer_id"] == "c-1"
            assert doc["segments"] == [
                {"name": "big_spender", "since": "2026-01-02T00:00:00Z"},
                {"name": "vip", "since": "2026-11-20T14:03:11.120Z"},
            ]
            assert doc["as_of"].endswith("Z")
            async with http.get(f"http://127.0.0.1:{port}/customers/nobody/segments") as r:
                assert r.status == 200 and (await r.json())["segments"] == []
            async with http.get(f"http://127.0.0.1:{port}/customers/a%20b%2F%C3%BC/segments") as r:
                assert (await r.json())["customer_id"] == "a b/ü"
            async with http.get(f"http://127.0.0.1:{port}/segments") as r:
                assert r.status == 404
            async with http.post(f"http://127.0.0.1:{port}/customers/c-1/segments") as r:
                assert r.status in (400, 405)

    run(body)


def test_bearer_token():
    async def body(port):
        url = f"http://127.0.0.1:{port}/customers/c-1/segments"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"] == "Bearer"
            async with http.get(url, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            async with http.get(url, headers={"Authorization": "Bearer s3cret"}) as r:
                assert r.status == 200

    run(body, token="s3cret")


def test_pipelined_requests_are_answered_in_order_on_one_connection():
    async def body(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ids = ["c-1", "nobody", "c-1", "missing-route", "c-1"]
        for customer in ids:
            path = "/nope" if customer == "missing-route" else f"/customers/{customer}/segments"
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        answers = []
        for _ in ids:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = head.split(b" ")[1]
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            answers.append((status, orjson.loads(await reader.readexactly(length))))
        writer.close()
        assert [a[0] for a in answers] == [b"200", b"200", b"200", b"404", b"200"]
        assert answers[0][1]["customer_id"] == "c-1"
        assert answers[1][1]["customer_id"] == "nobody"
        assert answers[2][1]["customer_id"] == "c-1"
        assert answers[4][1]["customer_id"] == "c-1"

    run(body)


def test_connection_close_is_honoured():
    async def body(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /customers/c-1/segments HTTP/1.0\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)  # EOF: the server closed
        assert data.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in data
        writer.close()

    run(body)


def test_healthz_and_readyz_on_the_fast_path():
    async def body(port):
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
            async with http.get(f"{base}/readyz") as r:
                assert (r.status, await r.json()) == (200, {"status": "ready"})

    run(body)


def test_redis_down_gives_503_with_a_reason_on_lookups_and_readyz():
    async def main():
        import socket

        with socket.socket() as s:  # a port where nothing listens
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        reader = PipelinedReader(f"redis://127.0.0.1:{dead}/0")
        server = await start_lookup_server(reader, host="127.0.0.1", port=0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/customers/c-1/segments") as r:
                    assert r.status == 503 and r.headers["Retry-After"] == "1"
                    document = await r.json()
                    assert document["error"] == "cache-unavailable"
                    assert "Redis did not answer" in document["message"]
                async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                    assert r.status == 503
                    assert await r.json() == {"status": "not-ready", "reason": "cache-unavailable"}
        finally:
            server.close()
            await server.wait_closed()
            reader.close()

    asyncio.run(main())
