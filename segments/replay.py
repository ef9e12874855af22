"""The whole pipeline over a file, no infrastructure: decode, order by time, step(), write."""

from __future__ import annotations

import gc
import gzip
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from segments.changes import Change, TraitChange
from segments.engine import Engine, MemoryStates
from segments.events import ClockMark, Event, Rejection, decode_event, encode_event
from segments.membership import DuplicateEvent
from segments.rules.evaluator import CompiledRules


@dataclass
class ReplayResult:
    events_read: int = 0
    applied: int = 0
    duplicates: int = 0
    clock_marks: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    changes: Counter[tuple[str, str]] = field(default_factory=Counter)
    seconds: float = 0.0

    def input_counts(self) -> dict[str, Any]:
        """What became of the input (summary.json's first keys; `segments diff` shows them)."""
        return {
            "events_read": self.events_read,
            "applied": self.applied,
            "duplicates": self.duplicates,
            "clock_marks": self.clock_marks,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
        }

    def summary(self) -> dict[str, Any]:
        by_segment: dict[str, dict[str, int]] = {}
        for (segment, kind), count in sorted(self.changes.items()):
            by_segment.setdefault(segment, {})[kind] = count
        return {
            **self.input_counts(),
            "changes": sum(self.changes.values()),
            "changes_by_segment": by_segment,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events_read / self.seconds) if self.seconds else None,
        }


def read_lines(source: str | Path) -> Iterator[bytes]:
    """Lines of a .jsonl or .jsonl.gz file, or of standard input for '-'."""
    if str(source) == "-":
        yield from sys.stdin.buffer
        return
    path = Path(source)
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as compressed:
            yield from compressed
    else:
        with path.open("rb") as plain:
            yield from plain


def replay(
    lines: Iterable[bytes],
    rules: CompiledRules,
    out_dir: Path,
    as_of: int | None = None,
    progress: Callable[[int], None] | None = None,
    wall: int | None = None,
    jobs: int = 1,
) -> ReplayResult:
    """Run the pipeline over input lines and write changes, memberships, trait changes, trait
    values, rejections and the summary.

    `wall`: the wall clock of the run; an event more than max_future_skew ahead
    of it is rejected (too_far_ahead), as the worker rejects it (SPEC section 2).
    `jobs` > 1 splits the customers over that many processes (segments.replay_jobs);
    the files written are byte for byte those of one job, but for the summary's timing.
    """
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    if jobs > 1:
        from segments.replay_jobs import replay_in_jobs

        result = replay_in_jobs(lines, rules, out_dir, jobs, as_of, wall)
        result.seconds = time.perf_counter() - started
        _write_summary(out_dir, result)
        return result
    with (
        (out_dir / "rejected.jsonl").open("wb") as rejected_file,
        (out_dir / "changes.jsonl").open("wb") as changes_file,
        (out_dir / "traits.jsonl").open("wb") as traits_file,
    ):
        write_change = changes_file.write
        write_trait = traits_file.write

        def on_change(change: Change, line_no: int | None) -> None:
            write_change(change.to_json() + b"\n")

        def on_trait(change: TraitChange, line_no: int | None) -> None:
            write_trait(change.to_json() + b"\n")

        def on_reject(record: bytes, line_no: int, instant: int | None) -> None:
            rejected_file.write(record)

        result, states = run(
            enumerate(lines, start=1),
            rules,
            on_change,
            on_reject,
            as_of,
            progress,
            wall,
            on_trait=on_trait,
        )
    memberships = states.memberships(s.name for s in rules.ruleset.segments)
    (out_dir / "memberships.json").write_bytes(
        orjson.dumps(memberships, option=orjson.OPT_INDENT_2)
    )
    write_trait_values(out_dir, states.trait_values(t.name for t in rules.ruleset.traits))
    result.seconds = time.perf_counter() - started
    _write_summary(out_dir, result)
    return result


