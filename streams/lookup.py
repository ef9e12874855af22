"""`segments lookup ID`: a customer's segments straight from the Redis cache (one HGETALL)."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any
from urllib.parse import unquote

import click
import orjson

from streams.sinks.redis import RedisCache


async def lookup(cache: RedisCache, customer_id: str) -> dict:
    """The same document as GET /customers/{id}/segments."""
    from streams.web import now_iso

    segments = await cache.customer_segments(customer_id)
    return {
        "customer_id": customer_id,
        "segments": [{"name": name, "since": since} for name, since in segments],
        "as_of": now_iso(),
    }


@click.command("lookup")
@click.argument("customer_id")
def lookup_command(customer_id: str) -> None:
    """Print the segments CUSTOMER_ID is in now, as JSON, from the Redis cache."""
    from redis.exceptions import RedisError

    from streams.serving import ServingConfig

    config = ServingConfig.load()

    async def main() -> dict:
        client = config.redis_client()
        try:
            return await lookup(RedisCache(client, config.redis_prefix), customer_id)
        finally:
            await client.aclose()

    try:
        document = asyncio.run(main())
    except (RedisError, OSError) as error:
        raise click.ClickException(f"Redis at {config.redis_url} did not answer: {error}") from None
    click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())


# --- the checkout fast path ------------------------------------------------------------
# GET /customers/{id}/segments is the one request a till makes, thousands of times a
# second. aiohttp spends about 120 µs of CPU on each (request and response objects,
# router, middleware); this protocol answers the same request, byte for byte the same
# document, in a fraction of that: it parses only what a GET needs and hands every
# HGETALL to the shared PipelinedReader. Redis answers one connection in order, so the
# replies, and so the responses of one keep-alive connection, come back in request order.

_PATH_PREFIX = b"/customers/"
_PATH_SUFFIX = b"/segments"
_MAX_HEAD = 16 * 1024


def _response(status: bytes, body: bytes, close: bool, extra: bytes = b"") -> bytes:
    return b"".join(
        (
            b"HTTP/1.1 ", status, b"\r\nContent-Type: application/json\r\nContent-Length: ",
            str(len(body)).encode(), b"\r\n", extra,
            b"Connection: close\r\n\r\n" if close else b"\r\n",
            body,
        )
    )  # fmt: skip


class LookupProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive server for GET /customers/{id}/segments only (404 otherwise)."""

    def __init__(self, reader: Any, prefix: str, expected_auth: bytes | None) -> None:
        self.reader = reader
        self.key_prefix = f"{prefix}cust:"
        self.expected_auth = expected_auth
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.last: asyncio.Future[Any] | None = None  # the newest pending lookup

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.closing:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEAD:
                    self._in_order(b"431 Request Header Fields Too Large", b"{}", True)
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            self._request(head)

    def _request(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._in_order(b"400 Bad Request", b'{"error":"bad-request"}', True)
            return
        method, target, version = parts
        close = version == b"HTTP/1.0"
        auth = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"authorization":
                auth = value.strip()
            elif name == b"connection":
                token = value.strip().lower()
                close = token == b"close" or (close and token != b"keep-alive")
            elif name in (b"content-length", b"transfer-encoding") and value.strip() != b"0":
                self._in_order(b"400 Bad Request", b'{"error":"body"}', True)
                return
        path = target.split(b"?", 1)[0]
        if not (path.startswith(_PATH_PREFIX) and path.endswith(_PATH_SUFFIX)):
            self._in_order(b"404 Not Found", b'{"error":"not-found"}', close)
            return
        if method != b"GET":
            self._in_order(b"405 Method Not Allowed", b'{"error":"method"}', close)
            return
        if self.expected_auth is not None and not hmac.compare_digest(auth, self.expected_auth):
            body = b'{"error":"unauthorized","message":"missing or wrong bearer token"}'
            extra = b"WWW-Authenticate: Bearer\r\n"
            self._in_order(b"401 Unauthorized", body, close, extra)
            return
        raw_id = path[len(_PATH_PREFIX) : -len(_PATH_SUFFIX)]
        customer_id = (
            unquote(raw_id.decode("utf-8", "replace"))
            if b"%" in raw_id
            else raw_id.decode("utf-8", "replace")
        )
        if not customer_id or b"/" in raw_id:
            self._in_order(b"404 Not Found", b'{"error":"not-found"}', close)
            return
        try:
            future = self.reader.hgetall_future(self.key_prefix + customer_id)
        except Exception:
            self._in_order(b"503 Service Unavailable", b'{"error":"cache-unavailable"}', close)
            return
        future.add_done_callback(lambda done: self._answer(customer_id, done, close))
        self.last = future
        if close:
            self.closing = True

    def _in_order(self, status: bytes, body: bytes, close: bool, extra: bytes = b"") -> None:
        """Replies now, or after the lookups still pending on this connection (pipelining)."""
        if close:
            self.closing = True  # parse nothing after a request that ends the connection
        if self.last is not None and not self.last.done():
            self.last.add_done_callback(lambda _: self._reply(status, body, close, extra))
        else:
            self._reply(status, body, close, extra)

    def _answer(self, customer_id: str, done: asyncio.Future[Any], close: bool) -> None:
        from streams.sinks.redis import member_segments
        from streams.web import now_iso

        if done.cancelled() or done.exception() is not None:
            self._reply(b"503 Service Unavailable", b'{"error":"cache-unavailable"}', close)
            return
        reply = done.result()
        fields = dict(zip(reply[::2], reply[1::2], strict=True))
        body = orjson.dumps(
            {
                "customer_id": customer_id,
                "segments": [{"name": n, "since": s} for n, s in member_segments(fields)],
                "as_of": now_iso(),
            }
        )
        self._reply(b"200 OK", body, close)

    def _reply(self, status: bytes, body: bytes, close: bool, extra: bytes = b"") -> None:
        if self.transport is None:
            return
        self.transport.write(_response(status, body, close, extra))
        if close:
            self.closing = True
            self.transport.close()  # after the buffered writes are flushed


async def start_lookup_server(
    reader: Any, *, host: str, port: int, prefix: str = "", api_token: str | None = None
) -> asyncio.AbstractServer:
    """Serves the checkout fast path on host:port (SO_REUSEPORT, so processes can share it)."""
    expected = f"Bearer {api_token}".encode() if api_token else None
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: LookupProtocol(reader, prefix, expected), host, port, reuse_port=True, backlog=1024
    )
