"""Segment change events (SPEC section 4): what step() emits and every sink consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from segments.aggregates import CustomerState

ENTERED = "entered"
EXITED = "exited"


@lru_cache(maxsize=4096)
def _date_prefix(day: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day)).strftime("%Y-%m-%dT")


_TWO_DIGITS = tuple(f"{n:02d}" for n in range(60))
_THREE_DIGITS = tuple(f"{n:03d}" for n in range(1000))


def format_instant(micros: int) -> str:
    """Epoch microseconds -> ISO-8601 UTC with a Z, milliseconds shown when not whole seconds."""
    # One change per ~event is formatted: table lookups instead of format specs.
    day, rest = divmod(micros, 86_400_000_000)
    if rest == 0:  # a time-driven change at midnight
        return _date_prefix(day) + "00:00:00Z"
    seconds, micro = divmod(rest, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    two = _TWO_DIGITS
    base = f"{_date_prefix(day)}{two[hour]}:{two[minute]}:{two[second]}"
    if micro == 0:
        return base + "Z"
    if micro % 1000 == 0:
        return f"{base}.{_THREE_DIGITS[micro // 1000]}Z"
    return f"{base}.{micro:06d}Z"


@dataclass(frozen=True, slots=True)
class Change:
    customer_id: str
    segment: str
    change: str  # ENTERED | EXITED
    at: int  # epoch microseconds, UTC
    cause: str  # purchase | return | time | definition
    event_id: str | None
    rules_version: int
    seq: int
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def change_id(self) -> str:
        return f"{self.customer_id}:{self.segment}:{self.seq}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "change_id": f"{self.customer_id}:{self.segment}:{self.seq}",
            "customer_id": self.customer_id,
            "segment": self.segment,
            "change": self.change,
            "at": format_instant(self.at),
            "cause": self.cause,
            "event_id": self.event_id,
            "rules_version": self.rules_version,
            "seq": self.seq,
            "metrics": self.metrics,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def membership_value(change: dict[str, Any]) -> bytes | None:
    """The compacted `segment-memberships` value of a change: a record on entry, a
    tombstone (None) on exit (SPEC section 4)."""
    if change["change"] != ENTERED:
        return None
    return orjson.dumps(
        {
            "customer_id": change["customer_id"],
            "segment": change["segment"],
            "since": change["at"],
            "seq": change["seq"],
            "change_id": change["change_id"],
            "rules_version": change["rules_version"],
        }
    )


def current_membership_change(state: CustomerState, segment: str) -> dict[str, Any]:
    """The state's membership of a segment, shaped like the change that led to it."""
    membership = state.memberships[segment]
    return {
        "customer_id": state.customer_id,
        "segment": segment,
        "change": ENTERED if membership.member else EXITED,
        "at": format_instant(membership.since),
        "seq": membership.seq,
        "change_id": f"{state.customer_id}:{segment}:{membership.seq}",
        "rules_version": state.rules_version,
    }
