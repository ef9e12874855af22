"""Purchase events: SPEC section 1's canonical form, decoded from bytes into frozen dataclasses."""

from __future__ import annotations

import json
from collections.abc import Callable, Container
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from re import compile as _compile
from typing import Any, NoReturn

import msgspec
import orjson

from segments.changes import format_instant

# Instants are integers: microseconds since the Unix epoch, UTC. Integers keep
# the hot path fast and make ordering and day arithmetic exact.


class Rejection(Exception):
    """An input that cannot be applied: a machine-readable reason and a human message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    category: str
    quantity: int
    unit_price: Decimal
    discount: Decimal
    # the product (style) the SKU is a variant of, e.g. one shirt in several colours
    product: str | None = None

    @property
    def amount(self) -> Decimal:
        return self.quantity * self.unit_price - self.discount


@dataclass(frozen=True, slots=True)
class Purchase:
    event_id: str
    customer_id: str
    occurred_at: int  # epoch microseconds, UTC
    channel: str  # "pos" | "online"
    currency: str
    total: Decimal  # in `currency`, after discounts
    discount_total: Decimal
    lines: tuple[Line, ...] = ()
    store_id: str | None = None
    order_id: str | None = None


@dataclass(frozen=True, slots=True)
class Return:
    event_id: str
    customer_id: str
    occurred_at: int
    channel: str
    currency: str
    total: Decimal  # amount refunded, >= 0
    discount_total: Decimal
    original_event_id: str | None
    lines: tuple[Line, ...] = ()
    store_id: str | None = None
    order_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClockMark:
    """{"type": "clock", "at": T}: advances a partition's event clock (SPEC section 6)."""

    at: int


Event = Purchase | Return

# --------------------------------------------------------------------------
# Limits and reasons. Every reason a decoder can give is listed in REASONS and
# documented in docs/event-formats.md.

MAX_PAYLOAD_BYTES = 1 << 20  # 1 MiB; exactly 1 MiB is accepted
MAX_EVENT_ID_CHARS = 200
MAX_CUSTOMER_ID_CHARS = 128
MAX_TEXT_CHARS = 200  # sku, category, store_id, order_id, original_event_id
MAX_QUANTITY = 1_000_000_000
AMOUNT_LIMIT = Decimal(10) ** 15  # amounts must be below it
MAX_DECIMAL_PLACES = 12  # 15 integer + 12 fraction digits fit Decimal's 28-digit context
MAX_AMOUNT_CHARS = 64

CHANNELS = ("pos", "online")
TYPES = ("purchase", "return", "clock")

REASONS = (
    "payload_too_large",
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "naive_timestamp",
    "invalid_timestamp",
    "not_a_number",
    "infinite_amount",
    "amount_out_of_range",
    "negative_amount",
    "unknown_currency",
)

_ZERO = Decimal(0)
_QUANTUM = Decimal(1).scaleb(-MAX_DECIMAL_PLACES)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_AMOUNT_TEXT = _compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_fromisoformat = datetime.fromisoformat
_loads = orjson.loads


# --------------------------------------------------------------------------
# Decoding


def decode_event(raw: bytes, currencies: Container[str]) -> Purchase | Return | ClockMark:
    """One canonical JSON message -> Purchase, Return or ClockMark; anything else raises Rejection.

    `currencies` holds the accepted ISO codes: the rule set's base currency
    and the keys of its rate table. Amounts keep their exact decimal value,
    whether sent as strings or as JSON numbers.
    """
    # The fast path takes the usual message: canonical fields only, amounts as strings
    # or integers. It accepts only what the full decoder below accepts, with the same
    # result; anything else (a float amount, an unknown field, any doubt) goes there,
    # which finds the precise rejection reason.
    if len(raw) <= MAX_PAYLOAD_BYTES:
        try:
            canonical = _decode_canonical(raw)
        except (msgspec.MsgspecError, ValueError):
            pass
        else:
            event = _event_from_fields(canonical, currencies)
            if event is not None:
                return event
    return _decode_event_in_full(raw, currencies)


