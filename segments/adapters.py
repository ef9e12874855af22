"""Source adapters: native POS receipts and Shopify-style order webhooks into canonical events."""

from __future__ import annotations

import csv
import io
from collections.abc import Container, Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

import orjson

from segments.events import (
    MAX_CUSTOMER_ID_CHARS,
    MAX_EVENT_ID_CHARS,
    MAX_TEXT_CHARS,
    Line,
    Purchase,
    Rejection,
    Return,
    load_object,
    parse_amount,
    parse_instant,
)
from segments.events import (
    REASONS as EVENT_REASONS,
)

# Identity namespaces: which system issued a native customer id. They name the
# id system, not the channel: a Shopify POS order still carries a Shopify id.
LOYALTY = "loyalty"  # POS loyalty card ids
SHOPIFY = "shopify"  # online shop customer ids
NAMESPACES = (LOYALTY, SHOPIFY)

# The identity file's columns (CSV header / JSON object keys) per namespace.
_COLUMNS = {"loyalty_id": LOYALTY, "shopify_customer_id": SHOPIFY}

UNCATEGORIZED = "Uncategorized"  # a Shopify line with an empty product_type

REASONS = (*EVENT_REASONS, "no_customer")
"""Every reason an adapter can give: the decoder's, and no_customer for anonymous sales."""


class IdentityMap:
    """Joins native customer ids (loyalty card, online account) into one customer id.

    A native id that is not in the map stands for a customer of its own:
    "<namespace>-<native id>", e.g. "loyalty-L100234" or "shopify-7001". The
    prefix keeps ids of different systems apart when they happen to be equal.
    """

    __slots__ = ("_links",)

    def __init__(self, links: Mapping[tuple[str, str], str] | None = None) -> None:
        self._links: dict[tuple[str, str], str] = {}
        for (namespace, native_id), customer_id in (links or {}).items():
            self.link(namespace, native_id, customer_id)

    def link(self, namespace: str, native_id: str, customer_id: str) -> None:
        """Record that `native_id` of `namespace` is `customer_id`; a conflict is an error."""
        if namespace not in NAMESPACES:
            raise ValueError(f"unknown identity namespace {namespace!r}; expected {NAMESPACES}")
        if not native_id:
            raise ValueError(f"empty {namespace} id for customer {customer_id!r}")
        if not 0 < len(customer_id) <= MAX_CUSTOMER_ID_CHARS:
            raise ValueError(f"customer id must be 1..{MAX_CUSTOMER_ID_CHARS} characters")
        known = self._links.setdefault((namespace, native_id), customer_id)
        if known != customer_id:
            raise ValueError(
                f"{namespace} id {native_id!r} is linked to both {known!r} and {customer_id!r}"
            )

    def customer_id(self, namespace: str, native_id: str) -> str:
        """The customer a native id belongs to (itself, prefixed, when it is not linked)."""
        linked = self._links.get((namespace, native_id))
        return linked if linked is not None else f"{namespace}-{native_id}"

    def __len__(self) -> int:
        return len(self._links)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], source: str = "<rows>") -> IdentityMap:
        """Rows of {customer_id, loyalty_id, shopify_customer_id}; blank ids are skipped."""
        identities = cls()
        for number, row in enumerate(rows, start=1):
            customer_id = _cell(row.get("customer_id"))
            if not customer_id:
                raise ValueError(f"{source}: row {number}: customer_id is required")
            for column, namespace in _COLUMNS.items():
                native_id = _cell(row.get(column))
                if native_id:
                    try:
                        identities.link(namespace, native_id, customer_id)
                    except ValueError as exc:
                        raise ValueError(f"{source}: row {number}: {exc}") from None
        return identities

    @classmethod
    def load(cls, path: str | Path) -> IdentityMap:
        """An identity file: CSV with a header, or a JSON list of objects, same columns.

        customer_id,loyalty_id,shopify_customer_id
        c-1001,L100234,7001
        c-1001,L100999,          <- a second loyalty card of the same customer
        """
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            rows = orjson.loads(text)
            if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
                raise ValueError(f"{path}: expected a JSON list of objects")
            return cls.from_rows(rows, str(path))
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "customer_id" not in reader.fieldnames:
            raise ValueError(f"{path}: the CSV header must include customer_id")
        return cls.from_rows(reader, str(path))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"identity ids must be strings or integers, got {value!r}")
    return str(value).strip()


# --------------------------------------------------------------------------
# POS receipts (topic purchases.pos)


