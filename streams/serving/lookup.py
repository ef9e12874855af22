"""The lookup document and the rules both lookup ports apply (the aiohttp route, the fast path)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, TypedDict
from urllib.parse import unquote_to_bytes

import orjson

from streams.serving.cache import customer_traits, member_segments

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


class _Limits(TypedDict):
    max_line_size: int
    max_field_size: int
    max_headers: int


AIOHTTP_LIMITS = _Limits(
    max_line_size=MAX_TARGET_BYTES,
    max_field_size=MAX_HEADER_FIELD_BYTES,
    max_headers=MAX_HEADERS,
)
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


CACHE_INCOMPLETE_MESSAGE = (
    "the segment cache is missing or being rebuilt from segment-memberships; "
    "no lookup is answered until it is complete"
)
CACHE_INCOMPLETE = error_body("cache-rebuilding", CACHE_INCOMPLETE_MESSAGE)


def cache_unavailable(error: BaseException) -> bytes:
    return error_body("cache-unavailable", f"Redis did not answer ({type(error).__name__})")


def lookup_answer(customer_id: str, fields: dict[str, str], complete: bool) -> tuple[int, bytes]:
    """(status, JSON body) of a lookup, given the customer's hash and the sentinel.

    Without the sentinel an empty hash may be a lost cache, not a customer in no segment:
    503, never a 200 that says "no segments" (decision 0004).
    """
    if not complete:
        return 503, CACHE_INCOMPLETE
    return 200, orjson.dumps(lookup_document(customer_id, fields))


def lookup_document(customer_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """GET /customers/{id}/segments (SPEC section 6), from the customer's Redis hash.

    The one place the document is built: both HTTP ports and `segments lookup` use it.
    `traits` maps each trait that has a value now to it ({} when none).
    """
    return {
        "customer_id": customer_id,
        "segments": [{"name": name, "since": since} for name, since in member_segments(fields)],
        "traits": customer_traits(fields),
        "as_of": now_iso(),
    }


def readiness(complete: bool | BaseException) -> tuple[int, bytes]:
    """(status, JSON body) of /readyz from the sentinel check (or the error it raised)."""
    if isinstance(complete, BaseException):
        reason = "cache-unavailable"
    elif not complete:
        reason = "cache-rebuilding"
    else:
        return 200, b'{"status":"ready"}'
    return 503, orjson.dumps({"status": "not-ready", "reason": reason})
