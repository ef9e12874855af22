"""A lost message at a partition's head: Faust's commit stalls, the fixed consumer fetches it again.

The race that loses a delivered message (faust-streaming#596; see
streams/worker/faust_fixes.py) is forced: a bare Faust app on the worker's fixed App,
whose consumer hands two messages of partition 0 to nobody once, the way an
emptied queue loses them (read by the fetcher, never processed, never
acknowledged). Without healing the partition's committed offset stays in front
of them for good; with it they are processed and the partition is committed to
its end. The unit tests of the decision are in tests/unit/test_faust_fixes.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from tests.helpers import wait_until
from tests.integration.conftest import CreateTopics
from tests.integration.worker_harness import WorkerProcess, committed_offsets, end_offsets

pytestmark = pytest.mark.slow

LOSING_APP = '''
"""A bare Faust app on the worker's App that forwards purchases and loses some messages once."""
import os

from streams.worker.faust_fixes import App, HeadGapHealingConsumer
from streams.settings import load_settings

settings = load_settings(env_file=None)
LOSE = {int(offset) for offset in os.environ["HEAD_GAP_LOSE"].split(",") if offset}  # partition 0
DROP_COMMIT_OF = os.environ.get("DROP_FIRST_COMMIT_OF")  # a partition whose first commit is lost


class LosingConsumer(HeadGapHealingConsumer):
    head_gap_grace = 1.0 if os.environ["HEAD_GAP_HEAL"] == "1" else None
    if "COMMIT_CHECK" in os.environ:
        commit_check_interval = float(os.environ["COMMIT_CHECK"]) or None
    dropped = False

    async def _commit(self, offsets):
        if DROP_COMMIT_OF is not None and not self.dropped and any(
            tp.partition == int(DROP_COMMIT_OF) for tp in offsets
        ):
            self.dropped = True
            print("commit_dropped", flush=True)  # the app's log, which the test reads
            return False  # as the driver answers a CommitFailedError "already rebalanced"
        return await super()._commit(offsets)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        deliver, pending = self.callback, set(LOSE)

        async def callback(message):
            if message.tp.partition == 0 and message.offset in pending:
                pending.discard(message.offset)  # fetched, then given to nobody
                return
            await deliver(message)

        self.callback = callback


class LosingApp(App):
    consumer_class = LosingConsumer


app = LosingApp(
    settings.app_id,
    broker=settings.faust_broker,
    topic_partitions=settings.partitions,
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
    broker_commit_interval=0.2,
    web_enabled=False,
    datadir=str(settings.data_dir),
)
purchases = app.topic(
    settings.topics.purchases, key_type=str, value_type=str,
    key_serializer="raw", value_serializer="raw",
)
forwarded = app.topic(
    settings.topics.segment_changes, key_type=str, value_type=str,
    key_serializer="raw", value_serializer="raw",
)


@app.agent(purchases)
async def forward(stream):
    async for event in stream.events():
        message = event.message
        await forwarded.send(key=f"{message.partition}:{message.offset}", value=event.value)


if __name__ == "__main__":
    app.main()