def from_pos_receipt(
    raw: bytes, identities: IdentityMap, currencies: Container[str]
) -> Purchase | Return:
    """A POS receipt (docs/event-formats.md) -> canonical Purchase, or Return for a refund.

    event_id is "pos-<store>-<receipt_no>". A receipt without loyalty_id is an
    anonymous sale and is rejected with reason no_customer.
    """
    receipt = load_object(raw)
    store = _native_id(receipt.get("store"), "store")
    receipt_no = _native_id(receipt.get("receipt_no"), "receipt_no")
    loyalty_id = receipt.get("loyalty_id")
    if loyalty_id is None or loyalty_id == "":
        raise Rejection("no_customer", "anonymous receipt: no loyalty_id")
    customer_id = _customer(identities, LOYALTY, _native_id(loyalty_id, "loyalty_id"))
    kind = receipt.get("kind")
    kind = "sale" if kind is None else kind
    if kind not in ("sale", "refund"):
        _bad_choice(kind, "kind", '"sale" or "refund"')
    currency = _currency(receipt.get("currency"), currencies)
    items = receipt.get("items", [])
    if not isinstance(items, list):
        raise Rejection("wrong_type", f"items must be a list, got {type(items).__name__}")
    lines = []
    for index, item in enumerate(items):
        where = f"items[{index}]"
        if not isinstance(item, dict):
            raise Rejection("wrong_type", f"{where} must be an object")
        lines.append(
            _line(
                sku=_text(item.get("ean"), f"{where}.ean"),
                category=_text(item.get("dept"), f"{where}.dept"),
                quantity=item.get("qty"),
                unit_price=parse_amount(item.get("price"), f"{where}.price"),
                discount=_optional_amount(item.get("disc"), f"{where}.disc"),
                where=where,
                quantity_field="qty",
                product=_optional_id(item.get("product"), f"{where}.product"),
            )
        )
    event_id = _event_id(f"pos-{store}-{receipt_no}")
    common: dict[str, Any] = {
        "event_id": event_id,
        "customer_id": customer_id,
        "occurred_at": parse_instant(receipt.get("ts"), "ts"),
        "channel": "pos",
        "currency": currency,
        "total": parse_amount(receipt.get("paid"), "paid"),
        "discount_total": _optional_amount(receipt.get("discounts"), "discounts"),
        "lines": tuple(lines),
        "store_id": _text(store, "store"),
        "order_id": _text(receipt_no, "receipt_no"),
    }
    refund_of = receipt.get("refund_of")
    if kind == "sale":
        if refund_of is not None:
            raise Rejection("invalid_value", 'refund_of is only allowed on "kind": "refund"')
        return Purchase(**common)
    original_event_id = None
    if refund_of is not None:
        if not isinstance(refund_of, dict):
            raise Rejection("wrong_type", "refund_of must be an object {store, receipt_no}")
        original_store = refund_of.get("store")
        original_store = store if original_store is None else original_store
        original_event_id = _event_id(
            f"pos-{_native_id(original_store, 'refund_of.store')}-"
            f"{_native_id(refund_of.get('receipt_no'), 'refund_of.receipt_no')}"
        )
    return Return(original_event_id=original_event_id, **common)


# --------------------------------------------------------------------------
# Shopify-style orders/create webhook bodies (topic purchases.online)


def from_shopify_order(raw: bytes, identities: IdentityMap, currencies: Container[str]) -> Purchase:
    """A Shopify-style orders/create body -> canonical Purchase.

    event_id is "shopify-<id>"; channel is "pos" when source_name is "pos",
    "online" otherwise. An order without a customer is rejected (no_customer).
    """
    order = load_object(raw)
    order_id = _native_id(order.get("id"), "id")
    customer = order.get("customer")
    if customer is None:
        raise Rejection("no_customer", "order has no customer (guest checkout)")
    if not isinstance(customer, dict):
        raise Rejection("wrong_type", "customer must be an object")
    customer_id = _customer(identities, SHOPIFY, _native_id(customer.get("id"), "customer.id"))
    items = order.get("line_items", [])
    if not isinstance(items, list):
        raise Rejection("wrong_type", "line_items must be a list")
    lines = []
    for index, item in enumerate(items):
        where = f"line_items[{index}]"
        if not isinstance(item, dict):
            raise Rejection("wrong_type", f"{where} must be an object")
        lines.append(
            _line(
                sku=_shopify_sku(item, where),
                category=_text(item.get("product_type") or UNCATEGORIZED, f"{where}.product_type"),
                quantity=item.get("quantity"),
                unit_price=parse_amount(item.get("price"), f"{where}.price"),
                discount=_optional_amount(item.get("total_discount"), f"{where}.total_discount"),
                where=where,
                quantity_field="quantity",
                product=_optional_id(item.get("product_id"), f"{where}.product_id"),
            )
        )
    source_name = order.get("source_name")
    if source_name is not None and not isinstance(source_name, str):
        raise Rejection("wrong_type", "source_name must be a string")
    location_id = order.get("location_id")
    return Purchase(
        event_id=_event_id(f"shopify-{order_id}"),
        customer_id=customer_id,
        occurred_at=parse_instant(order.get("created_at"), "created_at"),
        channel="pos" if source_name == "pos" else "online",
        currency=_currency(order.get("currency"), currencies),
        total=parse_amount(order.get("total_price"), "total_price"),
        discount_total=_optional_amount(order.get("total_discounts"), "total_discounts"),
        lines=tuple(lines),
        store_id=None if location_id is None else _native_id(location_id, "location_id"),
        order_id=order_id,
    )


