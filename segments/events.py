"""Purchase events: the canonical form of SPEC section 1, decoded from bytes into frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

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
