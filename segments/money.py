"""Money: exact Decimal amounts and their conversion into the rule set's base currency."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Context, Decimal

from segments.events import Rejection

BASE_QUANTUM = Decimal("0.0001")
"""Converted amounts are rounded to 4 decimal places (ISO 4217's largest minor unit)."""

# Wide enough that amount * rate is exact before the single rounding to
# BASE_QUANTUM: amounts have at most 15 integer and 12 fraction digits (the
# decoder enforces it), rates far fewer than 70 digits.
_EXACT = Context(prec=100, rounding=ROUND_HALF_EVEN)


def to_base(
    amount: Decimal, currency: str, base_currency: str, rates: Mapping[str, Decimal]
) -> Decimal:
    """`amount` of `currency` in units of `base_currency`.

    An amount already in the base currency is returned unchanged (exact, no
    rate needed). Any other currency is multiplied by its rate (units of base
    per unit) and rounded once, half-even, to 0.0001: a fixed scale keeps sums
    exact and small, and is far below a cent. An unknown currency raises
    Rejection("unknown_currency").
    """
    if currency == base_currency:
        return amount
    rate = rates.get(currency)
    if rate is None:
        raise Rejection(
            "unknown_currency",
            f"currency {currency!r} is neither the base currency {base_currency} "
            "nor in the rate table",
        )
    return _EXACT.multiply(amount, rate).quantize(BASE_QUANTUM, context=_EXACT)
