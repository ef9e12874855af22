"""Source adapters: POS receipts and Shopify-style orders to canonical events; the identity map."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segments.adapters import (
    REASONS,
    UNCATEGORIZED,
    IdentityMap,
    from_pos_receipt,
    from_shopify_order,
)
from segments.events import Line, Purchase, Rejection, Return, decode_event, encode_event

pytestmark = pytest.mark.unit

CURRENCIES = frozenset({"EUR", "USD", "GBP"})
NOON_UTC = 1_795_176_000_000_000  # 2026-11-20T12:00:00Z


@pytest.fixture
def identities() -> IdentityMap:
    return IdentityMap({("loyalty", "L100234"): "c-1001", ("shopify", "7001"): "c-1001"})


def receipt(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "receipt_no": "000123",
        "store": "0001",
        "till": "03",
        "loyalty_id": "L100234",
        "ts": "2026-11-20T13:00:00+01:00",
        "currency": "EUR",
        "items": [
            {"ean": "4006381333931", "dept": "Running Shoes", "qty": 1, "price": "119.95"},
            {"ean": "4006381333948", "dept": "Socks", "qty": 2, "price": "9.95", "disc": "2.00"},
        ],
        "discounts": "2.00",
        "paid": "137.85",
    }
    document.update(changes)
    return document


def shopify(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": 820982911946154508,
        "name": "#1001",
        "created_at": "2026-11-20T07:00:00-05:00",
        "currency": "USD",
        "total_price": "199.00",
        "total_discounts": "20.00",
        "source_name": "web",
        "customer": {"id": 7001, "email": "jo@example.com"},
        "line_items": [
            {
                "sku": "RS-1001",
                "product_type": "Running Shoes",
                "quantity": 1,
                "price": "219.00",
                "total_discount": "20.00",
                "variant_id": 44,
            }
        ],
    }
    document.update(changes)
    return document


def pos(document: dict[str, Any], identities: IdentityMap) -> Purchase | Return:
    return from_pos_receipt(json.dumps(document).encode(), identities, CURRENCIES)


def shop(document: dict[str, Any], identities: IdentityMap) -> Purchase:
    return from_shopify_order(json.dumps(document).encode(), identities, CURRENCIES)


def reason(call: Any) -> str:
    with pytest.raises(Rejection) as caught:
        call()
    assert caught.value.reason in REASONS
    return caught.value.reason


# --- POS receipts ------------------------------------------------------------


def test_a_pos_sale_becomes_a_canonical_purchase(identities: IdentityMap) -> None:
    assert pos(receipt(), identities) == Purchase(
        event_id="pos-0001-000123",
        customer_id="c-1001",
        occurred_at=NOON_UTC,
        channel="pos",
        currency="EUR",
        total=Decimal("137.85"),
        discount_total=Decimal("2.00"),
        lines=(
            Line("4006381333931", "Running Shoes", 1, Decimal("119.95"), Decimal(0)),
            Line("4006381333948", "Socks", 2, Decimal("9.95"), Decimal("2.00")),
        ),
        store_id="0001",
        order_id="000123",
    )


def test_a_pos_refund_becomes_a_return_of_the_original_receipt(identities: IdentityMap) -> None:
    refund = receipt(
        receipt_no="000200",
        kind="refund",
        refund_of={"receipt_no": "000123"},
        items=[{"ean": "4006381333948", "dept": "Socks", "qty": 1, "price": "9.95"}],
        discounts=None,
        paid="8.95",
    )
    event = pos(refund, identities)
    assert isinstance(event, Return)
    assert event.event_id == "pos-0001-000200"
    assert event.original_event_id == "pos-0001-000123"
    assert event.total == Decimal("8.95")
    other_store = pos(dict(refund, refund_of={"store": "0007", "receipt_no": 9}), identities)
    assert isinstance(other_store, Return)
    assert other_store.original_event_id == "pos-0007-9"


def test_a_pos_refund_without_its_receipt_is_a_return_with_no_original(
    identities: IdentityMap,
) -> None:
    event = pos(receipt(kind="refund"), identities)
    assert isinstance(event, Return) and event.original_event_id is None


def test_pos_amounts_may_be_json_numbers_and_stay_exact(identities: IdentityMap) -> None:
    raw = orjson.dumps(receipt()).replace(b'"137.85"', b"137.85").replace(b'"9.95"', b"9.95")
    event = from_pos_receipt(raw, identities, CURRENCIES)
    assert event.total == Decimal("137.85")
    assert event.lines[1].unit_price == Decimal("9.95")


def test_an_unlinked_loyalty_id_is_its_own_prefixed_customer(identities: IdentityMap) -> None:
    assert pos(receipt(loyalty_id="L999"), identities).customer_id == "loyalty-L999"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"loyalty_id": None}, "no_customer"),
        ({"loyalty_id": ""}, "no_customer"),
        ({"receipt_no": None}, "missing_field"),
        ({"store": [1]}, "wrong_type"),
        ({"ts": "2026-11-20T13:00:00"}, "naive_timestamp"),
        ({"ts": "soon"}, "invalid_timestamp"),
        ({"currency": "CHF"}, "unknown_currency"),
        ({"paid": "-1.00"}, "negative_amount"),
        ({"paid": None}, "missing_field"),
        ({"discounts": "NaN"}, "not_a_number"),
        ({"kind": "void"}, "invalid_value"),
        ({"items": {"ean": "1"}}, "wrong_type"),
        ({"items": [{"ean": "1", "dept": "Socks", "qty": 0, "price": "1"}]}, "invalid_value"),
        ({"items": [{"ean": "1", "dept": "Socks", "qty": 1}]}, "missing_field"),
        ({"items": [{"ean": "1", "dept": "Socks", "qty": "1", "price": "1"}]}, "wrong_type"),
        ({"refund_of": {"receipt_no": "1"}}, "invalid_value"),
    ],
)
def test_bad_pos_receipts_are_rejected_with_a_reason(
    identities: IdentityMap, changes: dict[str, Any], expected: str
) -> None:
    assert reason(lambda: pos(receipt(**changes), identities)) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\xff", "invalid_utf8"),
        (b"{", "invalid_json"),
        (b"[]", "not_an_object"),
        (b'{"paid": NaN}', "not_a_number"),
        (b" " * (1 << 20) + b"{}", "payload_too_large"),
    ],
)
def test_unreadable_native_payloads_are_rejected(
    identities: IdentityMap, raw: bytes, expected: str
) -> None:
    assert reason(lambda: from_pos_receipt(raw, identities, CURRENCIES)) == expected
    assert reason(lambda: from_shopify_order(raw, identities, CURRENCIES)) == expected


def test_deep_nesting_and_floats_in_unknown_fields_are_fine(identities: IdentityMap) -> None:
    raw = json.dumps(receipt(note="x")).encode().replace(b'"x"', b"[" * 1000 + b"1.5" + b"]" * 1000)
    assert from_pos_receipt(raw, identities, CURRENCIES).total == Decimal("137.85")


# --- Shopify-style orders ----------------------------------------------------


def test_a_shopify_order_becomes_a_canonical_online_purchase(identities: IdentityMap) -> None:
    assert shop(shopify(), identities) == Purchase(
        event_id="shopify-820982911946154508",
        customer_id="c-1001",
        occurred_at=NOON_UTC,
        channel="online",
        currency="USD",
        total=Decimal("199.00"),
        discount_total=Decimal("20.00"),
        lines=(Line("RS-1001", "Running Shoes", 1, Decimal("219.00"), Decimal("20.00")),),
        order_id="820982911946154508",
    )


def test_source_name_pos_makes_a_pos_order_with_its_location(identities: IdentityMap) -> None:
    event = shop(shopify(source_name="pos", location_id=655441491), identities)
    assert event.channel == "pos"
    assert event.store_id == "655441491"
    for source_name in ("web", "shopify_draft_order", "iphone", None):
        assert shop(shopify(source_name=source_name), identities).channel == "online"


def test_missing_sku_and_product_type_fall_back(identities: IdentityMap) -> None:
    line = dict(shopify()["line_items"][0], sku="", product_type=None)
    event = shop(shopify(line_items=[line]), identities)
    assert event.lines[0].sku == "variant-44"
    assert event.lines[0].category == UNCATEGORIZED


def test_an_unlinked_shop_customer_is_its_own_prefixed_customer(identities: IdentityMap) -> None:
    assert shop(shopify(customer={"id": 5}), identities).customer_id == "shopify-5"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"customer": None}, "no_customer"),
        ({"customer": "7001"}, "wrong_type"),
        ({"customer": {"email": "x@example.com"}}, "missing_field"),
        ({"id": None}, "missing_field"),
        ({"id": 1.5}, "wrong_type"),
        ({"created_at": "2026-11-20T07:00:00"}, "naive_timestamp"),
        ({"currency": "JPY"}, "unknown_currency"),
        ({"total_price": "Infinity"}, "infinite_amount"),
        ({"total_price": "1e20"}, "amount_out_of_range"),
        ({"total_discounts": "-3"}, "negative_amount"),
        ({"source_name": 3}, "wrong_type"),
        (
            {"line_items": [{"sku": "a", "quantity": 1, "price": "1", "total_discount": "2"}]},
            "invalid_value",
        ),
        ({"line_items": [{"product_type": "Socks", "quantity": 1, "price": "1"}]}, "missing_field"),
    ],
)
def test_bad_shopify_orders_are_rejected_with_a_reason(
    identities: IdentityMap, changes: dict[str, Any], expected: str
) -> None:
    assert reason(lambda: shop(shopify(**changes), identities)) == expected


def test_adapter_output_round_trips_through_the_canonical_form(identities: IdentityMap) -> None:
    for event in (pos(receipt(), identities), shop(shopify(), identities)):
        assert decode_event(encode_event(event), CURRENCIES) == event


# --- the identity map ----------------------------------------------------------


def test_the_identity_map_joins_a_loyalty_card_and_an_online_account(
    identities: IdentityMap,
) -> None:
    in_store = pos(receipt(), identities)
    online = shop(shopify(), identities)
    assert in_store.customer_id == online.customer_id == "c-1001"


def test_the_identity_map_loads_from_csv(tmp_path: Path) -> None:
    path = tmp_path / "identities.csv"
    path.write_text(
        "customer_id,loyalty_id,shopify_customer_id\n"
        "c-1001,L100234,7001\n"
        "c-1001,L100999,\n"
        "c-2002,,8002\n"
    )
    identities = IdentityMap.load(path)
    assert len(identities) == 4
    assert identities.customer_id("loyalty", "L100999") == "c-1001"
    assert identities.customer_id("shopify", "8002") == "c-2002"
    assert identities.customer_id("shopify", "L100234") == "shopify-L100234"


def test_the_identity_map_loads_from_json(tmp_path: Path) -> None:
    path = tmp_path / "identities.json"
    path.write_text('[{"customer_id": "c-1", "loyalty_id": "L1", "shopify_customer_id": 7}]')
    identities = IdentityMap.load(path)
    assert identities.customer_id("shopify", "7") == "c-1"
    assert identities.customer_id("loyalty", "L1") == "c-1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("customer_id,loyalty_id\nc-1,L1\nc-2,L1\n", "row 2"),
        ("customer_id,loyalty_id\n,L1\n", "customer_id is required"),
        ("loyalty_id\nL1\n", "header"),
    ],
)
def test_a_bad_identity_file_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "identities.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        IdentityMap.load(path)


def test_an_unknown_namespace_is_refused() -> None:
    with pytest.raises(ValueError, match="namespace"):
        IdentityMap({("email", "a@example.com"): "c-1"})


# --- property --------------------------------------------------------------------

values = st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.lists(st.integers())


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([*receipt(), "kind", "refund_of"]),
    st.sampled_from([*shopify(), "location_id"]),
    values,
)
def test_adapters_decode_or_reject_never_crash(pos_field: str, shop_field: str, value: Any) -> None:
    identities = IdentityMap()
    for call in (
        lambda: pos(receipt(**{pos_field: value}), identities),
        lambda: shop(shopify(**{shop_field: value}), identities),
    ):
        try:
            call()
        except Rejection as rejection:
            assert rejection.reason in REASONS


# --- products (SPEC section 1: the product or style that SKUs are variants of) ----------


def test_the_adapters_carry_the_product_of_a_line(identities: IdentityMap) -> None:
    items = [
        {"ean": "400-red", "dept": "Shirts", "qty": 1, "price": "20.00", "product": "OX-SHIRT"},
        {"ean": "400-blue", "dept": "Shirts", "qty": 1, "price": "20.00", "product": 77},
        {"ean": "500", "dept": "Socks", "qty": 1, "price": "5.00", "product": ""},
    ]
    sale = pos(receipt(items=items, discounts="0", paid="45.00"), identities)
    assert [(line.sku, line.product) for line in sale.lines] == [
        ("400-red", "OX-SHIRT"),
        ("400-blue", "77"),
        ("500", None),
    ]
    line = dict(shopify()["line_items"][0], product_id=632910392)
    order = shop(shopify(line_items=[line, dict(line, sku="RS-1002", product_id=None)]), identities)
    assert [(line.sku, line.product) for line in order.lines] == [
        ("RS-1001", "632910392"),
        ("RS-1002", None),
    ]


def test_a_product_of_the_wrong_type_is_rejected(identities: IdentityMap) -> None:
    line = dict(shopify()["line_items"][0], product_id=[1])
    assert reason(lambda: shop(shopify(line_items=[line]), identities)) == "wrong_type"
