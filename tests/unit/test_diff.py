"""`segments diff` as plain function calls: entries and exits at the switch, worked out by hand."""

from __future__ import annotations

import orjson
import pytest

from segments.clock import parse_instant
from segments.diff import (
    MEMBER,
    RuleDiff,
    compare,
    diff_rules,
    format_table,
    history_warnings,
    to_document,
)
from segments.replay import run
from segments.rules.evaluator import compile_rules
from segments.rules.ruleset import RuleSet, parse_ruleset

pytestmark = pytest.mark.unit

AS_OF = "2026-03-01T00:00:00Z"

OLD = """\
version: 1
base_currency: EUR
segments:
  - name: regular
    when: orders(within="30d") >= 3
  - name: lapsed
    when: days_since_last_purchase() > 10
  - name: online
    when: orders(channel="online") >= 1
"""

# regular's threshold lowered, online removed, big added
NEW = """\
version: 2
base_currency: EUR
segments:
  - name: regular
    when: orders(within="30d") >= 2
  - name: lapsed
    when: days_since_last_purchase() > 10
  - name: big
    when: spend() >= 100
"""


def purchase(event_id: str, customer: str, at: str, total: str, channel: str = "pos") -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "customer_id": customer,
            "occurred_at": at,
            "channel": channel,
            "currency": "EUR",
            "total": total,
        }
    )


# a: 3 orders in February, the last on the 20th (9 days before the switch): regular.
# b: 2 orders (110 EUR): regular and big only under the new rules.
# c: one order on 1 January: lapsed under both, big under the new rules.
# d: one online order: online, which the new rules no longer have.
# e: buys only after the switch: not applied, not a customer yet.
EVENTS = [
    purchase("a1", "a", "2026-02-10T10:00:00Z", "10"),
    purchase("a2", "a", "2026-02-15T10:00:00Z", "10"),
    purchase("a3", "a", "2026-02-20T10:00:00Z", "10"),
    purchase("b1", "b", "2026-02-20T11:00:00Z", "60"),
    purchase("b2", "b", "2026-02-25T11:00:00Z", "50"),
    purchase("c1", "c", "2026-01-01T09:00:00Z", "200"),
    purchase("d1", "d", "2026-02-27T12:00:00Z", "20", channel="online"),
    purchase("e1", "e", "2026-03-02T12:00:00Z", "500"),
    b"{not json",
]


def preview(old: str = OLD, new: str = NEW, as_of: str = AS_OF) -> RuleDiff:
    return diff_rules(
        EVENTS, parse_ruleset(old, "old.yaml"), parse_ruleset(new, "new.yaml"), t(as_of)
    )


def t(text: str) -> int:
    return parse_instant(text.replace("Z", "+00:00"))


def by_name(diff: RuleDiff) -> dict[str, tuple[str, list[str], list[str], int, int]]:
    """name -> (status, entered, exited, members before, members after)."""
    return {
        s.name: (
            s.status,
            s.moved(None, MEMBER),
            s.moved(MEMBER, None),
            s.before.get(MEMBER, 0),
            s.after.get(MEMBER, 0),
        )
        for s in diff.segments
    }


def test_lowered_threshold_removed_and_added_segments() -> None:
    diff = preview()
    assert by_name(diff) == {
        "regular": ("kept", ["b"], [], 1, 2),
        "lapsed": ("kept", [], [], 1, 1),
        "big": ("added", ["b", "c"], [], 0, 2),
        "online": ("removed", [], ["d"], 1, 0),
    }
    assert [s.name for s in diff.segments] == ["regular", "lapsed", "big", "online"]
    assert diff.customers == 4
    assert diff.switched == 4
    assert diff.warnings == []


def test_the_switch_emits_exactly_the_entries_and_exits_as_definition_changes() -> None:
    diff = preview()
    changes = sorted((c.segment, c.customer_id, c.change) for c in diff.changes_at_switch)
    assert changes == [
        ("big", "b", "entered"),
        ("big", "c", "entered"),
        ("online", "d", "exited"),
        ("regular", "b", "entered"),
    ]
    assert {(c.cause, c.at, c.rules_version) for c in diff.changes_at_switch} == {
        ("definition", t(AS_OF), 2)
    }