def _decode_event_in_full(raw: bytes, currencies: Container[str]) -> Purchase | Return | ClockMark:
    obj = _read_object(raw, lambda obj: _event_from_object(obj, currencies))
    try:
        return _event_from_object(obj, currencies)
    except _InexactNumber:
        pass  # handled below, so that a rejection does not carry this as its context
    # orjson read a JSON number as a binary float. A number of at most 15
    # significant digits survives that exactly (repr gives it back); only a
    # payload with a longer digit run is read again, slowly, as Decimals.
    if not _has_long_digit_run(raw):
        _floats_to_decimals(obj)
        return _event_from_object(obj, currencies)
    return _event_from_object(_exact_loads(raw), currencies)


def _read_object(raw: bytes, validate: Callable[[dict[str, Any]], object] | None) -> dict[str, Any]:
    """The payload-level checks both readers share: size, UTF-8 and JSON, an object."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise Rejection(
            "payload_too_large",
            f"payload is {len(raw)} bytes, the limit is {MAX_PAYLOAD_BYTES} (1 MiB)",
        )
    try:
        obj = _loads(raw)
    except orjson.JSONDecodeError as exc:
        _reject_unreadable(raw, exc, validate)
    if obj.__class__ is not dict:
        raise Rejection("not_an_object", f"expected a JSON object, got {_json_type(obj)}")
    return obj


def load_object(raw: bytes) -> dict[str, Any]:
    """Bytes -> a JSON object whose non-integer numbers are exact Decimals (adapters' first step).

    Raises Rejection for the payload-level reasons: payload_too_large,
    invalid_utf8, invalid_json (not_a_number / infinite_amount for NaN and
    Infinity literals) and not_an_object.
    """
    obj = _read_object(raw, None)
    if _has_long_digit_run(raw):
        exact: dict[str, Any] = _exact_loads(raw)
        return exact
    _replace_floats(obj)
    return obj


def parse_amount(value: Any, field: str) -> Decimal:
    """A decimal string, integer or Decimal -> a checked amount (>= 0, < 1e15, <= 12 places).

    Raises Rejection naming `field`; a binary float is wrong_type (it cannot
    carry an exact amount: read the payload with load_object instead).
    """
    try:
        return _amount(value, field)
    except _InexactNumber:
        raise Rejection("wrong_type", f"{field} is a binary float; send a decimal string") from None


def parse_instant(value: Any, field: str) -> int:
    """ISO-8601 text with an offset or Z -> epoch microseconds UTC; Rejection naming `field`."""
    return _instant(value, field)


def event_from_mapping(obj: Any, currencies: Container[str]) -> Purchase | Return | ClockMark:
    """Validate an already parsed canonical object (adapters build one from native payloads).

    Floats are refused here (wrong_type): they cannot carry an exact amount.
    """
    if obj.__class__ is not dict:
        raise Rejection("not_an_object", f"expected a JSON object, got {_json_type(obj)}")
    try:
        return _event_from_object(obj, currencies)
    except _InexactNumber as exc:
        raise Rejection(
            "wrong_type", f"{exc.field} is a binary float; send a decimal string"
        ) from None


def _event_from_object(
    obj: dict[str, Any], currencies: Container[str]
) -> Purchase | Return | ClockMark:
    # The hot path: each check is inlined for the common, valid case and a
    # helper that always raises works out the precise reason otherwise.
    get = obj.get
    value: Any
    kind: Any = get("type")
    if kind is None or kind == "purchase":
        is_return = False
    elif kind == "return":
        is_return = True
    elif kind == "clock":
        clock_mark: ClockMark = _build_clock_mark(_instant(get("at"), "at"))
        return clock_mark
    else:
        _bad_choice(kind, "type", TYPES)

    event_id = get("event_id")
    if event_id.__class__ is not str or not 0 < len(event_id) <= MAX_EVENT_ID_CHARS:
        _bad_text(event_id, "event_id", MAX_EVENT_ID_CHARS)
    customer_id = get("customer_id")
    if customer_id.__class__ is not str or not 0 < len(customer_id) <= MAX_CUSTOMER_ID_CHARS:
        _bad_text(customer_id, "customer_id", MAX_CUSTOMER_ID_CHARS)
    value = get("occurred_at")
    try:
        moment = _fromisoformat(value)
    except (TypeError, ValueError):
        _bad_instant(value, "occurred_at")
    if moment.tzinfo is None:
        _bad_instant(value, "occurred_at")
    occurred_at = (moment - _EPOCH) // _MICROSECOND
    channel = get("channel")
    if channel == "pos":
        channel = "pos"  # the interned constant: later comparisons are identity checks
    elif channel == "online":
        channel = "online"
    else:
        _bad_choice(channel, "channel", CHANNELS)
    currency = get("currency")
    if currency.__class__ is not str or currency not in currencies:
        _bad_currency(currency)

    value = get("total")
    total: Decimal | None = _AMOUNTS.get(value) if value.__class__ is str else None
    if total is None:
        total = _amount(value, "total")
    value = get("discount_total")
    discount_total: Decimal | None
    if value is None:
        discount_total = _ZERO
    else:
        discount_total = _AMOUNTS.get(value) if value.__class__ is str else None
        if discount_total is None:
            discount_total = _amount(value, "discount_total")

    raw_lines = get("lines")
    lines: tuple[Line, ...]
    if raw_lines is None:
        lines = ()
    elif raw_lines.__class__ is list:
        built: list[Line] = []
        for item in raw_lines:
            if item.__class__ is not dict:
                raise Rejection(
                    "wrong_type", f"lines[{len(built)}] must be an object, got {_json_type(item)}"
                )
            key = (
                item.get("sku"),
                item.get("category"),
                item.get("quantity"),
                item.get("unit_price"),
                item.get("discount"),
                item.get("product"),
            )
            try:
                line = _LINES.get(key)
            except TypeError:  # an unhashable (list, object) member; _line names it
                line = None
            # True and 1.0 compare equal to 1: only a real int may use a cached line.
            if line is None or key[2].__class__ is not int:
                line = _line(key, len(built))
            built.append(line)
        lines = tuple(built)
    else:
        raise Rejection("wrong_type", f"lines must be a list, got {_json_type(raw_lines)}")

    store_id = get("store_id")
    if store_id is not None and (
        store_id.__class__ is not str or not 0 < len(store_id) <= MAX_TEXT_CHARS
    ):
        _bad_text(store_id, "store_id", MAX_TEXT_CHARS)
    order_id = get("order_id")
    if order_id is not None and (
        order_id.__class__ is not str or not 0 < len(order_id) <= MAX_TEXT_CHARS
    ):
        _bad_text(order_id, "order_id", MAX_TEXT_CHARS)
    original_event_id = get("original_event_id")
    if original_event_id is not None:
        if original_event_id.__class__ is not str or not 0 < len(original_event_id) <= (
            MAX_EVENT_ID_CHARS
        ):
            _bad_text(original_event_id, "original_event_id", MAX_EVENT_ID_CHARS)
        if not is_return:
            raise Rejection(
                "invalid_value",
                'original_event_id is only allowed on a return; set "type": "return"',
            )

    if is_return:
        returned: Return = _build_return(
            event_id,
            customer_id,
            occurred_at,
            channel,
            currency,
            total,
            discount_total,
            original_event_id,
            lines,
            store_id,
            order_id,
        )
        return returned
    purchase: Purchase = _build_purchase(
        event_id,
        customer_id,
        occurred_at,
        channel,
        currency,
        total,
        discount_total,
        lines,
        store_id,
        order_id,
    )
    return purchase


class _CanonicalLine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    sku: str
    category: str
    quantity: int
    unit_price: str | int
    discount: str | int | None = None
    product: str | None = None


class _Canonical(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The canonical event as the fast path reads it: the JSON types the usual message has."""

    event_id: str
    customer_id: str
    occurred_at: str
    channel: str
    currency: str
    total: str | int
    type: str | None = None
    discount_total: str | int | None = None
    lines: list[_CanonicalLine] | None = None
    store_id: str | None = None
    order_id: str | None = None
    original_event_id: str | None = None


_decode_canonical = msgspec.json.Decoder(_Canonical).decode


def _event_from_fields(
    canonical: _Canonical, currencies: Container[str]
) -> Purchase | Return | None:
    """The event _event_from_object would build from the same message, or None when it
    would reject it (the full decoder then works out the reason)."""
    kind = canonical.type
    if kind is None or kind == "purchase":
        is_return = False
    elif kind == "return":
        is_return = True
    else:
        return None
    event_id = canonical.event_id
    customer_id = canonical.customer_id
    if not 0 < len(event_id) <= MAX_EVENT_ID_CHARS or not (
        0 < len(customer_id) <= MAX_CUSTOMER_ID_CHARS
    ):
        return None
    try:
        moment = _fromisoformat(canonical.occurred_at)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    occurred_at = (moment - _EPOCH) // _MICROSECOND
    channel = canonical.channel
    if channel == "pos":
        channel = "pos"  # the interned constant, as _event_from_object does
    elif channel == "online":
        channel = "online"
    else:
        return None
    currency = canonical.currency
    if currency not in currencies:
        return None
    try:
        value: Any = canonical.total
        total = _AMOUNTS.get(value) if value.__class__ is str else None
        if total is None:
            total = _amount(value, "total")
        value = canonical.discount_total
        discount_total: Decimal | None
        if value is None:
            discount_total = _ZERO
        else:
            discount_total = _AMOUNTS.get(value) if value.__class__ is str else None
            if discount_total is None:
                discount_total = _amount(value, "discount_total")
        raw_lines = canonical.lines
        lines: tuple[Line, ...] = ()
        if raw_lines:
            built: list[Line] = []
            for item in raw_lines:
                key = (
                    item.sku,
                    item.category,
                    item.quantity,
                    item.unit_price,
                    item.discount,
                    item.product,
                )
                line = _LINES.get(key)
                if line is None:
                    line = _line(key, len(built))
                built.append(line)
            lines = tuple(built)
    except Rejection:
        return None
    store_id = canonical.store_id
    if store_id is not None and not 0 < len(store_id) <= MAX_TEXT_CHARS:
        return None
    order_id = canonical.order_id
    if order_id is not None and not 0 < len(order_id) <= MAX_TEXT_CHARS:
        return None
    original_event_id = canonical.original_event_id
    if original_event_id is not None and (
        not is_return or not 0 < len(original_event_id) <= MAX_EVENT_ID_CHARS
    ):
        return None
    if is_return:
        returned: Return = _build_return(
            event_id,
            customer_id,
            occurred_at,
            channel,
            currency,
            total,
            discount_total,
            original_event_id,
            lines,
            store_id,
            order_id,
        )
        return returned
    purchase: Purchase = _build_purchase(
        event_id,
        customer_id,
        occurred_at,
        channel,
        currency,
        total,
        discount_total,
        lines,
        store_id,
        order_id,
    )
    return purchase


def _line(key: tuple[Any, Any, Any, Any, Any, Any], index: int) -> Line:
    """Validate one line's fields (sku, category, quantity, unit_price, discount, product)
    into a Line."""
    sku, category, quantity, unit_price, discount, product = key
    where = f"lines[{index}]"
    if sku.__class__ is not str or not 0 < len(sku) <= MAX_TEXT_CHARS:
        _bad_text(sku, f"{where}.sku", MAX_TEXT_CHARS)
    if category.__class__ is not str or not 0 < len(category) <= MAX_TEXT_CHARS:
        _bad_text(category, f"{where}.category", MAX_TEXT_CHARS)
    if product is not None and (
        product.__class__ is not str or not 0 < len(product) <= MAX_TEXT_CHARS
    ):
        _bad_text(product, f"{where}.product", MAX_TEXT_CHARS)
    if quantity.__class__ is not int:
        if quantity is None:
            _missing(f"{where}.quantity")
        raise Rejection(
            "wrong_type", f"{where}.quantity must be an integer, got {_json_type(quantity)}"
        )
    if not 1 <= quantity <= MAX_QUANTITY:
        raise Rejection(
            "invalid_value", f"{where}.quantity must be 1..{MAX_QUANTITY}, got {quantity}"
        )
    price = _amount(unit_price, f"{where}.unit_price")
    line_discount = _ZERO if discount is None else _amount(discount, f"{where}.discount")
    if line_discount > quantity * price:
        raise Rejection(
            "invalid_value",
            f"{where}.discount {line_discount} exceeds the line's value {quantity} x {price}",
        )
    line: Line = _build_line(sku, category, quantity, price, line_discount, product)
    # Only lines whose amounts came as strings are cached: a float or an int
    # key could compare equal to a different exact value.
    if unit_price.__class__ is str and (discount is None or discount.__class__ is str):
        if len(_LINES) >= _CACHE_SIZE:
            _LINES.clear()
        _LINES[key] = line
    return line


def _amount(value: Any, field: str) -> Decimal:
    """A JSON amount (decimal string, integer, or Decimal from an exact re-read), checked."""
    cls = value.__class__
    if cls is str:
        cached = _AMOUNTS.get(value)
        if cached is not None:
            return cached
        if _AMOUNT_TEXT.fullmatch(value) is None:
            word = value.strip().lower().lstrip("+-")
            if word in ("nan", "snan"):
                raise Rejection("not_a_number", f"{field} is {value!r}, not a number")
            if word in ("inf", "infinity"):
                raise Rejection("infinite_amount", f"{field} is {value!r}")
            raise Rejection(
                "invalid_value",
                f'{field} must be a decimal number such as "19.99", got {value[:40]!r}',
            )
        if len(value) > MAX_AMOUNT_CHARS:
            raise Rejection(
                "amount_out_of_range",
                f"{field} has {len(value)} characters, the limit is {MAX_AMOUNT_CHARS}",
            )
        try:
            amount = _checked_amount(Decimal(value), field)
        except InvalidOperation:  # an exponent beyond what Decimal can hold
            raise Rejection("amount_out_of_range", f"{field} {value!r} is out of range") from None
        if len(_AMOUNTS) >= _CACHE_SIZE:
            _AMOUNTS.clear()
        _AMOUNTS[value] = amount
        return amount
    if cls is int:
        if value >= 10**15 or value <= -(10**15):
            raise Rejection(
                "amount_out_of_range" if value > 0 else "negative_amount",
                f"{field} is {'beyond' if value > 0 else 'below'} the range 0..1e15",
            )
        return _checked_amount(Decimal(value), field)
    if cls is Decimal:
        return _checked_amount(value, field)
    if cls is float:
        raise _InexactNumber(field)
    if cls is _UnreadableNumber:
        raise Rejection("amount_out_of_range", f"{field} {value.text[:40]!r} is out of range")
    if value is None:
        _missing(field)
    raise Rejection(
        "wrong_type", f"{field} must be a decimal string or a number, got {_json_type(value)}"
    )


def _checked_amount(amount: Decimal, field: str) -> Decimal:
    if amount.is_nan():
        raise Rejection("not_a_number", f"{field} is NaN")
    if amount.is_infinite():
        raise Rejection("infinite_amount", f"{field} is {amount}")
    if amount.is_zero():
        # -0 and 0E+1000 become plain 0; "0.00" keeps its two places.
        exponent = amount.as_tuple().exponent
        if isinstance(exponent, int) and -MAX_DECIMAL_PLACES <= exponent <= 0:
            return amount.copy_abs()
        return _ZERO
    if amount < 0:
        raise Rejection("negative_amount", f"{field} is {amount}; amounts must be >= 0")
    if amount >= AMOUNT_LIMIT:
        raise Rejection(
            "amount_out_of_range", f"{field} is {amount:.6g}; amounts must be below 1e15"
        )
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_DECIMAL_PLACES:
        rounded = amount.quantize(_QUANTUM)
        if rounded != amount:
            raise Rejection(
                "amount_out_of_range",
                f"{field} has more than {MAX_DECIMAL_PLACES} decimal places",
            )
        return rounded
    return amount


def _instant(value: Any, field: str) -> int:
    """ISO-8601 text with an offset or Z -> epoch microseconds, UTC."""
    try:
        moment = _fromisoformat(value)
    except (TypeError, ValueError):
        _bad_instant(value, field)
    if moment.tzinfo is None:
        _bad_instant(value, field)
    return (moment - _EPOCH) // _MICROSECOND


def _bad_instant(value: Any, field: str) -> NoReturn:
    if value is None:
        _missing(field)
    if value.__class__ is not str:
        raise Rejection(
            "wrong_type", f"{field} must be an ISO-8601 string, got {_json_type(value)}"
        )
    try:
        moment = _fromisoformat(value)
    except ValueError:
        raise Rejection(
            "invalid_timestamp",
            f"{field} {value[:60]!r} is not an ISO-8601 timestamp like 2026-11-20T14:03:11Z",
        ) from None
    if moment.tzinfo is None:
        raise Rejection(
            "naive_timestamp", f"{field} {value[:60]!r} has no UTC offset; add Z or +01:00"
        )
    raise AssertionError(f"{field} {value!r} is a valid instant")


class _InexactNumber(Exception):
    """Internal: an amount arrived as a JSON number that orjson read as a binary float."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


# 16 digits and dots in a row, anywhere in the payload (even inside a string,
# which only costs the slow path), may be a number a binary float cannot carry
# exactly. translate + a substring search is several times faster than a regex.
_DIGIT_MARKS = bytes(0x30 if chr(b) in "0123456789." else 0x20 for b in range(256))
_LONG_DIGIT_RUN = b"0" * 16


def _has_long_digit_run(raw: bytes) -> bool:
    return _LONG_DIGIT_RUN in bytes(raw).translate(_DIGIT_MARKS)


def _replace_floats(root: dict[str, Any]) -> None:
    """Replace every float in a parsed JSON tree by the Decimal of its shortest repr."""
    # An explicit stack: orjson accepts nesting deeper than Python's recursion limit.
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        pairs = node.items() if node.__class__ is dict else enumerate(node)
        for key, value in pairs:
            if value.__class__ is float:
                node[key] = Decimal(repr(value))
            elif value.__class__ is dict or value.__class__ is list:
                stack.append(value)


def _floats_to_decimals(obj: dict[str, Any]) -> None:
    """Replace the floats of the amount fields by the Decimal of their shortest repr."""
    for field in ("total", "discount_total"):
        value = obj.get(field)
        if value.__class__ is float:
            obj[field] = Decimal(repr(value))
    lines = obj.get("lines")
    if lines.__class__ is list:
        for item in lines:
            if item.__class__ is dict:
                for field in ("unit_price", "discount"):
                    value = item.get(field)
                    if value.__class__ is float:
                        item[field] = Decimal(repr(value))


class _UnreadableNumber:
    """Internal: a JSON number Decimal cannot hold (exponent in the billions); out of range."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _exact_float(text: str) -> Decimal | _UnreadableNumber:
    try:
        return Decimal(text)
    except InvalidOperation:
        return _UnreadableNumber(text)


def _exact_int(text: str) -> int | Decimal | _UnreadableNumber:
    # Python refuses to parse ints of more than 4300 digits; no valid field needs 40.
    return int(text) if len(text) <= 40 else _exact_float(text)


def _exact_loads(raw: bytes | str) -> Any:
    try:
        return json.loads(raw, parse_float=_exact_float, parse_int=_exact_int)
    except RecursionError:  # orjson allows deeper nesting than the standard library
        raise Rejection("invalid_json", "nested too deeply") from None


def _reject_unreadable(
    raw: bytes,
    error: orjson.JSONDecodeError,
    validate: Callable[[dict[str, Any]], object] | None,
) -> NoReturn:
    """orjson refused the payload: find the most precise reason.

    `validate`, when given, checks what the lenient standard library read, so
    that a field-level reason (a NaN total, a 10**30 amount) wins over the
    generic one.
    """
    try:
        text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejection(
            "invalid_utf8", f"byte {exc.start} is not valid UTF-8 ({exc.reason})"
        ) from None
    # The standard library accepts NaN and Infinity literals (and a few other
    # things RFC 8259 forbids). Reading the payload with it tells a NaN amount
    # from broken JSON; the payload is rejected either way.
    constants: list[str] = []

    def constant(name: str) -> Decimal:
        constants.append(name)
        return Decimal(name)

    try:
        obj = json.loads(
            text, parse_float=_exact_float, parse_int=_exact_int, parse_constant=constant
        )
    except (ValueError, RecursionError):
        raise Rejection("invalid_json", str(error)) from None
    if obj.__class__ is not dict:
        raise Rejection("not_an_object", f"expected a JSON object, got {_json_type(obj)}")
    if validate is not None:
        validate(obj)  # raises the field-level reason if there is one
    if any(name == "NaN" for name in constants):
        raise Rejection("not_a_number", "a field is NaN, which is not JSON")
    if constants:
        raise Rejection("infinite_amount", "a field is Infinity, which is not JSON")
    raise Rejection("invalid_json", str(error))


# --------------------------------------------------------------------------
# Helpers that always raise: they work out the precise reason for a bad field.


def _missing(field: str) -> NoReturn:
    raise Rejection("missing_field", f"required field {field} is missing or null")


def _bad_text(value: Any, field: str, max_chars: int) -> NoReturn:
    if value is None:
        _missing(field)
    if value.__class__ is not str:
        raise Rejection("wrong_type", f"{field} must be a string, got {_json_type(value)}")
    raise Rejection("invalid_value", f"{field} must be 1..{max_chars} characters, got {len(value)}")


def _bad_choice(value: Any, field: str, choices: tuple[str, ...]) -> NoReturn:
    if value is None:
        _missing(field)
    if value.__class__ is not str:
        raise Rejection("wrong_type", f"{field} must be a string, got {_json_type(value)}")
    expected = " or ".join(f'"{choice}"' for choice in choices)
    raise Rejection("invalid_value", f"{field} must be {expected}, got {value[:40]!r}")


def _bad_currency(value: Any) -> NoReturn:
    if value is None:
        _missing("currency")
    if value.__class__ is not str:
        raise Rejection("wrong_type", f"currency must be a string, got {_json_type(value)}")
    raise Rejection(
        "unknown_currency",
        f"currency {value[:40]!r} is neither the base currency nor in the rate table",
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float | Decimal):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# --------------------------------------------------------------------------
# Fast construction. A frozen dataclass's __init__ goes through
# object.__setattr__ once per field, which costs more than the rest of
# decoding. The decoder builds a plain twin class with the same slots instead
# and then re-labels it (`__class__` assignment, legal between identical slot
# layouts): the result is an ordinary frozen instance, equal to one built by
# the constructor, at a third of the cost.


def _fast_constructor(cls: type, expected: tuple[str, ...]) -> Callable[..., Any]:
    names = tuple(field.name for field in fields(cls))
    if names != expected:  # a field was added or moved: the decoder must learn it too
        raise RuntimeError(f"{cls.__name__} fields changed: {names} != {expected}")
    params = ", ".join(names)
    source = (
        f"class Twin:\n    __slots__ = {names!r}\n"
        f"    def __init__(self, {params}):\n"
        + "".join(f"        self.{name} = {name}\n" for name in names)
        + f"def build({params}):\n"
        f"    instance = Twin({params})\n"
        "    instance.__class__ = target\n"
        "    return instance\n"
    )
    namespace: dict[str, Any] = {"target": cls}
    exec(source, namespace)
    build: Callable[..., Any] = namespace["build"]
    return build


_build_line = _fast_constructor(
    Line, ("sku", "category", "quantity", "unit_price", "discount", "product")
)
_build_purchase = _fast_constructor(
    Purchase,
    (
        "event_id",
        "customer_id",
        "occurred_at",
        "channel",
        "currency",
        "total",
        "discount_total",
        "lines",
        "store_id",
        "order_id",
    ),
)
_build_return = _fast_constructor(
    Return,
    (
        "event_id",
        "customer_id",
        "occurred_at",
        "channel",
        "currency",
        "total",
        "discount_total",
        "original_event_id",
        "lines",
        "store_id",
        "order_id",
    ),
)
_build_clock_mark = _fast_constructor(ClockMark, ("at",))

# Bounded memo tables: catalog prices and lines repeat across events. Emptied
# when full, which is cheaper than an LRU and just as good for this traffic.
_CACHE_SIZE = 16_384
_AMOUNTS: dict[str, Decimal] = {}
_LINES: dict[tuple[Any, Any, Any, Any, Any, Any], Line] = {}


# --------------------------------------------------------------------------
# Encoding


def encode_event(event: Purchase | Return | ClockMark) -> bytes:
    """The canonical JSON of an event: fixed key order, UTC instants with Z, amounts as strings.

    decode_event(encode_event(e)) == e, and encoding a decoded canonical line
    gives the same bytes back.
    """
    if isinstance(event, ClockMark):
        return orjson.dumps({"type": "clock", "at": format_instant(event.at)})
    document: dict[str, Any] = {
        "event_id": event.event_id,
        "customer_id": event.customer_id,
        "occurred_at": format_instant(event.occurred_at),
        "channel": event.channel,
        "type": "return" if isinstance(event, Return) else "purchase",
        "currency": event.currency,
        "total": format_amount(event.total),
        "discount_total": format_amount(event.discount_total),
    }
    if isinstance(event, Return) and event.original_event_id is not None:
        document["original_event_id"] = event.original_event_id
    if event.store_id is not None:
        document["store_id"] = event.store_id
    if event.order_id is not None:
        document["order_id"] = event.order_id
    if event.lines:
        document["lines"] = [_encode_line(line) for line in event.lines]
    return orjson.dumps(document)


def _encode_line(line: Line) -> dict[str, Any]:
    document: dict[str, Any] = {
        "sku": line.sku,
        "category": line.category,
        "quantity": line.quantity,
        "unit_price": format_amount(line.unit_price),
        "discount": format_amount(line.discount),
    }
    if line.product is not None:
        document["product"] = line.product
    return document


def format_amount(amount: Decimal) -> str:
    """A Decimal as plain decimal text, never in exponent form ("1E+2" -> "100")."""
    return format(amount, "f")