'''

#: Offsets 0 and 1 of partition 0 are committed first, so the partition has a committed offset.
HEAD = 2
MESSAGES = 10


class Run:
    """One losing app against this test's topics: produce, watch what it forwarded and committed."""

    def __init__(self, env: dict[str, str], bootstrap: str, purchases: str, forwarded: str):
        self.env, self.bootstrap, self.purchases = env, bootstrap, purchases
        self.group = env["SEGMENTS_APP_ID"]
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        self.reader = KafkaConsumer(
            forwarded, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )
        self.seen: set[str] = set()
        self.worker: WorkerProcess | None = None

    def send(self, partition: int, offsets: range) -> None:
        for offset in offsets:
            self.producer.send(self.purchases, value=b"m-%d" % offset, partition=partition)
        self.producer.flush()

    def forwarded(self, *keys: str) -> bool:
        for batch in self.reader.poll(timeout_ms=200).values():
            self.seen.update(record.key.decode() for record in batch)
        return self.seen.issuperset(keys)

    def committed(self, partition: int) -> int:
        return committed_offsets(self.bootstrap, self.group, self.purchases).get(partition, -1)

    def wait(self, condition: object, timeout: float, what: str) -> None:
        try:
            wait_until(condition, timeout, interval=0.1, what=what)  # type: ignore[arg-type]
        except AssertionError as error:
            assert self.worker is not None
            raise AssertionError(
                f"{error}; forwarded {sorted(self.seen)}; committed "
                f"{committed_offsets(self.bootstrap, self.group, self.purchases)} of "
                f"{end_offsets(self.bootstrap, self.purchases)}\n{self.worker.tail()}"
            ) from None

    def start_losing(
        self, lose: list[int], heal: bool, log: Path, env: dict[str, str] | None = None
    ) -> None:
        """Starts the app, gets offsets below HEAD committed, then sends the rest of partition 0."""
        self.worker = WorkerProcess(
            {
                **self.env,
                "HEAD_GAP_LOSE": ",".join(map(str, lose)),
                "HEAD_GAP_HEAL": str(+heal),
                **(env or {}),
            },
            log,
            arguments=(str(log.parent / "losing_app.py"), "worker", "--without-web", "-l", "info"),
        ).start()
        self.send(0, range(HEAD))
        self.wait(lambda: self.committed(0) == HEAD, 90, f"partition 0 committed at {HEAD}")
        self.send(0, range(HEAD, MESSAGES))

    def close(self) -> None:
        # A clean stop leaves the consumer group, so the test's teardown can delete it.
        if self.worker is not None:
            try:
                self.worker.stop()
            finally:
                self.worker.kill()
        self.producer.close()
        self.reader.close()


@pytest.fixture
def run(
    kafka_bootstrap: str, create_topics: CreateTopics, segments_env: dict[str, str], tmp_path: Path
) -> Iterator[Run]:
    assert segments_env["SEGMENTS_PARTITIONS"] == "2"
    [purchases] = create_topics("purchases", partitions=2)
    [forwarded] = create_topics("segment-changes")
    (tmp_path / "losing_app.py").write_text(LOSING_APP)
    run = Run(segments_env, kafka_bootstrap, purchases, forwarded)
    try:
        yield run
    finally:
        run.close()


def test_without_healing_two_lost_messages_hold_the_committed_offset(
    run: Run, tmp_path: Path
) -> None:
    run.start_losing([HEAD, HEAD + 1], heal=False, log=tmp_path / "worker.log")
    later = [f"0:{offset}" for offset in range(HEAD + 2, MESSAGES)]
    run.wait(lambda: run.forwarded(*later), 60, "the messages after the lost ones forwarded")
    # A message on partition 1, sent after those were acknowledged, committed: a commit
    # round ran with partition 0's acknowledgements in hand and left it where it was.
    run.send(1, range(1))
    run.wait(lambda: run.committed(1) == 1, 60, "partition 1 committed")
    assert run.committed(0) == HEAD
    assert not run.seen & {f"0:{HEAD}", f"0:{HEAD + 1}"}


@pytest.mark.parametrize(
    "lose",
    [[HEAD, HEAD + 1], [HEAD], [MESSAGES - 2, MESSAGES - 1]],
    ids=["two-lost", "one-lost", "lost-tail"],
)
def test_lost_messages_at_the_head_are_fetched_again(
    run: Run, tmp_path: Path, lose: list[int]
) -> None:
    # One lost message is the case Faust alone commits over (faust-streaming#606); a
    # lost tail has no acknowledged message after it, only delivered ones.
    run.start_losing(lose, heal=True, log=tmp_path / "worker.log")
    everything = [f"0:{offset}" for offset in range(MESSAGES)]
    run.wait(lambda: run.forwarded(*everything), 60, "every message forwarded")
    run.wait(lambda: run.committed(0) == MESSAGES, 60, "partition 0 committed to its end")
    assert run.worker is not None
    assert "head_gap_refetch" in run.worker.log_text()


@pytest.mark.parametrize("checked", [False, True], ids=["faust-alone", "commit-check"])
def test_a_commit_faust_counts_but_the_broker_lacks_is_made_again(
    run: Run, tmp_path: Path, checked: bool
) -> None:
    """Faust records a commit that returned False as done (streams/worker/faust_fixes.py):
    the first commit of partition 1 is lost that way, then nothing is left to commit."""
    env = {"DROP_FIRST_COMMIT_OF": "1", "COMMIT_CHECK": "1" if checked else "0"}
    run.start_losing([], heal=True, log=tmp_path / "worker.log", env=env)
    run.wait(lambda: run.committed(0) == MESSAGES, 60, "partition 0 committed to its end")
    run.send(1, range(1))
    run.wait(lambda: run.forwarded("1:0"), 60, "the message of partition 1 forwarded")
    if checked:
        run.wait(lambda: run.committed(1) == 1, 60, "partition 1 committed")
        assert run.worker is not None
        assert "lost_commit_recommitted" in run.worker.log_text()
    else:
        # Commit rounds go on (partition 0's next messages, sent after the lost commit,
        # are committed) and leave partition 1 where the broker has it: nothing.
        assert run.worker is not None
        worker = run.worker
        run.wait(lambda: "commit_dropped" in worker.log_text(), 60, "the commit dropped")
        run.send(0, range(MESSAGES, MESSAGES + 2))
        run.wait(lambda: run.committed(0) == MESSAGES + 2, 60, "partition 0's next committed")
        assert run.committed(1) == -1
