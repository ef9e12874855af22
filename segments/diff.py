"""What deploying a new rule version over the current one would do at an instant (`segments diff`).

The input is replayed under the old rules up to the instant with replay's own
engine (same decoding, rejections, clock marks and event-time rules); then every
customer is switched to the new rules at that instant exactly as a worker that
starts on the new version switches them (`Engine.switch_version`, cause
`definition`). The two sides are compared as plain {name: {customer_id: value}}
maps, one per kind of per-customer value: a segment's value is `member` (absent:
not a member), a trait's is its text (absent: null, no value).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from segments.aggregates import CustomerState, FilterKey
from segments.changes import Change, TraitChange, format_instant
from segments.engine import Engine, MemoryStates
from segments.replay import ReplayResult, run
from segments.rules.evaluator import CompiledRules, compile_rules
from segments.rules.ruleset import RuleSet

MEMBER = "member"  # a segment's value for a member; a non-member has no value (null)
ADDED, REMOVED, KEPT = "added", "removed", "kept"
DEFAULT_SAMPLE = 5

# name -> {customer_id: value}; a customer without an entry has the value null
Values = dict[str, dict[str, str]]


@dataclass(frozen=True)
class NameDiff:
    """One segment or trait before and after the switch.

    `transitions`: (value before, value after) -> the customers that moved so, sorted.
    """

    name: str
    kind: str  # "segment" or "trait"
    status: str  # added (only in the new rules), removed (only in the old), kept
    before: dict[str, int]  # customers per non-null value before the switch
    after: dict[str, int]
    transitions: dict[tuple[str | None, str | None], list[str]]

    @property
    def changed(self) -> int:
        return sum(len(ids) for ids in self.transitions.values())

    def moved(self, before: str | None, after: str | None) -> list[str]:
        return self.transitions.get((before, after), [])


@dataclass
class RuleDiff:
    """The whole preview: input counts, the switch, one NameDiff per segment and per trait
    of either file."""

    as_of: int
    old: RuleSet
    new: RuleSet
    switched_as_version: int  # the version the switch used (see same_version_warning)
    input: ReplayResult
    customers: int
    switched: int
    changes_at_switch: list[Change]  # the segments' entries and exits
    trait_changes_at_switch: list[TraitChange]
    segments: list[NameDiff]
    traits: list[NameDiff]
    before: Values  # every segment of either file, under the old rules at the instant
    after: Values  # the new rules' segments right after the switch
    traits_before: Values  # every trait of either file, under the old rules at the instant
    traits_after: Values  # the new rules' traits right after the switch
    warnings: list[str] = field(default_factory=list)

    @property
    def after_as_of(self) -> int:
        """Events and clock marks read but dated after the instant, so not applied."""
        result = self.input
        handled = result.applied + result.duplicates + result.clock_marks
        return result.events_read - handled - sum(result.rejected.values())


def compare(
    name: str, kind: str, status: str, before: Mapping[str, str], after: Mapping[str, str]
) -> NameDiff:
    """Compare one name's values per customer; a customer absent from a map has null."""
    transitions: dict[tuple[str | None, str | None], list[str]] = {}
    for customer_id in sorted(before.keys() | after.keys()):
        old, new = before.get(customer_id), after.get(customer_id)
        if old != new:
            transitions.setdefault((old, new), []).append(customer_id)
    return NameDiff(
        name=name,
        kind=kind,
        status=status,
        before=dict(sorted(Counter(before.values()).items())),
        after=dict(sorted(Counter(after.values()).items())),
        transitions=dict(sorted(transitions.items(), key=_transition_order)),
    )


def _transition_order(item: tuple[tuple[str | None, str | None], list[str]]) -> tuple[str, str]:
    (before, after), _ = item
    return (before or "", after or "")


def segment_values(states: Iterable[CustomerState], names: Iterable[str]) -> Values:
    """{segment: {customer_id: "member"}} for the named segments, from stored memberships."""
    values: Values = {name: {} for name in names}
    for state in states:
        for name, membership in state.memberships.items():
            if membership.member and name in values:
                values[name][state.customer_id] = MEMBER
    return values


def trait_values(states: Iterable[CustomerState], names: Iterable[str]) -> Values:
    """{trait: {customer_id: value}} for the named traits, from the stored trait values;
    a customer whose value is null (no value, or a removed trait) has no entry."""
    values: Values = {name: {} for name in names}
    for state in states:
        if state.traits:
            for name, (value, _) in state.traits.items():
                if value is not None and name in values:
                    values[name][state.customer_id] = value
    return values


