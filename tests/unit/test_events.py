"""decode_event / encode_event: the canonical form of SPEC section 1 and every rejection reason."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segments.events import (
    MAX_PAYLOAD_BYTES,
    REASONS,
    ClockMark,
    Line,
    Purchase,
    Rejection,
    Return,
    decode_event,
    encode_event,
    event_from_mapping,
)

pytestmark = pytest.mark.unit

CURRENCIES = frozenset({"EUR", "USD", "GBP"})


def canonical(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "pos-0001-000123",
        "customer_id": "c-42",
        "occurred_at": "2026-11-20T14:03:11.120Z",
        "channel": "pos",
        "type": "purchase",
        "currency": "EUR",
        "total": "159.85",
        "discount_total": "10.00",
        "store_id": "0001",
        "lines": [
            {
                "sku": "RS-1001",
                "category": "Running Shoes",
                "quantity": 1,
                "unit_price": "119.95",
                "discount": "10.00",
            },
            {
                "sku": "SO-2002",
                "category": "Socks",
                "quantity": 2,
                "unit_price": "9.95",
                "discount": "0",
            },
        ],
    }
    event.update(changes)
    return event


def decode(document: Any) -> Any:
    return decode_event(orjson.dumps(document), CURRENCIES)


def reason_of(raw: bytes) -> str:
    with pytest.raises(Rejection) as caught:
        decode_event(raw, CURRENCIES)
    assert caught.value.reason in REASONS
    assert caught.value.message
    return caught.value.reason


def rejected(document: Any) -> Rejection:
    with pytest.raises(Rejection) as caught:
        decode(document)
    return caught.value


# --- the valid shapes --------------------------------------------------------


def test_a_canonical_purchase_decodes_into_the_dataclasses() -> None:
    event = decode(canonical())
    assert event == Purchase(
        event_id="pos-0001-000123",
        customer_id="c-42",
        occurred_at=1_795_183_391_120_000,
        channel="pos",
        currency="EUR",
        total=Decimal("159.85"),
        discount_total=Decimal("10.00"),
        lines=(
            Line("RS-1001", "Running Shoes", 1, Decimal("119.95"), Decimal("10.00")),
            Line("SO-2002", "Socks", 2, Decimal("9.95"), Decimal("0")),
        ),
        store_id="0001",
    )
    assert type(event) is Purchase
    assert hash(event) == hash(pickle.loads(pickle.dumps(event)))
    with pytest.raises(AttributeError):
        event.total = Decimal(0)  # type: ignore[misc]


def test_decoded_instances_behave_like_constructed_ones() -> None:
    event = decode(canonical(type="return", original_event_id="pos-0001-000100"))
    assert type(event) is Return
    assert type(event.lines[0]) is Line
    assert event.lines[0].amount == Decimal("109.95")
    assert repr(event).startswith("Return(event_id='pos-0001-000123'")


def test_optional_fields_take_their_defaults() -> None:
    document = canonical()
    for field in ("type", "discount_total", "store_id", "lines"):
        del document[field]
    event = decode(document)
    assert isinstance(event, Purchase)
    assert event.discount_total == 0
    assert event.lines == ()
    assert event.store_id is None
    assert event.order_id is None


def test_null_counts_as_absent_for_optional_fields() -> None:
    event = decode(canonical(type=None, discount_total=None, store_id=None, order_id=None))
    assert isinstance(event, Purchase)
    assert event.discount_total == 0


def test_a_return_names_its_original_purchase() -> None:
    event = decode(canonical(type="return", original_event_id="pos-0001-000100"))
    assert isinstance(event, Return)
    assert event.original_event_id == "pos-0001-000100"
    without_original = decode(canonical(type="return"))
    assert isinstance(without_original, Return)
    assert without_original.original_event_id is None


def test_a_clock_mark() -> None:
    mark = decode({"type": "clock", "at": "2026-12-01T00:00:00+01:00"})
    assert mark == ClockMark(at=int(datetime(2026, 11, 30, 23, tzinfo=UTC).timestamp()) * 10**6)
    assert reason_of(b'{"type": "clock"}') == "missing_field"
    assert reason_of(b'{"type": "clock", "at": "2026-12-01T00:00:00"}') == "naive_timestamp"


def test_unknown_fields_are_ignored_whatever_their_type() -> None:
    event = decode(canonical(note=[1, {"x": None}], total_incl_vat=3.5, ttl=True))
    assert isinstance(event, Purchase)
    lines = canonical()["lines"]
    lines[0]["colour"] = {"name": "red"}
    assert decode(canonical(lines=lines)) == decode(canonical())


def test_surrounding_whitespace_and_a_trailing_newline_are_fine() -> None:
    raw = b"  " + orjson.dumps(canonical()) + b"\n"
    assert decode_event(raw, CURRENCIES) == decode(canonical())


# --- exact money -------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["19.99", "0.1", "0.2", "1234567.89", "0.000000000001", "999999999999999.99"]
)
def test_json_numbers_keep_their_exact_decimal_value(text: str) -> None:
    raw = orjson.dumps(canonical()).replace(b'"159.85"', text.encode())
    event = decode_event(raw, CURRENCIES)
    assert isinstance(event, Purchase)
    assert event.total == Decimal(text)


def test_point_one_plus_point_two_stays_exact() -> None:
    lines = [
        {"sku": "a", "category": "c", "quantity": 1, "unit_price": 0.1, "discount": 0},
        {"sku": "b", "category": "c", "quantity": 1, "unit_price": 0.2, "discount": 0},
    ]
    raw = json.dumps(canonical(total=0.3, lines=lines)).encode()
    event = decode_event(raw, CURRENCIES)
    assert sum(line.amount for line in event.lines) == Decimal("0.3") == event.total


def test_numbers_with_more_digits_than_a_float_holds_stay_exact() -> None:
    # 16 and 18 significant digits: a binary float would round them
    raw = orjson.dumps(canonical()).replace(b'"159.85"', b"9999.999999999999")
    assert decode_event(raw, CURRENCIES).total == Decimal("9999.999999999999")
    raw = orjson.dumps(canonical()).replace(b'"159.85"', b"123456789012.345678")
    assert decode_event(raw, CURRENCIES).total == Decimal("123456789012.345678")


def test_integer_amounts_and_exponents() -> None:
    assert decode(canonical(total=20)).total == Decimal(20)
    raw = orjson.dumps(canonical()).replace(b'"159.85"', b"1.5e2")
    assert decode_event(raw, CURRENCIES).total == Decimal(150)
    assert decode(canonical(total="1.5E2")).total == Decimal(150)


def test_decimal_strings_keep_their_scale_and_zero_is_never_negative() -> None:
    assert str(decode(canonical(total="19.90")).total) == "19.90"
    zero = decode(canonical(total="-0.00")).total
    assert zero == 0 and not zero.is_signed()


def test_more_than_twelve_decimal_places_is_out_of_range_unless_they_are_zeros() -> None:
    assert decode(canonical(total="1.5000000000000000")).total == Decimal("1.5")
    assert rejected(canonical(total="0.0000000000001")).reason == "amount_out_of_range"


# --- timestamps --------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-20T14:03:11.120Z",
        "2026-11-20T14:03:11.120+00:00",
        "2026-11-20T15:03:11.120+01:00",
        "2026-11-20T09:03:11.120-05:00",
        "2026-11-21T01:33:11.120+11:30",
    ],
)
def test_offsets_are_normalised_to_utc_microseconds(text: str) -> None:
    assert decode(canonical(occurred_at=text)).occurred_at == 1_795_183_391_120_000


def test_microseconds_and_dates_before_the_epoch_are_exact() -> None:
    assert decode(canonical(occurred_at="1970-01-01T00:00:00.000001Z")).occurred_at == 1
    assert decode(canonical(occurred_at="1969-12-31T23:59:59.999999Z")).occurred_at == -1


# --- round trips ---------------------------------------------------------------


def test_encode_then_decode_gives_the_same_event() -> None:
    for event in (
        decode(canonical()),
        decode(canonical(type="return", original_event_id="x", order_id="o-1", lines=[])),
        decode({"type": "clock", "at": "2026-01-01T00:00:00.5Z"}),
    ):
        assert decode_event(encode_event(event), CURRENCIES) == event


def test_canonical_bytes_are_a_fixed_point() -> None:
    raw = orjson.dumps(canonical())
    assert encode_event(decode_event(raw, CURRENCIES)) == raw


def test_encoding_writes_amounts_as_plain_strings_and_instants_in_utc() -> None:
    event = decode(canonical(total="1E+2", occurred_at="2026-11-20T15:03:11+01:00"))
    document = orjson.loads(encode_event(event))
    assert document["total"] == "100"
    assert document["occurred_at"] == "2026-11-20T14:03:11Z"
    assert document["lines"][1]["unit_price"] == "9.95"


def test_event_from_mapping_refuses_binary_floats() -> None:
    with pytest.raises(Rejection) as caught:
        event_from_mapping(canonical(total=19.99), CURRENCIES)
    assert caught.value.reason == "wrong_type"
    assert isinstance(event_from_mapping(canonical(), CURRENCIES), Purchase)


# --- every rejection reason ----------------------------------------------------


def test_payload_too_large() -> None:
    document = canonical(note="")
    padding = MAX_PAYLOAD_BYTES - len(orjson.dumps(document))
    at_limit = orjson.dumps(canonical(note="x" * padding))
    assert len(at_limit) == MAX_PAYLOAD_BYTES
    assert isinstance(decode_event(at_limit, CURRENCIES), Purchase)
    over = orjson.dumps(canonical(note="x" * (padding + 1)))
    assert reason_of(over) == "payload_too_large"


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b'{"event_id": "\xc3\x28"}', b"\xed\xa0\x80"])
def test_invalid_utf8(raw: bytes) -> None:
    assert reason_of(raw) == "invalid_utf8"


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b'{"event_id": }', b"{'a': 1}", b"\xef\xbb\xbf{}", b"[" * 5000, b"{}{}"],
)
def test_invalid_json(raw: bytes) -> None:
    assert reason_of(raw) == "invalid_json"


def test_a_lone_surrogate_escape_is_invalid_json() -> None:
    raw = orjson.dumps(canonical(note="x")).replace(b'"x"', b'"\\ud800"')
    assert reason_of(raw) == "invalid_json"


def test_deep_nesting_in_an_unknown_field_is_fine_up_to_orjsons_limit() -> None:
    deep = b"[" * 1000 + b"]" * 1000
    raw = orjson.dumps(canonical(note="x")).replace(b'"x"', deep)
    assert isinstance(decode_event(raw, CURRENCIES), Purchase)
    # a float amount and a long digit run send it through the standard library
    raw = raw.replace(b'"159.85"', b"159.85").replace(b'"0001"', b'"00000000000000001"')
    assert reason_of(raw) == "invalid_json"


def test_a_truncated_canonical_line_is_invalid_json() -> None:
    assert reason_of(orjson.dumps(canonical())[:-7]) == "invalid_json"


@pytest.mark.parametrize("raw", [b"[]", b"[1, 2]", b'"purchase"', b"42", b"null", b"true"])
def test_not_an_object(raw: bytes) -> None:
    assert reason_of(raw) == "not_an_object"


@pytest.mark.parametrize(
    "field", ["event_id", "customer_id", "occurred_at", "channel", "currency", "total"]
)
def test_missing_field_names_the_field(field: str) -> None:
    document = canonical()
    del document[field]
    rejection = rejected(document)
    assert rejection.reason == "missing_field"
    assert field in rejection.message
    assert rejected(canonical(**{field: None})).reason == "missing_field"


@pytest.mark.parametrize("field", ["sku", "category", "quantity", "unit_price"])
def test_missing_line_field_names_the_line(field: str) -> None:
    lines = canonical()["lines"]
    del lines[1][field]
    rejection = rejected(canonical(lines=lines))
    assert rejection.reason == "missing_field"
    assert f"lines[1].{field}" in rejection.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", 123),
        ("customer_id", ["c-1"]),
        ("occurred_at", 1_795_183_391),
        ("channel", True),
        ("type", 1),
        ("currency", {"code": "EUR"}),
        ("total", True),
        ("total", [1]),
        ("discount_total", {"amount": "1"}),
        ("lines", {"sku": "x"}),
        ("lines", [["RS-1001"]]),
        ("store_id", 1),
        ("order_id", False),
        ("original_event_id", 7),
    ],
)
def test_wrong_type(field: str, value: Any) -> None:
    rejection = rejected(canonical(**{field: value}))
    assert rejection.reason == "wrong_type"
    assert field in rejection.message


@pytest.mark.parametrize(
    ("field", "value"),
    [("sku", 1), ("category", None), ("quantity", "1"), ("quantity", 1.0), ("quantity", True)],
)
def test_wrong_type_in_a_line(field: str, value: Any) -> None:
    lines = canonical()["lines"]
    lines[0][field] = value
    rejection = rejected(canonical(lines=lines))
    assert rejection.reason == ("missing_field" if value is None else "wrong_type")
    assert f"lines[0].{field}" in rejection.message


def test_a_cached_line_does_not_admit_a_boolean_or_float_quantity() -> None:
    decode(canonical())  # the lines are now in the decoder's memo
    for quantity in (True, 1.0):
        lines = canonical()["lines"]
        lines[0]["quantity"] = quantity
        assert rejected(canonical(lines=lines)).reason == "wrong_type"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"event_id": ""}, "event_id"),
        ({"event_id": "e" * 201}, "event_id"),
        ({"customer_id": ""}, "customer_id"),
        ({"customer_id": "c" * 129}, "customer_id"),
        ({"store_id": ""}, "store_id"),
        ({"channel": "phone"}, "channel"),
        ({"type": "refund"}, "type"),
        ({"total": "19,99"}, "total"),
        ({"total": "$5"}, "total"),
        ({"total": " 5"}, "total"),
        ({"total": "١٢"}, "total"),
        ({"total": ""}, "total"),
        ({"original_event_id": "pos-1"}, "original_event_id"),
    ],
)
def test_invalid_value(changes: dict[str, Any], field: str) -> None:
    rejection = rejected(canonical(**changes))
    assert rejection.reason == "invalid_value"
    assert field in rejection.message


def test_boundary_lengths_are_accepted() -> None:
    assert decode(canonical(event_id="e" * 200, customer_id="c" * 128)).customer_id == "c" * 128


@pytest.mark.parametrize(
    ("line_changes", "reason"),
    [
        ({"quantity": 0}, "invalid_value"),
        ({"quantity": -1}, "invalid_value"),
        ({"quantity": 10**12}, "invalid_value"),
        ({"sku": ""}, "invalid_value"),
        ({"discount": "119.96"}, "invalid_value"),  # more than 1 x 119.95
        ({"unit_price": "-1"}, "negative_amount"),
        ({"discount": "NaN"}, "not_a_number"),
    ],
)
def test_line_values(line_changes: dict[str, Any], reason: str) -> None:
    lines = canonical()["lines"]
    lines[0].update(line_changes)
    assert rejected(canonical(lines=lines)).reason == reason


def test_a_line_discount_may_equal_the_line_value_but_not_exceed_it() -> None:
    lines = canonical()["lines"]
    lines[1]["discount"] = "19.90"  # 2 x 9.95
    assert decode(canonical(lines=lines)).lines[1].amount == 0
    lines[1]["discount"] = "19.91"
    assert rejected(canonical(lines=lines)).reason == "invalid_value"


@pytest.mark.parametrize(
    "text", ["2026-11-20T14:03:11", "2026-11-20T14:03:11.120", "2026-11-20", "2026-11-20 14:03"]
)
def test_naive_timestamp(text: str) -> None:
    assert rejected(canonical(occurred_at=text)).reason == "naive_timestamp"


@pytest.mark.parametrize(
    "text", ["", "yesterday", "2026-13-01T00:00:00Z", "2026-11-20T25:00:00Z", "20/11/2026 14:03"]
)
def test_invalid_timestamp(text: str) -> None:
    assert rejected(canonical(occurred_at=text)).reason == "invalid_timestamp"


@pytest.mark.parametrize(
    ("total_json", "reason"),
    [
        (b"NaN", "not_a_number"),
        (b'"NaN"', "not_a_number"),
        (b'"nan"', "not_a_number"),
        (b'"-sNaN"', "not_a_number"),
        (b"Infinity", "infinite_amount"),
        (b"-Infinity", "infinite_amount"),
        (b'"Infinity"', "infinite_amount"),
        (b'"-inf"', "infinite_amount"),
        (b"1e400", "amount_out_of_range"),
        (b"1e15", "amount_out_of_range"),
        (b'"1e15"', "amount_out_of_range"),
        (b"1000000000000000", "amount_out_of_range"),
        (b'"999999999999999999999999999999"', "amount_out_of_range"),
        (b"123456789012345678901234567890", "amount_out_of_range"),
        (b'"1e99999999999999999999"', "amount_out_of_range"),
        (b"1e-99999999999999999999", "amount_out_of_range"),
        (b'"' + b"1" * 100 + b'"', "amount_out_of_range"),
        (b"-5", "negative_amount"),
        (b"-0.01", "negative_amount"),
        (b'"-12.50"', "negative_amount"),
        (b"-1000000000000000", "negative_amount"),
    ],
)
def test_amount_reasons(total_json: bytes, reason: str) -> None:
    raw = orjson.dumps(canonical()).replace(b'"159.85"', total_json)
    assert reason_of(raw) == reason


def test_nan_in_an_unknown_field_is_still_rejected_because_it_is_not_json() -> None:
    raw = orjson.dumps(canonical(note="x")).replace(b'"x"', b"NaN")
    assert reason_of(raw) == "not_a_number"
    raw = orjson.dumps(canonical(note="x")).replace(b'"x"', b"-Infinity")
    assert reason_of(raw) == "infinite_amount"


def test_negative_discount_total() -> None:
    assert rejected(canonical(discount_total="-1")).reason == "negative_amount"


@pytest.mark.parametrize("currency", ["JPY", "eur", "", "EURO"])
def test_unknown_currency(currency: str) -> None:
    rejection = rejected(canonical(currency=currency))
    assert rejection.reason == "unknown_currency"


def test_the_rule_sets_currencies_decide_what_is_known() -> None:
    raw = orjson.dumps(canonical(currency="JPY"))
    assert decode_event(raw, {"JPY"}).currency == "JPY"


def test_every_reason_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "event-formats.md").read_text()
    for reason in REASONS:
        assert f"`{reason}`" in doc, reason


# --- properties ------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [*canonical(), "original_event_id", "order_id", "at"]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_decoded_or_rejected(raw: bytes) -> None:
    try:
        decode_event(raw, CURRENCIES)
    except Rejection as rejection:
        assert rejection.reason in REASONS


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), json_values, max_size=8))
def test_arbitrary_objects_are_decoded_or_rejected(document: dict[str, Any]) -> None:
    try:
        decode_event(json.dumps(document).encode(), CURRENCIES)
    except Rejection as rejection:
        assert rejection.reason in REASONS


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([*FIELDS, "lines.0.quantity", "lines.0.unit_price", "lines.1.discount"]),
    json_values,
)
def test_one_corrupted_field_of_a_valid_event_is_decoded_or_rejected(
    field: str, value: Any
) -> None:
    document = canonical()
    if field.startswith("lines."):
        _, index, name = field.split(".")
        document["lines"][int(index)][name] = value
    else:
        document[field] = value
    try:
        event = decode_event(json.dumps(document).encode(), CURRENCIES)
    except Rejection as rejection:
        assert rejection.reason in REASONS
    else:
        assert decode_event(encode_event(event), CURRENCIES) == event


@settings(max_examples=300, deadline=None)
@given(st.decimals(min_value=0, max_value=Decimal("999999999999999"), places=2))
def test_any_valid_amount_survives_as_a_json_number_and_as_a_string(amount: Decimal) -> None:
    as_string = decode(canonical(total=str(amount))).total
    raw = orjson.dumps(canonical()).replace(b'"159.85"', str(amount).encode())
    assert as_string == amount == decode_event(raw, CURRENCIES).total


def test_a_line_keeps_its_optional_product() -> None:
    from segments.events import decode_event, encode_event

    raw = (
        b'{"event_id":"e1","customer_id":"c1","occurred_at":"2026-11-20T14:03:11Z",'
        b'"channel":"pos","currency":"EUR","total":"40.00","lines":['
        b'{"sku":"SH-RED","category":"Shirts","quantity":1,"unit_price":"20.00","product":"SH"},'
        b'{"sku":"SOCK","category":"Socks","quantity":1,"unit_price":"20.00"}]}'
    )
    event = decode_event(raw, frozenset({"EUR"}))
    assert [line.product for line in event.lines] == ["SH", None]
    assert decode_event(encode_event(event), frozenset({"EUR"})) == event
    bad = raw.replace(b'"product":"SH"', b'"product":""')
    with pytest.raises(Rejection) as caught:
        decode_event(bad, frozenset({"EUR"}))
    assert caught.value.reason == "invalid_value"
    assert "lines[0].product" in caught.value.message