def test_raised_threshold_makes_members_exit() -> None:
    raised = OLD.replace(">= 3", ">= 4").replace("version: 1", "version: 7")
    assert by_name(preview(new=raised))["regular"] == ("kept", [], ["a"], 1, 0)


def test_events_after_the_instant_are_not_applied_and_rejections_are_counted() -> None:
    diff = preview()
    assert diff.input.events_read == 9
    assert diff.input.applied == 7
    assert dict(diff.input.rejected) == {"invalid_json": 1}
    assert diff.after_as_of == 1
    # one day later e's purchase counts: big under the new rules
    later = preview(as_of="2026-03-03T00:00:00Z")
    assert later.after_as_of == 0
    assert by_name(later)["big"][1] == ["b", "c", "e"]


def test_time_driven_changes_under_the_old_rules_happen_before_the_switch() -> None:
    # a's last order was on 20 February: lapsed (> 10 days) from 3 March 00:00
    diff = preview(as_of="2026-03-03T00:00:00Z")
    lapsed = next(s for s in diff.segments if s.name == "lapsed")
    assert lapsed.before == {MEMBER: 2}
    assert lapsed.changed == 0


def test_same_version_still_shows_the_effect_and_warns() -> None:
    same = NEW.replace("version: 2", "version: 1")
    diff = preview(new=same)
    assert by_name(diff) == by_name(preview())
    assert diff.switched_as_version == 2
    assert diff.switched == 4
    assert len(diff.warnings) == 1
    assert "both files have version 1" in diff.warnings[0]
    assert "raise `version`" in diff.warnings[0]


def test_table_says_which_version_the_switch_used() -> None:
    diff = preview(new=NEW.replace("version: 2", "version: 1"))
    first = format_table(diff, "old.yaml", "new.yaml", sample=5).splitlines()[0]
    assert first == (
        "old.yaml (version 1) -> new.yaml (version 1, switched as 2) at 2026-03-01T00:00:00Z"
    )


def test_identical_rules_change_nothing() -> None:
    diff = preview(new=OLD.replace("version: 1", "version: 2"))
    assert all(s.changed == 0 and s.status == "kept" for s in diff.segments)
    assert diff.changes_at_switch == []


def test_a_longer_window_sees_only_what_the_old_rules_kept_and_says_so() -> None:
    # f bought 200 days before the switch and again 5 days before it: the old rules keep
    # order records for 31 days (30d, at least max_lateness), so the first one is gone.
    old_set = rules('orders(within="30d") >= 1')
    new_set = rules('orders(within="365d") >= 2', version=2)
    events = [
        purchase("f1", "f", "2025-08-13T10:00:00Z", "10"),
        purchase("f2", "f", "2026-02-24T10:00:00Z", "10"),
    ]
    diff = diff_rules(events, old_set, new_set, t(AS_OF))
    assert by_name(diff)["s0"] == ("kept", [], ["f"], 1, 0)  # what a worker would do
    assert any("windows of up to 365 days" in w and "31 days" in w for w in diff.warnings)
    # a replay of everything under the new rules differs: it saw both orders
    _, states = run(
        enumerate(events, 1), compile_rules(new_set), _no_change, _no_reject, as_of=t(AS_OF)
    )
    assert states.memberships(["s0"]) == {"s0": ["f"]}


def _no_change(change: object, line: int | None) -> None:
    pass


def _no_reject(record: bytes, line: int, instant: int | None) -> None:
    pass


def rules(*whens: str, extra: str = "", version: int = 1) -> RuleSet:
    lines = [f"  - {{name: s{i}, when: '{when}'}}" for i, when in enumerate(whens)]
    text = (
        f"version: {version}\nbase_currency: EUR\n"
        + extra
        + "segments:\n"
        + "\n".join(lines)
        + "\n"
    )
    return parse_ruleset(text, "r.yaml")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('orders(within="30d") >= 1', 'orders(within="90d") >= 1', "windows of up to 90 days"),
        (
            'orders(category="Books") >= 1',
            'orders(category="Music") >= 1',
            "categories the old rules do not keep ('Music')",
        ),
        ("orders() >= 1", "distinct_categories() >= 2", "count distinct categories"),
        ("orders() >= 1", "distinct_skus() >= 2", "line items"),
        ("orders() >= 1", 'orders(channel="pos") >= 1', "filters the old rules do not keep"),
        ("orders() >= 1", "max_order_value() > 10", "min_order_value()/max_order_value()"),
    ],
)
def test_history_the_old_rules_do_not_keep_is_named(old: str, new: str, expected: str) -> None:
    warnings = history_warnings(compile_rules(rules(old)), compile_rules(rules(new)))
    assert any(expected in warning for warning in warnings), warnings


