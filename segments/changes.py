"""Segment change events (SPEC section 4): what step() emits and every sink consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson

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
