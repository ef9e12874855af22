"""Segment change events and membership records (SPEC section 4): their one wire codec.

What step() emits and every sink consumes: the worker encodes, the cache sink,
the trigger dispatcher and the resync decode, all through the classes here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson

from segments.clock import parse_instant

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


def change_id(customer_id: str, segment: str, seq: int) -> str:
    """`customer_id:segment:seq`: the same transition always gets the same id (SPEC section 4)."""
    return f"{customer_id}:{segment}:{seq}"


class CodecError(ValueError):
    """Bytes that are not a change or a membership record; the message says what is wrong."""


def _instant(value: Any, name: str) -> int:
    if not isinstance(value, str) or "|" in value:
        raise CodecError(f"{name} must be an ISO-8601 instant")
    try:
        return parse_instant(value.replace("Z", "+00:00"))
    except ValueError:
        raise CodecError(f"{name} must be an ISO-8601 instant with an offset or Z") from None


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise CodecError(f"missing field {name!r}" if value is None else f"{name} must be text")
    return value


def _seq(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CodecError("seq must be a positive integer")
    return value


def _shared_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The fields a segment change and a trait change share, checked and normalised:
    customer_id, at and seq are required; cause, event_id, rules_version and metrics
    are taken when present."""
    if "at" not in data:
        raise CodecError("missing field 'at'")
    if "seq" not in data:
        raise CodecError("missing field 'seq'")
    cause, event_id = data.get("cause"), data.get("event_id")
    rules_version, metrics = data.get("rules_version"), data.get("metrics")
    return {
        "customer_id": _text(data, "customer_id"),
        "at": _instant(data["at"], "at"),
        "cause": cause if isinstance(cause, str) else "",
        "event_id": event_id if isinstance(event_id, str) else None,
        "rules_version": rules_version if isinstance(rules_version, int) else 0,
        "seq": _seq(data["seq"]),
        "metrics": metrics if isinstance(metrics, dict) else {},
    }


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError) as error:
        raise CodecError(f"not JSON: {error}") from None
    if not isinstance(data, dict):
        raise CodecError("not a JSON object")
    return data


