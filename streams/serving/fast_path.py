"""The checkout fast path: GET /customers/{id}/segments on a minimal HTTP/1.1 server."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from streams.serving.cache import Keys
from streams.serving.lookup import (
    MAX_HEADER_FIELD_BYTES,
    MAX_HEADERS,
    MAX_TARGET_BYTES,
    RETRY_AFTER_S,
    BadCustomerId,
    cache_unavailable,
    customer_id_from_path,
    error_body,
    lookup_answer,
    readiness,
)
from streams.serving.lookup_reader import LookupReader

# GET /customers/{id}/segments is the one request a till makes, thousands of times a
# second. aiohttp spends about 120 µs of CPU on each (request and response objects,
# router, middleware); this protocol answers the same request, byte for byte the same
# document, in a fraction of that: it parses only what a GET needs and hands every
# lookup to the shared PipelinedReader. Redis answers one connection in order, so the
# replies, and so the responses of one keep-alive connection, come back in request order.

_PATH_PREFIX = b"/customers/"
_PATH_SUFFIX = b"/segments"
_STATUS = {
    200: b"200 OK",
    400: b"400 Bad Request",
    401: b"401 Unauthorized",
    404: b"404 Not Found",
    405: b"405 Method Not Allowed",
    503: b"503 Service Unavailable",
}
_RETRY_AFTER = b"Retry-After: %d\r\n" % RETRY_AFTER_S
_TOO_LARGE = error_body(
    "header-too-large",
    f"the request target and each header name and value may have at most "
    f"{MAX_HEADER_FIELD_BYTES} bytes, and a request at most {MAX_HEADERS} headers",
)

Answer = tuple[int, bytes]  # (status, JSON body)
READY_TIMEOUT_S = 2.0  # /readyz on a Cluster: every slot's sentinel, like the aiohttp port


def _response(status: int, body: bytes, close: bool, extra: bytes = b"") -> bytes:
    if status == 503:
        extra += _RETRY_AFTER
    return b"".join(
        (
            b"HTTP/1.1 ", _STATUS[status],
            b"\r\nContent-Type: application/json\r\nContent-Length: ",
            str(len(body)).encode(), b"\r\n", extra,
            b"Connection: close\r\n\r\n" if close else b"\r\n",
            body,
        )
    )  # fmt: skip


def _head_too_large(lines: list[bytes]) -> bool:
    """The limits aiohttp applies (AIOHTTP_LIMITS), on a request head split into lines.

    On an incomplete head (no blank line yet) the last line may still grow: it is judged
    by what has arrived, so a client cannot make the buffer grow without bound.
    """
    if len(lines) - 1 > MAX_HEADERS:
        return True
    request_line = lines[0].split(b" ")
    target = request_line[1] if len(request_line) > 1 else lines[0]
    if len(target) > MAX_TARGET_BYTES:
        return True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if len(name) > MAX_HEADER_FIELD_BYTES or len(value.strip()) > MAX_HEADER_FIELD_BYTES:
            return True
    return False


class LookupProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive server for GET /customers/{id}/segments, /readyz and /healthz."""

    def __init__(
        self,
        reader: LookupReader,
        prefix: str,
        expected_auth: bytes | None,
        is_complete: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.reader = reader
        self.key_prefix = f"{prefix}cust:"
        self.keys = Keys(prefix)
        self.sentinel = self.keys.sentinel().encode()
        # On a Cluster (is_complete given): each lookup reads its slot's sentinel, and
        # /readyz asks is_complete (every slot's sentinel) instead of one EXISTS.
        self.is_complete = is_complete
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
                # Nothing can be over a limit before this many bytes have arrived.
                if len(self.buffer) > MAX_TARGET_BYTES and _head_too_large(
                    self.buffer.split(b"\r\n")
                ):
                    self._in_order(400, _TOO_LARGE, True)
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            self._request(head)

    def _request(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        if len(lines) - 1 > MAX_HEADERS or (
            len(head) > MAX_TARGET_BYTES and _head_too_large(lines)
        ):
            self._in_order(400, _TOO_LARGE, True)
            return
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._in_order(400, error_body("bad-request", "not an HTTP/1.x request line"), True)
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
                self._in_order(400, error_body("body", "a lookup has no request body"), True)
                return
        path = target.split(b"?", 1)[0]
        if path in (b"/readyz", b"/healthz"):  # open, like on the aiohttp port
            self._probe(method, path, close)
            return
        if not (path.startswith(_PATH_PREFIX) and path.endswith(_PATH_SUFFIX)):
            self._in_order(404, b'{"error":"not-found"}', close)
            return
        if method != b"GET":
            self._in_order(405, b'{"error":"method"}', close)
            return
        if self.expected_auth is not None and not hmac.compare_digest(auth, self.expected_auth):
            body = b'{"error":"unauthorized","message":"missing or wrong bearer token"}'
            self._in_order(401, body, close, b"WWW-Authenticate: Bearer\r\n")
            return
        raw_id = path[len(_PATH_PREFIX) : -len(_PATH_SUFFIX)]
        if not raw_id or b"/" in raw_id:
            self._in_order(404, b'{"error":"not-found"}', close)
            return
        try:
            customer_id = customer_id_from_path(raw_id)
        except BadCustomerId as error:
            self._in_order(400, error_body("bad-customer-id", str(error)), close)
            return
        try:
            future = self.reader.pair_future(
                (b"HGETALL", (self.key_prefix + customer_id).encode()),
                (b"EXISTS", self._sentinel_of(customer_id)),
            )
        except Exception as error:
            self._in_order(503, cache_unavailable(error), close)
            return
        future.add_done_callback(lambda done: self._answer_lookup(customer_id, done, close))
        self.last = future
        if close:
            self.closing = True

    def _probe(self, method: bytes, path: bytes, close: bool) -> None:
        if method != b"GET":
            self._in_order(405, b'{"error":"method"}', close)
        elif path == b"/healthz":
            self._in_order(200, b'{"status":"ok"}', close)
        elif self.is_complete is not None:
            future = asyncio.ensure_future(_after(self.last, self.is_complete))
            future.add_done_callback(lambda done: self._answer(_ready, readiness, done, close))
            self.last = future
            if close:
                self.closing = True
        else:
            ready = ((b"EXISTS", self.sentinel),)
            self._ask(ready, _ready, close, readiness)

    def _sentinel_of(self, customer_id: str) -> bytes:
        if self.is_complete is None:
            return self.sentinel
        return self.keys.sentinel_of(customer_id, cluster=True).encode()

    def _ask(
        self,
        commands: tuple[tuple[bytes, ...], ...],
        answer: Callable[[list[Any]], Answer],
        close: bool,
        failed: Callable[[BaseException], Answer] | None = None,
    ) -> None:
        """Sends the commands; answers answer(replies), or failed(error) when Redis does not."""
        if failed is None:
            failed = _unavailable
        try:
            future = self.reader.commands_future(*commands)
        except Exception as error:
            self._in_order(*failed(error), close)
            return
        future.add_done_callback(lambda done: self._answer(answer, failed, done, close))
        self.last = future
        if close:
            self.closing = True

    def _in_order(self, status: int, body: bytes, close: bool, extra: bytes = b"") -> None:
        """Replies now, or after the lookups still pending on this connection (pipelining)."""
        if close:
            self.closing = True  # parse nothing after a request that ends the connection
        if self.last is not None and not self.last.done():
            self.last.add_done_callback(lambda _: self._reply(status, body, close, extra))
        else:
            self._reply(status, body, close, extra)

    def _answer(
        self,
        answer: Callable[[list[Any]], Answer],
        failed: Callable[[BaseException], Answer],
        done: asyncio.Future[list[Any]],
        close: bool,
    ) -> None:
        error = asyncio.CancelledError() if done.cancelled() else done.exception()
        if error is not None:
            self._reply(*failed(error), close)
            return
        status, body = answer(done.result())
        self._reply(status, body, close)

    def _answer_lookup(self, customer_id: str, done: asyncio.Future[Any], close: bool) -> None:
        error = asyncio.CancelledError() if done.cancelled() else done.exception()
        if error is not None:
            self._reply(503, cache_unavailable(error), close)
            return
        flat, complete = done.result()
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        self._reply(*lookup_answer(customer_id, fields, bool(complete)), close)

    def _reply(self, status: int, body: bytes, close: bool, extra: bytes = b"") -> None:
        if self.transport is None:
            return
        self.transport.write(_response(status, body, close, extra))
        if close:
            self.closing = True
            self.transport.close()  # after the buffered writes are flushed


def _ready(replies: list[Any]) -> Answer:
    return readiness(bool(replies[0]))


async def _after(
    previous: asyncio.Future[Any] | None, check: Callable[[], Awaitable[bool]]
) -> list[Any]:
    """[check()], once the connection's previous request is answered (replies in order)."""
    if previous is not None and not previous.done():
        await asyncio.wait({previous})
    return [await asyncio.wait_for(check(), READY_TIMEOUT_S)]


def _unavailable(error: BaseException) -> Answer:
    return 503, cache_unavailable(error)


async def start_lookup_server(
    reader: LookupReader,
    *,
    host: str,
    port: int,
    prefix: str = "",
    api_token: str | None = None,
    is_complete: Callable[[], Awaitable[bool]] | None = None,
) -> asyncio.AbstractServer:
    """Serves the checkout fast path on host:port (SO_REUSEPORT, so processes can share it).

    is_complete: on a Redis Cluster, RedisCache.is_complete (the per-slot sentinels).
    """
    expected = f"Bearer {api_token}".encode() if api_token else None
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: LookupProtocol(reader, prefix, expected, is_complete),
        host,
        port,
        reuse_port=True,
        backlog=1024,
    )
