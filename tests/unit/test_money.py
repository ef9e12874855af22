"""to_base: exact conversion into the rule set's base currency."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segments.events import Rejection
from segments.money import to_base

pytestmark = pytest.mark.unit

RATES = {"USD": Decimal("0.92"), "GBP": Decimal("1.17")}


def test_the_base_currency_needs_no_rate_and_is_returned_unchanged() -> None:
    amount = Decimal("19.99")
    assert to_base(amount, "EUR", "EUR", {}) is amount
    assert str(to_base(Decimal("0.000000000001"), "EUR", "EUR", RATES)) == "1E-12"


def test_other_currencies_are_multiplied_by_their_rate_and_rounded_to_four_places() -> None:
    assert to_base(Decimal("108.70"), "USD", "EUR", RATES) == Decimal("100.004")
    assert str(to_base(Decimal("108.70"), "USD", "EUR", RATES)) == "100.0040"
    assert to_base(Decimal("10"), "GBP", "EUR", RATES) == Decimal("11.7")


def test_rounding_is_half_even_and_happens_once() -> None:
    rates = {"XTS": Decimal("0.5")}
    assert to_base(Decimal("0.0001"), "XTS", "EUR", rates) == Decimal("0.0000")
    assert to_base(Decimal("0.0003"), "XTS", "EUR", rates) == Decimal("0.0002")
    assert to_base(Decimal("0.00030001"), "XTS", "EUR", rates) == Decimal("0.0002")


def test_large_amounts_are_converted_without_losing_digits() -> None:
    # the exact product has 31 digits, more than Decimal's default 28
    assert to_base(Decimal("999999999999999.999999999999"), "GBP", "EUR", RATES) == Decimal(
        "1170000000000000.0000"
    )
    assert to_base(Decimal("999999999999999.99"), "GBP", "EUR", RATES) == Decimal(
        "1169999999999999.9883"
    )


def test_unknown_currency_is_rejected() -> None:
    with pytest.raises(Rejection) as caught:
        to_base(Decimal(1), "JPY", "EUR", RATES)
    assert caught.value.reason == "unknown_currency"
    assert "JPY" in caught.value.message


@given(
    st.decimals(min_value=0, max_value=Decimal("999999999999"), places=2),
    st.decimals(min_value=0, max_value=Decimal("999999999999"), places=2),
)
def test_conversion_is_additive_up_to_the_rounding_of_each_part(a: Decimal, b: Decimal) -> None:
    total = to_base(a + b, "USD", "EUR", RATES)
    parts = to_base(a, "USD", "EUR", RATES) + to_base(b, "USD", "EUR", RATES)
    # a 2-place amount times a 2-place rate has 4 places: no rounding at all
    assert total == parts