def compare_all(
    kind: str, old_names: list[str], new_names: list[str], before: Values, after: Values
) -> list[NameDiff]:
    """One NameDiff per name of either file: the new file's in order, then the removed ones."""
    names = [*new_names, *(name for name in old_names if name not in new_names)]
    return [
        compare(
            name,
            kind,
            REMOVED if name not in new_names else ADDED if name not in old_names else KEPT,
            before.get(name, {}),
            after.get(name, {}),
        )
        for name in names
    ]


def diff_rules(
    lines: Iterable[bytes],
    old: RuleSet,
    new: RuleSet,
    as_of: int,
    wall: int | None = None,
) -> RuleDiff:
    """Replay `lines` under `old` up to `as_of`, switch every customer to `new` at `as_of`.

    `wall`: the wall clock of the run, for replay's too_far_ahead rule. When both
    files carry the same version the switch runs under `new` with the old version
    + 1: a worker would switch nobody, and the preview is of the rules, not of
    the version number (the warning says so).
    """
    warnings: list[str] = []
    switched_as = new.version
    if new.version == old.version:
        switched_as = old.version + 1
        warnings.append(same_version_warning(old.version))
    old_rules = compile_rules(old)
    new_rules = compile_rules(dataclasses.replace(new, version=switched_as))
    warnings.extend(history_warnings(old_rules, new_rules))

    def ignore_change(change: Change, line: int | None) -> None:
        pass

    def ignore_rejection(record: bytes, line: int, instant: int | None) -> None:
        pass

    result, replayed = run(
        enumerate(lines, start=1),
        old_rules,
        ignore_change,
        ignore_rejection,
        as_of=as_of,
        wall=wall,
        until=as_of,
    )
    states = replayed.states
    old_names = [s.name for s in old.segments]
    new_names = [s.name for s in new.segments]
    old_traits = [t.name for t in old.traits]
    new_traits = [t.name for t in new.traits]
    before = segment_values(states.values(), [*old_names, *new_names])
    traits_before = trait_values(states.values(), [*old_traits, *new_traits])

    at_switch: list[Change] = []
    traits_at_switch: list[TraitChange] = []

    def keep_changes(changes: list[Change | TraitChange]) -> None:
        for change in changes:
            if isinstance(change, Change):
                at_switch.append(change)
            else:
                traits_at_switch.append(change)

    switching = MemoryStates(keep_changes)
    switching.states = states
    engine = Engine(new_rules, switching)
    engine.restore_clock(as_of)
    switched = engine.switch_version(list(states), as_of)
    after = segment_values(states.values(), new_names)
    traits_after = trait_values(states.values(), new_traits)

    return RuleDiff(
        as_of=as_of,
        old=old,
        new=new,
        switched_as_version=switched_as,
        input=result,
        customers=len(states),
        switched=switched,
        changes_at_switch=at_switch,
        trait_changes_at_switch=traits_at_switch,
        segments=compare_all("segment", old_names, new_names, before, after),
        traits=compare_all("trait", old_traits, new_traits, traits_before, traits_after),
        before=before,
        after=after,
        traits_before=traits_before,
        traits_after=traits_after,
        warnings=warnings,
    )


def same_version_warning(version: int) -> str:
    return (
        f"both files have version {version}: a worker started on the new file would switch "
        "no customer (each would move to the new rules only at their next event or deadline, "
        "and members of removed segments would stay members); raise `version` to roll it out. "
        f"This preview switches everyone as version {version + 1} would."
    )


