"""Instants, local calendar days and midnights in a rule set's timezone."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

MICROS_PER_SECOND = 1_000_000
MICROS_PER_DAY = 86_400 * MICROS_PER_SECOND
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Instants are int microseconds since the Unix epoch (UTC); days are int counts
# of local calendar days since 1970-01-01. Both keep the hot path free of
# datetime objects and make window arithmetic exact.


def parse_instant(text: str) -> int:
    """ISO-8601 with an offset or Z -> epoch microseconds. Naive times are refused."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return to_micros(parsed)


def to_micros(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * MICROS_PER_SECOND + delta.microseconds


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def day_to_date(day: int) -> date:
    return date.fromordinal(day + _EPOCH_ORDINAL)


def date_to_day(value: date) -> int:
    return value.toordinal() - _EPOCH_ORDINAL


# The last day a deadline can fall on: date.max less a day of margin for time zones. A
# days-since rule compared with a huge number (or spend()) would change later than any
# calendar date; such a change never happens.
LAST_DAY = date.max.toordinal() - _EPOCH_ORDINAL - 1


@lru_cache(maxsize=65_536)
def month_day(day: int) -> int:
    """The day's month*100 + day-of-month, e.g. 1231 for 31 December (season filters)."""
    value = day_to_date(day)
    return value.month * 100 + value.day


class Calendar:
    """Local days and midnights of one IANA timezone; UTC takes an integer-only fast path."""

    def __init__(self, timezone: str = "UTC") -> None:
        self.timezone = timezone
        self._zone = None if timezone == "UTC" else ZoneInfo(timezone)
        self._midnights: dict[int, int] = {}

    def day_of(self, instant: int) -> int:
        """The local calendar day that contains the instant."""
        if self._zone is None:
            return instant // MICROS_PER_DAY
        local = from_micros(instant).astimezone(self._zone)
        return date_to_day(local.date())

    def midnight(self, day: int) -> int:
        """The instant of local 00:00 on the day (the first instant of the day on a DST gap)."""
        if self._zone is None:
            return day * MICROS_PER_DAY
        cached = self._midnights.get(day)
        if cached is None:
            value = day_to_date(day)
            local = datetime(value.year, value.month, value.day, tzinfo=self._zone)
            cached = to_micros(local)
            self._midnights[day] = cached
        return cached
