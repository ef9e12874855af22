"""The wire codecs of segments.changes: a change (segment-changes), a membership record."""

from __future__ import annotations

import orjson
import pytest

from segments.aggregates import CustomerState, Membership
from segments.changes import Change, CodecError, MembershipRecord, change_id, membership_key
from segments.clock import parse_instant

pytestmark = pytest.mark.unit

AT = parse_instant("2026-11-20T14:03:11.120+00:00")


def entered(seq: int = 3) -> Change:
    return Change("c-1", "vip", "entered", AT, "purchase", "e-9", 2, seq, {"orders": 3})


def test_a_change_survives_its_wire_format_byte_for_byte() -> None:
    change = entered()
    assert Change.from_json(change.to_json()) == change
    assert Change.from_json(change.to_json()).to_json() == change.to_json()
    assert change.to_dict()["change_id"] == change.change_id == change_id("c-1", "vip", 3)
    assert change.to_dict()["at"] == change.at_iso == "2026-11-20T14:03:11.120Z"
    assert change.to_json() == orjson.dumps(change.to_dict())  # to_json writes to_dict out


def test_a_change_id_on_the_wire_is_derived_not_trusted() -> None:
    data = {**entered().to_dict(), "change_id": "forged"}
    assert Change.from_dict(data).change_id == "c-1:vip:3"


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        ({"change": "left"}, "unknown change kind"),
        ({"seq": 0}, "seq must be a positive integer"),
        ({"seq": "3"}, "seq must be a positive integer"),
        ({"at": "yesterday"}, "at must be an ISO-8601 instant"),
        ({"at": "2026-11-20T14:03:11"}, "at must be an ISO-8601 instant"),
        ({"segment": "a|b"}, "segment must not contain '|'"),
        ({"customer_id": None}, "missing field 'customer_id'"),
    ],
)
def test_what_is_not_a_change_is_refused_with_a_reason(
    edit: dict[str, object], reason: str
) -> None:
    data = {**entered().to_dict(), **edit}
    with pytest.raises(CodecError, match=reason):
        Change.from_dict(data)


@pytest.mark.parametrize("raw", [b"not json", b"[1]", b"null"])
def test_bytes_that_are_no_json_object_are_refused(raw: bytes) -> None:
    with pytest.raises(CodecError):
        Change.from_json(raw)


def test_an_entry_leaves_a_record_and_an_exit_a_tombstone() -> None:
    record = MembershipRecord.of_change(entered())
    assert record is not None
    assert record.key == membership_key("c-1", "vip") == b"c-1|vip"
    assert orjson.loads(record.to_json()) == {
        "customer_id": "c-1",
        "segment": "vip",
        "since": "2026-11-20T14:03:11.120Z",
        "seq": 3,
        "change_id": "c-1:vip:3",
        "rules_version": 2,
    }
    exited = Change("c-1", "vip", "exited", AT, "time", None, 2, 4)
    assert MembershipRecord.of_change(exited) is None


def test_the_record_of_a_state_is_its_current_membership() -> None:
    state = CustomerState("c-1")
    state.rules_version = 2
    state.memberships["vip"] = Membership(member=True, since=AT, seq=3)
    state.memberships["lapsed"] = Membership(member=False, since=AT, seq=2)
    assert MembershipRecord.of_state(state, "vip") == MembershipRecord.of_change(entered())
    assert MembershipRecord.of_state(state, "lapsed") is None


def test_a_record_decodes_from_what_the_worker_writes_and_from_older_shapes() -> None:
    record = MembershipRecord.of_change(entered())
    assert record is not None
    assert MembershipRecord.from_record(record.key, record.to_json()) == record
    # A value without ids takes them from the key; a change as value gives `at` as since.
    bare = orjson.dumps({"seq": 3, "at": "2026-11-20T14:03:11.120Z"})
    decoded = MembershipRecord.from_record(b"c|1|vip", bare)
    assert (decoded.customer_id, decoded.segment, decoded.since) == ("c|1", "vip", AT)
    assert decoded.rules_version is None


@pytest.mark.parametrize(
    "value",
    [b"{}", b'{"seq": "1", "since": "2026-01-01T00:00:00Z"}', b'{"seq": 1}', b"nope"],
)
def test_an_unusable_membership_record_is_refused(value: bytes) -> None:
    with pytest.raises(CodecError):
        MembershipRecord.from_record(b"c-1|vip", value)