@dataclass(frozen=True, slots=True)
class Change:
    """One entry or exit; `to_json`/`from_json` are the segment-changes wire format."""

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
        return change_id(self.customer_id, self.segment, self.seq)

    @property
    def entered(self) -> bool:
        return self.change == ENTERED

    @property
    def at_iso(self) -> str:
        """`at` as on the wire: ISO-8601 UTC with a Z."""
        return format_instant(self.at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "change_id": change_id(self.customer_id, self.segment, self.seq),
            "customer_id": self.customer_id,
            "segment": self.segment,
            "change": self.change,
            "at": self.at_iso,
            "cause": self.cause,
            "event_id": self.event_id,
            "rules_version": self.rules_version,
            "seq": self.seq,
            "metrics": self.metrics,
        }

    def to_json(self) -> bytes:
        # to_dict() written out: about one change is encoded per replayed event
        return orjson.dumps(
            {
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
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Change:
        """A decoded SPEC section 4 change; raises CodecError when it is not one.

        customer_id, segment, change, at and seq are required (the cache needs them);
        cause, event_id, rules_version and metrics are taken when present. A
        `change_id` in the data is not trusted: it is always derived from the fields.
        """
        kind = data.get("change")
        if kind not in (ENTERED, EXITED):
            raise CodecError(
                "missing field 'change'" if kind is None else f"unknown change kind {kind!r}"
            )
        segment = _text(data, "segment")
        if "|" in segment:
            raise CodecError("segment must not contain '|'")
        return cls(segment=segment, change=kind, **_shared_fields(data))

    @classmethod
    def from_json(cls, raw: bytes) -> Change:
        """A segment-changes message value -> Change; raises CodecError when unusable."""
        return cls.from_dict(_json_object(raw))


def trait_change_id(customer_id: str, trait: str, seq: int) -> str:
    """`customer_id:trait:name:seq` (SPEC section 3, traits)."""
    return f"{customer_id}:trait:{trait}:{seq}"


@dataclass(frozen=True, slots=True)
class TraitChange:
    """A trait's new value (a string, or None: no value); `to_json` is the trait-changes
    wire format: a segment change's shape with `trait` and `value` for `segment` and
    `change` (SPEC section 3)."""

    customer_id: str
    trait: str
    value: str | None
    at: int  # epoch microseconds, UTC
    cause: str  # purchase | return | time | definition
    event_id: str | None
    rules_version: int
    seq: int
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def change_id(self) -> str:
        return trait_change_id(self.customer_id, self.trait, self.seq)

    @property
    def at_iso(self) -> str:
        return format_instant(self.at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "change_id": trait_change_id(self.customer_id, self.trait, self.seq),
            "customer_id": self.customer_id,
            "trait": self.trait,
            "value": self.value,
            "at": self.at_iso,
            "cause": self.cause,
            "event_id": self.event_id,
            "rules_version": self.rules_version,
            "seq": self.seq,
            "metrics": self.metrics,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TraitChange:
        """A decoded trait change; raises CodecError when it is not one (customer_id,
        trait, value, at and seq are required; a `change_id` is derived, never trusted)."""
        trait = _text(data, "trait")
        if "|" in trait:
            raise CodecError("trait must not contain '|'")
        if "value" not in data:
            raise CodecError("missing field 'value'")
        value = data["value"]
        if value is not None and not isinstance(value, str):
            raise CodecError("value must be a JSON string or null")
        return cls(trait=trait, value=value, **_shared_fields(data))

    @classmethod
    def from_json(cls, raw: bytes) -> TraitChange:
        """A trait-changes message value -> TraitChange; raises CodecError when unusable."""
        return cls.from_dict(_json_object(raw))


def trait_value_key(customer_id: str, trait: str) -> bytes:
    """The compacted trait-values key: `customer_id|trait`."""
    return f"{customer_id}|{trait}".encode()


def membership_key(customer_id: str, segment: str) -> bytes:
    """The compacted segment-memberships key: `customer_id|segment`."""
    return f"{customer_id}|{segment}".encode()


@dataclass(frozen=True, slots=True)
class MembershipRecord:
    """A current membership: the value of its segment-memberships key (SPEC section 4).

    A member has a record; a customer who left has a tombstone (no record) under the key.
    """

    customer_id: str
    segment: str
    since: int  # epoch microseconds of the change that made the customer a member
    seq: int
    rules_version: int | None

    @property
    def key(self) -> bytes:
        return membership_key(self.customer_id, self.segment)

    @property
    def since_iso(self) -> str:
        """`since` as on the wire: ISO-8601 UTC with a Z."""
        return format_instant(self.since)

    @property
    def change_id(self) -> str:
        return change_id(self.customer_id, self.segment, self.seq)

    @classmethod
    def of_change(cls, change: Change) -> MembershipRecord | None:
        """The record a change leaves behind: one on entry, a tombstone (None) on exit."""
        if not change.entered:
            return None
        return cls(change.customer_id, change.segment, change.at, change.seq, change.rules_version)

    @classmethod
    def of_state(cls, state: CustomerState, segment: str) -> MembershipRecord | None:
        """The state's current membership of a segment; None (a tombstone) when not a member."""
        membership = state.memberships[segment]
        if not membership.member:
            return None
        return cls(
            state.customer_id, segment, membership.since, membership.seq, state.rules_version
        )

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "customer_id": self.customer_id,
                "segment": self.segment,
                "since": self.since_iso,
                "seq": self.seq,
                "change_id": self.change_id,
                "rules_version": self.rules_version,
            }
        )

    @classmethod
    def from_record(cls, key: bytes | None, value: bytes) -> MembershipRecord:
        """A segment-memberships record -> MembershipRecord; raises CodecError when unusable.

        customer_id and segment come from the value, else from the key; `since` (or `at`,
        for a value that is the entering change itself) says when the customer entered.
        """
        data = _json_object(value)
        seq = data.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise CodecError("membership value must be a JSON object with an integer seq")
        customer_id, segment = data.get("customer_id"), data.get("segment")
        if (customer_id is None or segment is None) and key:
            try:
                customer_id, _, segment = key.decode().rpartition("|")
            except UnicodeDecodeError:
                raise CodecError("membership key is not UTF-8") from None
        since = data.get("since") or data.get("at")
        if not customer_id or not segment or not isinstance(since, str):
            raise CodecError("membership value lacks customer_id, segment or since/at")
        if not isinstance(customer_id, str) or not isinstance(segment, str):
            raise CodecError("customer_id and segment must be text")
        rules_version = data.get("rules_version")
        return cls(
            customer_id=customer_id,
            segment=segment,
            since=_instant(since, "since"),
            seq=seq,
            rules_version=rules_version if isinstance(rules_version, int) else None,
        )
