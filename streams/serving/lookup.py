"""`segments lookup ID`: a customer's segments straight from the Redis cache (one HGETALL)."""

from __future__ import annotations

import asyncio
import hmac
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_to_bytes

import click
import orjson

from streams.serving.cache import Keys, RedisCache, member_segments

_last_second: list[Any] = [-1, ""]


def now_iso() -> str:
    """The wall clock as ISO-8601 UTC with milliseconds and a Z (the lookup's `as_of`)."""
    now = time.time()
    second = int(now)
    if second != _last_second[0]:  # strftime once a second, not per request
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _last_second[0], _last_second[1] = second, text
    return f"{_last_second[1]}{int((now - second) * 1000):03d}Z"


# --- the rules both lookup ports apply (the aiohttp route and the fast path) -------------
# One function decides which customer a request names and one decides what it answers, so
# the two ports cannot look up different customers or answer differently.

MAX_CUSTOMER_ID_CHARS = 128  # SPEC section 1: customer_id is 1..128 characters
# Request-head limits, handed to aiohttp (AppRunner) and enforced by the fast path: the
# request target and each header name and value at most 8190 bytes, at most 128 headers.
MAX_TARGET_BYTES = 8190
MAX_HEADER_FIELD_BYTES = 8190
MAX_HEADERS = 128
AIOHTTP_LIMITS = {
    "max_line_size": MAX_TARGET_BYTES,
    "max_field_size": MAX_HEADER_FIELD_BYTES,
    "max_headers": MAX_HEADERS,
}
RETRY_AFTER_S = 1  # what a 503 lookup asks the till to wait before asking again


class BadCustomerId(ValueError):
    """The path does not name a valid customer id (a 400 `bad-customer-id` on both ports)."""


def customer_id_from_path(raw: bytes) -> str:
    """The customer id of a raw path segment (as sent, still percent-encoded).

    Percent-escapes are decoded to bytes (an invalid escape stays literal, as aiohttp
    keeps it), the bytes must be UTF-8, and the id must have 1..128 characters.
    """
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadCustomerId("the customer id must be percent-encoded in the path") from None
    if not text.isprintable():
        raise BadCustomerId("the customer id must be percent-encoded in the path")
    if "%" in text:
        try:
            text = unquote_to_bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise BadCustomerId("the customer id is not valid UTF-8 once percent-decoded") from None
    if not 1 <= len(text) <= MAX_CUSTOMER_ID_CHARS:
        raise BadCustomerId(
            f"a customer id has 1 to {MAX_CUSTOMER_ID_CHARS} characters; this one has {len(text)}"
        )
    return text


def error_body(reason: str, message: str) -> bytes:
    return orjson.dumps({"error": reason, "message": message})


CACHE_INCOMPLETE = error_body(
    "cache-rebuilding",
    "the segment cache is missing or being rebuilt from segment-memberships; "
    "no lookup is answered until it is complete",
)


def cache_unavailable(error: BaseException) -> bytes:
    return error_body("cache-unavailable", f"Redis did not answer ({type(error).__name__})")


def lookup_answer(customer_id: str, fields: dict[str, str], complete: bool) -> tuple[int, bytes]:
    """(status, JSON body) of a lookup, given the customer's hash and the sentinel.

    Without the sentinel an empty hash may be a lost cache, not a customer in no segment:
    503, never a 200 that says "no segments" (decision 0004).
    """
    if not complete:
        return 503, CACHE_INCOMPLETE
    body = orjson.dumps(
        {
            "customer_id": customer_id,
            "segments": [{"name": n, "since": s} for n, s in member_segments(fields)],
            "as_of": now_iso(),
        }
    )
    return 200, body


def readiness(complete: bool | BaseException) -> tuple[int, bytes]:
    """(status, JSON body) of /readyz from the sentinel check (or the error it raised)."""
    if isinstance(complete, BaseException):
        reason = "cache-unavailable"
    elif not complete:
        reason = "cache-rebuilding"
    else:
        return 200, b'{"status":"ready"}'
    return 503, orjson.dumps({"status": "not-ready", "reason": reason})


async def lookup(cache: RedisCache, customer_id: str) -> dict:
    """The same document as GET /customers/{id}/segments; ClickException while incomplete."""
    fields, complete = await cache.customer_fields(customer_id)
    status, body = lookup_answer(customer_id, fields, complete)
    if status != 200:
        raise click.ClickException(orjson.loads(body)["message"])
    document: dict = orjson.loads(body)
    return document


@click.command("lookup")
@click.argument("customer_id")
def lookup_command(customer_id: str) -> None:
    """Print the segments CUSTOMER_ID is in now, as JSON, from the Redis cache."""
    from redis.exceptions import RedisError

    from streams.serving.process import ServingConfig

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

    def __init__(self, reader: Any, prefix: str, expected_auth: bytes | None) -> None:
        self.reader = reader
        self.key_prefix = f"{prefix}cust:"
        self.sentinel = Keys(prefix).sentinel().encode()
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
                (b"HGETALL", (self.key_prefix + customer_id).encode()), (b"EXISTS", self.sentinel)
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
        else:
            ready = ((b"EXISTS", self.sentinel),)
            self._ask(ready, lambda replies: readiness(bool(replies[0])), close, readiness)

    def _ask(
        self,
        commands: tuple[tuple[bytes, ...], ...],
        answer: Any,
        close: bool,
        failed: Any = None,
    ) -> None:
        """Sends the commands; answers answer(replies), or failed(error) when Redis does not."""
        failed = failed or _unavailable
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

    def _answer(self, answer: Any, failed: Any, done: asyncio.Future[Any], close: bool) -> None:
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


def _unavailable(error: BaseException) -> tuple[int, bytes]:
    return 503, cache_unavailable(error)


async def start_lookup_server(
    reader: Any, *, host: str, port: int, prefix: str = "", api_token: str | None = None
) -> asyncio.AbstractServer:
    """Serves the checkout fast path on host:port (SO_REUSEPORT, so processes can share it)."""
    expected = f"Bearer {api_token}".encode() if api_token else None
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: LookupProtocol(reader, prefix, expected), host, port, reuse_port=True, backlog=1024
    )