def _shopify_sku(item: dict[str, Any], where: str) -> str:
    # Shopify leaves sku empty for products without one; the variant id is
    # the next most stable product key.
    sku = item.get("sku")
    if sku is not None and sku != "":
        return _text(sku, f"{where}.sku")
    variant_id = item.get("variant_id")
    if variant_id is not None:
        return f"variant-{_native_id(variant_id, f'{where}.variant_id')}"
    _missing(f"{where}.sku")


# --------------------------------------------------------------------------
# Field helpers: native field names in every message.


def _line(
    *,
    sku: str,
    category: str,
    quantity: Any,
    unit_price: Decimal,
    discount: Decimal,
    where: str,
    quantity_field: str,
    product: str | None = None,
) -> Line:
    if quantity is None:
        _missing(f"{where}.{quantity_field}")
    if type(quantity) is not int:
        raise Rejection("wrong_type", f"{where}.{quantity_field} must be an integer")
    if quantity < 1:
        raise Rejection("invalid_value", f"{where}.{quantity_field} must be >= 1, got {quantity}")
    if discount > quantity * unit_price:
        raise Rejection("invalid_value", f"{where}: discount exceeds the line's value")
    return Line(sku, category, quantity, unit_price, discount, product)


def _optional_id(value: Any, field: str) -> str | None:
    """An optional native identifier (absent, null or "": none)."""
    if value is None or value == "":
        return None
    return _native_id(value, field)


def _native_id(value: Any, field: str) -> str:
    """A native identifier: a non-empty string or a non-negative integer, as text."""
    if value is None:
        _missing(field)
    if type(value) is int and value >= 0:
        return str(value)
    if type(value) is not str:
        raise Rejection("wrong_type", f"{field} must be a string or an integer")
    if not 0 < len(value) <= MAX_TEXT_CHARS:
        raise Rejection("invalid_value", f"{field} must be 1..{MAX_TEXT_CHARS} characters")
    return value


def _text(value: Any, field: str) -> str:
    if value is None:
        _missing(field)
    if type(value) is not str:
        raise Rejection("wrong_type", f"{field} must be a string")
    if not 0 < len(value) <= MAX_TEXT_CHARS:
        raise Rejection("invalid_value", f"{field} must be 1..{MAX_TEXT_CHARS} characters")
    return value


def _optional_amount(value: Any, field: str) -> Decimal:
    return Decimal(0) if value is None else parse_amount(value, field)


def _currency(value: Any, currencies: Container[str]) -> str:
    if value is None:
        _missing("currency")
    if type(value) is not str:
        raise Rejection("wrong_type", "currency must be a string")
    if value not in currencies:
        raise Rejection(
            "unknown_currency",
            f"currency {value[:40]!r} is neither the base currency nor in the rate table",
        )
    return value


def _customer(identities: IdentityMap, namespace: str, native_id: str) -> str:
    customer_id = identities.customer_id(namespace, native_id)
    if len(customer_id) > MAX_CUSTOMER_ID_CHARS:
        raise Rejection(
            "invalid_value", f"customer id {customer_id[:40]!r}... is over 128 characters"
        )
    return customer_id


def _event_id(event_id: str) -> str:
    if len(event_id) > MAX_EVENT_ID_CHARS:
        raise Rejection("invalid_value", f"event id {event_id[:40]!r}... is over 200 characters")
    return event_id


def _bad_choice(value: Any, field: str, expected: str) -> NoReturn:
    if not isinstance(value, str):
        raise Rejection("wrong_type", f"{field} must be a string")
    raise Rejection("invalid_value", f"{field} must be {expected}, got {value[:40]!r}")


def _missing(field: str) -> NoReturn:
    raise Rejection("missing_field", f"required field {field} is missing or null")
