"""`segments replay --jobs N`: customers split over processes, outputs merged as one job's.

Customers are independent: a customer's changes depend only on its own events and
on the instants it is stepped at, and in a replay those are its events' times (the
input is applied in time order, so the clock is always the current event's time),
its deadlines and the clock marks. So each job replays the customers whose
crc32(customer_id) mod N is its number, with every clock mark, and the parent merges:

- changes in the order one engine applies them: by `at`; at one instant the
  deadlines (by customer id, as the engine's queue pops them) before the events
  (by input line), and a step's changes in the order it made them;
- rejections as one job writes them: those of decoding in line order, then those
  of applying in time order (ties by line);
- trait changes (traits.jsonl) like changes;
- memberships as sorted lists, trait values as one mapping; the summary's counts added up.

Each job writes its outputs with their merge keys to a private folder under the
output folder; the parent merges them and removes the folder.
"""

from __future__ import annotations

import gc
import heapq
import multiprocessing
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from operator import itemgetter
from pathlib import Path
from typing import Any

import msgspec
import orjson

from segments.changes import Change, TraitChange
from segments.events import ClockMark, Rejection, decode_event
from segments.replay import ReplayResult, run, write_trait_values
from segments.rules.evaluator import CompiledRules

_KEY = itemgetter(0)


class _Routing(msgspec.Struct, gc=False):
    """The two fields that decide which jobs get a line; every other field is skipped."""

    customer_id: str | None = None
    type: str | None = None


_decode_routing = msgspec.json.Decoder(_Routing).decode


def job_of(customer_id: str, jobs: int) -> int:
    """The job that replays a customer: a hash that is the same in every process and run."""
    return zlib.crc32(customer_id.encode("utf-8", "surrogatepass")) % jobs