def write_trait_values(out_dir: Path, values: dict[str, dict[str, str]]) -> None:
    """traits.json: {trait: {customer_id: value}}, ids sorted, customers without a value
    left out (as memberships.json lists members only); every trait of the rules is there."""
    (out_dir / "traits.json").write_bytes(
        orjson.dumps(values, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    )


def _write_summary(out_dir: Path, result: ReplayResult) -> None:
    (out_dir / "summary.json").write_bytes(
        orjson.dumps(result.summary(), option=orjson.OPT_INDENT_2)
    )


def run(
    numbered_lines: Iterable[tuple[int, bytes]],
    rules: CompiledRules,
    on_change: Callable[[Change, int | None], None],
    on_reject: Callable[[bytes, int, int | None], None],
    as_of: int | None = None,
    progress: Callable[[int], None] | None = None,
    wall: int | None = None,
    until: int | None = None,
    on_trait: Callable[[TraitChange, int | None], None] | None = None,
) -> tuple[ReplayResult, MemoryStates]:
    """Decode, order by time and apply (line number, line) pairs; the states at the end.

    `on_change(change, line)`: every change in the order applied; `line` is the input
    line of the event that caused it, None for a time-driven change. `on_trait`: the
    same for every trait change (None: they are dropped). `on_reject(record,
    line, instant)`: each rejected.jsonl record (with its newline), in the order
    written; `instant` is None for a line rejected when decoded, else the event's time.
    `until`: events and clock marks after this instant are read but not applied (nor
    counted as applied, duplicate or rejected): the state as it was at `until`.
    """
    # Millions of small, acyclic objects (states, Decimals) make the cyclic
    # collector rescan the heap over and over; reference counting frees them.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(
            numbered_lines, rules, on_change, on_reject, as_of, progress, wall, until, on_trait
        )
    finally:
        if gc_was_enabled:
            gc.enable()


def _run(
    numbered_lines: Iterable[tuple[int, bytes]],
    rules: CompiledRules,
    on_change: Callable[[Change, int | None], None],
    on_reject: Callable[[bytes, int, int | None], None],
    as_of: int | None,
    progress: Callable[[int], None] | None,
    wall: int | None,
    until: int | None = None,
    on_trait: Callable[[TraitChange, int | None], None] | None = None,
) -> tuple[ReplayResult, MemoryStates]:
    result = ReplayResult()
    ruleset = rules.ruleset
    currencies = frozenset((ruleset.base_currency, *ruleset.rates))

    def reject(line_no: int, raw: bytes, reason: str, message: str, instant: int | None) -> None:
        result.rejected[reason] += 1
        record = {
            "line": line_no,
            "reason": reason,
            "message": message,
            "raw": raw.decode("utf-8", "replace"),
        }
        on_reject(orjson.dumps(record) + b"\n", line_no, instant)

    # Decode everything first: input is applied in occurred_at order, ties in input order.
    # The raw bytes are not kept: a decoded event re-encodes for the rare rejection
    # after sorting, and a million raw lines would double the peak memory.
    timeline: list[tuple[int, int, Event | ClockMark]] = []
    for line_no, line in numbered_lines:
        raw = line.rstrip(b"\r\n")
        if not raw.strip():
            continue
        result.events_read += 1
        try:
            item = decode_event(raw, currencies)
        except Rejection as rejection:
            reject(line_no, raw, rejection.reason, rejection.message, None)
            continue
        instant = item.at if isinstance(item, ClockMark) else item.occurred_at
        timeline.append((instant, line_no, item))
        if progress is not None and line_no % 65536 == 0:
            progress(line_no)
    timeline.sort(key=_instant)

    counts = result.changes
    current_line: int | None = None

    def emit(changes: list[Change | TraitChange]) -> None:
        for change in changes:
            if isinstance(change, TraitChange):
                if on_trait is not None:
                    on_trait(change, current_line if change.event_id is not None else None)
                continue
            counts[(change.segment, change.change)] += 1
            # apply() first applies the deadlines due by the event (no event id), then it
            on_change(change, current_line if change.event_id is not None else None)

    states = MemoryStates(emit)
    engine = Engine(rules, states)
    advance = engine.advance
    apply = engine.apply
    for instant, line_no, item in timeline:
        if until is not None and instant > until:
            break  # the timeline is in time order: nothing later is applied
        if isinstance(item, ClockMark):
            result.clock_marks += 1
            advance(item.at)
            continue
        current_line = line_no
        try:
            apply(item, wall)
            result.applied += 1
        except DuplicateEvent:
            result.duplicates += 1
        except Rejection as rejection:
            reject(line_no, encode_event(item), rejection.reason, rejection.message, instant)
        current_line = None
    if as_of is not None:
        advance(as_of)
    return result, states


def _instant(entry: tuple[int, int, Event | ClockMark]) -> int:
    return entry[0]