def history_warnings(old: CompiledRules, new: CompiledRules) -> list[str]:
    """What the new rules (segments and traits) read that the state kept under the old
    rules does not hold.

    At the switch the new rules see only what the old ones kept, as a worker's
    switch does; a full replay under the new rules can then differ. The traits'
    metrics are among the new rules' (compile_rules), so a window, category or
    filter a trait's case reads is named like a segment's; a `top_category` trait
    is named by itself, as it reads every category of the orders in its window.
    """
    warnings: list[str] = []
    kept = f"the last {old.horizon_days} days"
    top = [(t.name, days) for t in new.ruleset.traits if (days := t.top_category_days) is not None]
    if new.horizon_days > old.horizon_days:
        longer = [
            f"trait '{name}': top_category over {days} days"
            for name, days in top
            if days > old.horizon_days
        ]
        among = f" ({'; '.join(longer)})" if longer else ""
        warnings.append(
            f"the new rules read windows of up to {new.horizon_days} days{among}, but the old "
            f"rules keep order records for {kept}: at the switch those windows see only {kept}"
        )
    if old.keep_categories is not None:
        if new.keep_categories is None:
            readers = []
            if any(spec.name == "distinct_categories" for spec in new.specs):
                readers.append("count distinct categories")
            if top:
                readers.append(
                    f"rank every category by spend (top_category: {_names(n for n, _ in top)})"
                )
            what = " and ".join(readers) or "read every category"
            if old.keep_categories:
                lost = (
                    f"keep only the categories they name ({_names(old.keep_categories)}): "
                    "orders before the switch show only those"
                )
            else:
                lost = "keep no categories: orders before the switch show none"
            warnings.append(f"the new rules {what}, but the old rules {lost}")
        elif new.keep_categories - old.keep_categories:
            warnings.append(
                "the new rules name categories the old rules do not keep "
                f"({_names(new.keep_categories - old.keep_categories)}): orders before the "
                "switch count none of them"
            )
    if new.keep_items and not old.keep_items:
        warnings.append(
            "the new rules read line items (SKUs, products) that the old rules do not keep: "
            "orders before the switch count no items"
        )
    new_lines = [f for f in new.keep_line_filters if f not in old.keep_line_filters]
    if new_lines:
        warnings.append(
            "the new rules read product=/sku= filters that the old rules do not keep "
            f"({'; '.join(_filter_text((None, f, None)) for f in new_lines)}): orders "
            "before the switch match none of them"
        )
    new_keys = [key for key in new.lifetime_keys if key not in old.lifetime_keys]
    if new_keys:
        warnings.append(
            "the new rules read all-history totals with filters the old rules do not keep "
            f"({'; '.join(_filter_text(key) for key in new_keys)}): at the switch they are "
            f"rebuilt from the order records kept, {kept}"
        )
    if new.lifetime_categories and not old.lifetime_categories:
        warnings.append(
            "the new rules count distinct categories over all history, which the old rules "
            "do not keep: orders before the switch are not all counted"
        )
    if new.lifetime_extremes and not old.lifetime_extremes:
        warnings.append(
            "the new rules read min_order_value()/max_order_value() over all history, which "
            f"the old rules do not keep: at the switch only {kept} are seen"
        )
    old_set, new_set = old.ruleset, new.ruleset
    if new_set.timezone != old_set.timezone:
        warnings.append(
            f"the timezone changes ({old_set.timezone} -> {new_set.timezone}): the days of "
            "orders before the switch stay those of the old timezone"
        )
    if new_set.base_currency != old_set.base_currency or new_set.rates != old_set.rates:
        warnings.append(
            "the base currency or the rates change: amounts before the switch stay converted "
            "with the old ones"
        )
    return warnings


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(name) for name in sorted(names))


def _filter_text(key: FilterKey) -> str:
    channel, lines, season = key
    parts = []
    if channel is not None:
        parts.append(f'channel="{channel}"')
    if isinstance(lines, tuple):  # product= / sku=, with or without category=
        for name, value in zip(("category", "product", "sku"), lines, strict=True):
            if value is not None:
                parts.append(f'{name}="{value}"')
    elif lines is not None:
        parts.append(f'category="{lines}"')
    if season is not None:
        parts.append('season="{:02d}-{:02d}..{:02d}-{:02d}"'.format(*season))
    return ", ".join(parts) or "no filter"


# --- output -----------------------------------------------------------------------------


def name_document(diff: NameDiff, sample: int) -> dict[str, Any]:
    """The generic per-name report: counts per value, transitions with a sample of ids."""
    return {
        "name": diff.name,
        "kind": diff.kind,
        "status": diff.status,
        "before": diff.before,
        "after": diff.after,
        "changed": diff.changed,
        "transitions": [
            {"from": old, "to": new, "count": len(ids), "sample": ids[:sample]}
            for (old, new), ids in diff.transitions.items()
        ],
    }


def segment_document(diff: NameDiff, sample: int) -> dict[str, Any]:
    """name_document() plus a segment's own words: members, entered, exited."""
    entered = diff.moved(None, MEMBER)
    exited = diff.moved(MEMBER, None)
    return {
        **name_document(diff, sample),
        "members_before": diff.before.get(MEMBER, 0),
        "members_after": diff.after.get(MEMBER, 0),
        "entered": len(entered),
        "exited": len(exited),
        "sample": {"entered": entered[:sample], "exited": exited[:sample]},
    }