def replay_in_jobs(
    lines: Iterable[bytes],
    rules: CompiledRules,
    out_dir: Path,
    jobs: int,
    as_of: int | None,
    wall: int | None,
) -> ReplayResult:
    """Replay in `jobs` processes and write changes, memberships and rejections to `out_dir`.

    Returns the merged counts (the caller times the run and writes the summary).
    """
    work = Path(tempfile.mkdtemp(prefix=".replay-jobs-", dir=out_dir))
    try:
        events_read, clock_marks = _split(lines, rules, work, jobs)
        context = multiprocessing.get_context("fork")  # the children inherit the compiled rules
        processes = [
            context.Process(target=_job, args=(work, number, rules, as_of, wall), daemon=True)
            for number in range(jobs)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        failed = [n for n, p in enumerate(processes) if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"replay job(s) {failed} failed; see the error output above")
        return _merge(work, out_dir, jobs, rules, events_read, clock_marks)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _split(lines: Iterable[bytes], rules: CompiledRules, work: Path, jobs: int) -> tuple[int, int]:
    """Write each job's input lines, prefixed with their line numbers. Clock marks go to
    every job; a line whose customer cannot be told goes to job 0, which rejects it."""
    ruleset = rules.ruleset
    currencies = frozenset((ruleset.base_currency, *ruleset.rates))
    targets = [(work / f"input-{n}").open("wb") for n in range(jobs)]
    writes = [target.write for target in targets]
    everyone = range(jobs)
    events_read = clock_marks = 0
    try:
        for line_no, line in enumerate(lines, start=1):
            raw = line.rstrip(b"\r\n")
            if not raw.strip():
                continue
            events_read += 1
            record = b"%d\t%s\n" % (line_no, raw)
            try:
                routing = _decode_routing(raw)
                customer_id, kind = routing.customer_id, routing.type
            except (msgspec.MsgspecError, ValueError):
                customer_id = kind = None
            if kind == "clock" or customer_id is None:
                # rare: decode in full to know whether it is a clock mark, an event or neither
                try:
                    item = decode_event(raw, currencies)
                except Rejection:
                    writes[0](record)
                    continue
                if isinstance(item, ClockMark):
                    clock_marks += 1
                    for number in everyone:
                        writes[number](record)
                    continue
                customer_id = item.customer_id
            writes[job_of(customer_id, jobs)](record)
    finally:
        for target in targets:
            target.close()
    return events_read, clock_marks


def _numbered(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as source:
        for record in source:
            line_no, raw = record.split(b"\t", 1)
            yield int(line_no), raw


def _job(
    work: Path, number: int, rules: CompiledRules, as_of: int | None, wall: int | None
) -> None:
    """One job: replay its lines and write its outputs with their merge keys."""
    gc.disable()
    with (
        (work / f"changes-{number}").open("wb") as changes_file,
        (work / f"rejected-{number}").open("wb") as rejected_file,
        (work / f"traits-{number}").open("wb") as traits_file,
    ):
        write_change = changes_file.write
        write_trait = traits_file.write
        write_rejected = rejected_file.write
        dumps = orjson.dumps

        def on_change(change: Change, line_no: int | None) -> None:
            if line_no is None:  # a deadline: ordered by customer id at its instant
                write_change(
                    b"%d\t0\t%s\t%s\n" % (change.at, dumps(change.customer_id), change.to_json())
                )
            else:
                write_change(b"%d\t1\t%d\t%s\n" % (change.at, line_no, change.to_json()))

        def on_trait(change: TraitChange, line_no: int | None) -> None:
            if line_no is None:
                write_trait(
                    b"%d\t0\t%s\t%s\n" % (change.at, dumps(change.customer_id), change.to_json())
                )
            else:
                write_trait(b"%d\t1\t%d\t%s\n" % (change.at, line_no, change.to_json()))

        def on_reject(record: bytes, line_no: int, instant: int | None) -> None:
            if instant is None:
                write_rejected(b"0\t0\t%d\t%s" % (line_no, record))
            else:
                write_rejected(b"1\t%d\t%d\t%s" % (instant, line_no, record))

        result, states = run(
            _numbered(work / f"input-{number}"),
            rules,
            on_change,
            on_reject,
            as_of,
            None,
            wall,
            on_trait=on_trait,
        )
    memberships = states.memberships(s.name for s in rules.ruleset.segments)
    trait_values = states.trait_values(t.name for t in rules.ruleset.traits)
    (work / f"trait-values-{number}.json").write_bytes(orjson.dumps(trait_values))
    counts = {
        "applied": result.applied,
        "duplicates": result.duplicates,
        "rejected": list(result.rejected.items()),
        "changes": [[segment, kind, n] for (segment, kind), n in result.changes.items()],
    }
    (work / f"memberships-{number}.json").write_bytes(orjson.dumps(memberships))
    (work / f"counts-{number}.json").write_bytes(orjson.dumps(counts))


def _keyed_changes(path: Path) -> Iterator[tuple[tuple[Any, ...], bytes]]:
    loads = orjson.loads
    with path.open("rb") as source:
        for record in source:
            at, kind, tie, body = record.split(b"\t", 3)
            if kind == b"0":
                yield (int(at), 0, loads(tie)), body
            else:
                yield (int(at), 1, int(tie)), body


def _keyed_rejections(path: Path) -> Iterator[tuple[tuple[int, int, int], bytes]]:
    with path.open("rb") as source:
        for record in source:
            phase, instant, line_no, body = record.split(b"\t", 3)
            yield (int(phase), int(instant), int(line_no)), body


def _merge(
    work: Path,
    out_dir: Path,
    jobs: int,
    rules: CompiledRules,
    events_read: int,
    clock_marks: int,
) -> ReplayResult:
    result = ReplayResult(events_read=events_read, clock_marks=clock_marks)
    numbers = range(jobs)
    with (out_dir / "changes.jsonl").open("wb") as target:
        target.writelines(
            body
            for _, body in heapq.merge(
                *(_keyed_changes(work / f"changes-{n}") for n in numbers), key=_KEY
            )
        )
    with (out_dir / "traits.jsonl").open("wb") as target:
        target.writelines(
            body
            for _, body in heapq.merge(
                *(_keyed_changes(work / f"traits-{n}") for n in numbers), key=_KEY
            )
        )
    with (out_dir / "rejected.jsonl").open("wb") as target:
        target.writelines(
            body
            for _, body in heapq.merge(
                *(_keyed_rejections(work / f"rejected-{n}") for n in numbers), key=_KEY
            )
        )
    memberships: dict[str, list[str]] = {s.name: [] for s in rules.ruleset.segments}
    trait_values: dict[str, dict[str, str]] = {t.name: {} for t in rules.ruleset.traits}
    for n in numbers:
        for trait, values in orjson.loads((work / f"trait-values-{n}.json").read_bytes()).items():
            trait_values[trait].update(values)
        for segment, members in orjson.loads((work / f"memberships-{n}.json").read_bytes()).items():
            memberships[segment].extend(members)
        counts = orjson.loads((work / f"counts-{n}.json").read_bytes())
        result.applied += counts["applied"]
        result.duplicates += counts["duplicates"]
        for reason, count in counts["rejected"]:
            result.rejected[reason] += count
        for segment, kind, count in counts["changes"]:
            result.changes[(segment, kind)] += count
    for members in memberships.values():
        members.sort()
    (out_dir / "memberships.json").write_bytes(
        orjson.dumps(memberships, option=orjson.OPT_INDENT_2)
    )
    write_trait_values(out_dir, trait_values)
    return result
