"""Property: the decoder's fast path accepts exactly what the full decoder accepts, with the
same event; every message it does not take gets the full decoder's reason and message."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segments.events import Rejection, _decode_event_in_full, decode_event

pytestmark = pytest.mark.unit

CURRENCIES = frozenset({"EUR", "USD"})

# Values that are right, wrong in type, wrong in range, or odd for each kind of field.
TEXT = st.sampled_from(["e1", "c-42", "", "x" * 129, "x" * 201, "é" * 128, "naïve"])
ANY = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**20), st.floats(allow_nan=False), TEXT)
AMOUNT = st.sampled_from(
    ["19.99", "0", "0.00", "-0", "-1", "1e3", "1E+2", "5.", ".5", "1_000", " 5", "NaN",
     "Infinity", "1e15", "999999999999999.999999999999", "0.0000000000001", "abc",
     0, 7, -3, 10**15, 10**30, 12.5, True]
)  # fmt: skip
INSTANT = st.sampled_from(
    ["2026-11-20T14:03:11Z", "2026-11-20T14:03:11.120+01:00", "2026-11-20T14:03:11",
     "2026-11-20", "20261120T140311Z", "2026-11-20T14:03:11.1234567Z", "2026-13-01T00:00:00Z",
     "2026-11-20t14:03:11z", "yesterday", 5]
)  # fmt: skip


def usually(valid: Any, odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid value, so that many messages are accepted; sometimes an odd one."""
    return st.one_of(*[st.just(valid)] * 12, odd)


@st.composite
def lines(draw: st.DrawFn) -> dict[str, Any]:
    line: dict[str, Any] = {
        "sku": draw(usually("A4-0006", st.one_of(TEXT, ANY))),
        "category": draw(st.sampled_from(["Music", "Running Shoes", "", 3])),
        "quantity": draw(st.sampled_from([1, 2, 2, 3, 0, -1, 10**9, 10**9 + 1, 1.0, True, "1"])),
        "unit_price": draw(usually("24.95", AMOUNT)),
    }
    if draw(st.booleans()):
        line["discount"] = draw(usually("1.00", AMOUNT))
    if draw(st.integers(0, 4)) == 0:
        line[draw(st.sampled_from(["product", "colour"]))] = draw(ANY)
    if draw(st.integers(0, 6)) == 0:
        del line[draw(st.sampled_from(sorted(line)))]
    return line


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    obj: dict[str, Any] = {
        "event_id": draw(usually("e1", TEXT)),
        "customer_id": draw(usually("c-42", TEXT)),
        "occurred_at": draw(usually("2026-11-20T14:03:11.120Z", INSTANT)),
        "channel": draw(st.sampled_from(["pos", "online", "pos", "online", "web", None, 1])),
        "currency": draw(st.sampled_from(["EUR", "USD", "EUR", "USD", "GBP", "eur", None, 978])),
        "total": draw(usually("29.90", AMOUNT)),
    }
    optional = {
        "type": st.sampled_from(["purchase", "return", "return", "clock", "refund", None, 1]),
        "discount_total": usually("0.00", AMOUNT),
        "lines": st.one_of(st.lists(lines(), max_size=3), ANY),
        "store_id": usually("S01", st.one_of(TEXT, ANY)),
        "order_id": usually("W00000001", st.one_of(TEXT, ANY)),
        "original_event_id": usually("e0", st.one_of(TEXT, ANY)),
        "extra": ANY,
    }
    for name, strategy in optional.items():
        if draw(st.integers(0, 2)) == 0:
            obj[name] = draw(strategy)
    if draw(st.integers(0, 5)) == 0:
        del obj[draw(st.sampled_from(sorted(obj)))]
    return json.dumps(obj, ensure_ascii=False).encode()


def outcome(decoder: Any, raw: bytes) -> Any:
    try:
        return decoder(raw, CURRENCIES)
    except Rejection as rejection:
        return (rejection.reason, rejection.message)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_fast_path_and_full_decoder_agree(raw: bytes) -> None:
    assert outcome(decode_event, raw) == outcome(_decode_event_in_full, raw)


def test_the_usual_message_takes_the_fast_path() -> None:
    raw = (
        b'{"event_id":"e1","customer_id":"c1","occurred_at":"2026-11-20T14:03:11Z",'
        b'"channel":"pos","currency":"EUR","total":"19.99","lines":[{"sku":"s",'
        b'"category":"Music","quantity":2,"unit_price":"10.00","discount":"0.01"}]}'
    )
    from segments.events import _decode_canonical, _event_from_fields

    assert _event_from_fields(_decode_canonical(raw), CURRENCIES) == decode_event(raw, CURRENCIES)