def to_document(diff: RuleDiff, old_file: str, new_file: str, sample: int) -> dict[str, Any]:
    """The `--json` output (docs/operations.md, "Preview a rule change")."""
    result = diff.input
    return {
        "as_of": format_instant(diff.as_of),
        "old": {"rules": old_file, "version": diff.old.version},
        "new": {
            "rules": new_file,
            "version": diff.new.version,
            "switched_as_version": diff.switched_as_version,
        },
        "input": {**result.input_counts(), "after_as_of": diff.after_as_of},
        "customers": diff.customers,
        "switched": diff.switched,
        "changes_at_switch": len(diff.changes_at_switch),
        "trait_changes_at_switch": len(diff.trait_changes_at_switch),
        "warnings": diff.warnings,
        "segments": [segment_document(segment, sample) for segment in diff.segments],
        "traits": [name_document(trait, sample) for trait in diff.traits],
    }


def format_table(diff: RuleDiff, old_file: str, new_file: str, sample: int) -> str:
    """The readable output: a header, one row per segment, the sampled ids, then a block
    per trait (when either file has traits)."""
    result = diff.input
    rejected = sum(result.rejected.values())
    version = f"version {diff.new.version}"
    if diff.switched_as_version != diff.new.version:
        version += f", switched as {diff.switched_as_version}"
    lines = [
        f"{old_file} (version {diff.old.version}) -> {new_file} ({version}) "
        f"at {format_instant(diff.as_of)}",
        f"input: {result.events_read} read, {result.applied} applied, "
        f"{result.duplicates} duplicates, {rejected} rejected, "
        f"{diff.after_as_of} after --as-of (not applied)",
        f"customers: {diff.customers}, switched: {diff.switched}, "
        f"changes at the switch: {len(diff.changes_at_switch)}"
        + (f", trait changes: {len(diff.trait_changes_at_switch)}" if diff.traits else ""),
        "",
    ]
    header = ("segment", "status", "before", "after", "entered", "exited")
    rows = [
        (
            segment.name,
            segment.status,
            str(segment.before.get(MEMBER, 0)),
            str(segment.after.get(MEMBER, 0)),
            str(len(segment.moved(None, MEMBER))),
            str(len(segment.moved(MEMBER, None))),
        )
        for segment in diff.segments
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    if sample > 0:
        samples = []
        for segment in diff.segments:
            for kind, ids in (
                ("entered", segment.moved(None, MEMBER)),
                ("exited", segment.moved(MEMBER, None)),
            ):
                if ids:
                    more = f" (+{len(ids) - sample} more)" if len(ids) > sample else ""
                    samples.append(f"{kind} {segment.name}: {', '.join(ids[:sample])}{more}")
        if samples:
            lines.append("")
            lines.extend(samples)
    for trait in diff.traits:
        lines.append("")
        lines.extend(trait_table(trait, diff.customers, sample))
    return "\n".join(lines) + "\n"


NO_VALUE = "(no value)"  # a null value in the table; the JSON says null
TOP_TRANSITIONS = 5  # transitions per trait in the table; the JSON lists every one


def _shown(value: str | None) -> str:
    return NO_VALUE if value is None else value


def trait_table(trait: NameDiff, customers: int, sample: int) -> list[str]:
    """A trait's block: customers per value before and after (null included), then its
    most frequent transitions with the first `sample` ids of each."""
    lines = [f"trait {trait.name} ({trait.status}): {trait.changed} changed"]
    rows = [("value", "before", "after")]
    for value in sorted(trait.before.keys() | trait.after.keys()):
        rows.append((value, str(trait.before.get(value, 0)), str(trait.after.get(value, 0))))
    rows.append(
        (
            NO_VALUE,
            str(customers - sum(trait.before.values())),
            str(customers - sum(trait.after.values())),
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for value, before, after in rows:
        cells = [value.ljust(widths[0]), before.rjust(widths[1]), after.rjust(widths[2])]
        lines.append("  " + "  ".join(cells))
    moves = sorted(trait.transitions.items(), key=lambda item: -len(item[1]))  # stable
    top = moves[:TOP_TRANSITIONS]
    shown = [(f"{_shown(old)} -> {_shown(new)}", ids) for (old, new), ids in top]
    width = max((len(move) for move, _ in shown), default=0)
    count_width = max((len(str(len(ids))) for _, ids in shown), default=0)
    for move, ids in shown:
        row = f"  {move.ljust(width)}  {str(len(ids)).rjust(count_width)}"
        if sample > 0:
            more = f" (+{len(ids) - sample} more)" if len(ids) > sample else ""
            row += f"  {', '.join(ids[:sample])}{more}"
        lines.append(row)
    if len(moves) > len(shown):
        lines.append(f"  (+{len(moves) - len(shown)} more transitions: --json lists them all)")
    return lines