def test_no_warning_when_the_old_rules_keep_everything_the_new_ones_read() -> None:
    old = rules('orders(within="365d", category="Music") >= 1', 'orders(channel="pos") >= 1')
    new = rules('spend(within="90d", category="Music") > 5', 'spend(channel="pos") > 1')
    assert history_warnings(compile_rules(old), compile_rules(new)) == []


def test_timezone_and_rates_changes_are_named() -> None:
    old = rules("orders() >= 1")
    new = rules("orders() >= 1", extra='timezone: Europe/Paris\nrates: {USD: "0.9"}\n')
    warnings = history_warnings(compile_rules(old), compile_rules(new))
    assert any("timezone changes (UTC -> Europe/Paris)" in w for w in warnings)
    assert any("rates change" in w for w in warnings)


def test_compare_is_generic_over_values() -> None:
    # a per-customer value other than membership (e.g. a lifecycle stage) compares alike
    diff = compare(
        "lifecycle",
        "trait",
        "kept",
        {"x": "loyal", "y": "new", "w": "new"},
        {"x": "loyal", "y": "loyal", "z": "new"},
    )
    assert diff.before == {"loyal": 1, "new": 2}
    assert diff.after == {"loyal": 2, "new": 1}
    assert diff.transitions == {("new", None): ["w"], ("new", "loyal"): ["y"], (None, "new"): ["z"]}
    assert diff.changed == 3


def test_json_document_shape() -> None:
    document = to_document(preview(), "old.yaml", "new.yaml", sample=1)
    assert document["as_of"] == AS_OF
    assert document["old"] == {"rules": "old.yaml", "version": 1}
    assert document["new"] == {"rules": "new.yaml", "version": 2, "switched_as_version": 2}
    assert document["input"] == {
        "events_read": 9,
        "applied": 7,
        "duplicates": 0,
        "clock_marks": 0,
        "rejected": 1,
        "rejected_by_reason": {"invalid_json": 1},
        "after_as_of": 1,
    }
    assert (document["customers"], document["switched"], document["changes_at_switch"]) == (4, 4, 4)
    big = next(s for s in document["segments"] if s["name"] == "big")
    assert big == {
        "name": "big",
        "kind": "segment",
        "status": "added",
        "before": {},
        "after": {"member": 2},
        "changed": 2,
        "transitions": [{"from": None, "to": "member", "count": 2, "sample": ["b"]}],
        "members_before": 0,
        "members_after": 2,
        "entered": 2,
        "exited": 0,
        "sample": {"entered": ["b"], "exited": []},
    }
    orjson.dumps(document)  # serialisable as it is


def test_table_lists_every_segment_and_samples_sorted_ids() -> None:
    text = format_table(preview(), "old.yaml", "new.yaml", sample=1)
    assert text.splitlines() == [
        "old.yaml (version 1) -> new.yaml (version 2) at 2026-03-01T00:00:00Z",
        "input: 9 read, 7 applied, 0 duplicates, 1 rejected, 1 after --as-of (not applied)",
        "customers: 4, switched: 4, changes at the switch: 4",
        "",
        "segment  status   before  after  entered  exited",
        "regular  kept          1      2        1       0",
        "lapsed   kept          1      1        0       0",
        "big      added         0      2        2       0",
        "online   removed       1      0        0       1",
        "",
        "entered regular: b",
        "entered big: b (+1 more)",
        "exited online: d",
    ]
    no_sample = format_table(preview(), "o", "n", sample=0).splitlines()
    assert no_sample[-1] == "online   removed       1      0        0       1"
