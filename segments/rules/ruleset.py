"""A rule file (YAML) loaded into a validated, immutable RuleSet."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from segments.rules.ast import Expr

MICROS_PER_DAY = 86_400_000_000


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    description: str
    when: Expr
    exit_when: Expr | None = None  # the customer leaves only when this holds
    min_dwell: int | None = None  # microseconds; no exit before this long in the segment


@dataclass(frozen=True, slots=True)
class Trigger:
    name: str
    segment: str
    on: str  # "entered" | "exited"
    webhook: str
    cooldown: int = 0  # microseconds


@dataclass(frozen=True, slots=True)
class RuleSet:
    version: int
    base_currency: str
    segments: tuple[Segment, ...]
    timezone: str = "UTC"
    rates: dict[str, Decimal] = field(default_factory=dict)  # units of base per unit
    triggers: tuple[Trigger, ...] = ()
    max_lateness: int = 30 * MICROS_PER_DAY  # microseconds
    max_future_skew: int = 5 * 60 * 1_000_000  # microseconds, wall-clock mode only
    source: str = "<memory>"
