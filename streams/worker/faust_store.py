"""The customers table and the committed offsets as the processor sees them, over Faust.

Besides streams.worker.faust_fixes, this is the one module that reads Faust's
private attributes; each use says why, and tests/unit/test_faust_store.py
fails when Faust renames or reshapes one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from faust.types import TP


class FaustCustomerTable:
    """`streams.worker.processor.CustomerTable` over a Faust table with a RocksDB store."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.table.get(key)
        return value

    def write(self, partition: int, key: bytes, value: bytes) -> None:
        # A flush runs outside any event (at a commit), where Faust's table would not
        # know the partition: the value goes to the partition's database directly, and
        # the shell sends its changelog record (streams.worker.agents.send_flush).
        store = self.table.data
        store._key_index[key] = partition
        store._db_for_partition(partition).put(key, value)

    def persisted(self, partition: int, offset: int) -> None:
        """The changelog has the table's records up to `offset` of `partition` (what Faust
        records after each changelog send, so recovery starts after it)."""
        self.table.data.set_persisted_offset(TP(self.changelog_topic, partition), offset)

    @property
    def changelog_topic(self) -> str:
        name: str = self.table.changelog_topic.get_topic_name()
        return name

    def partition_items(self, partition: int) -> Iterable[tuple[bytes, bytes]]:
        # Faust's RocksDB store keeps one database per partition, but lists keys
        # only across all of them; reading the partition's database directly is
        # the only way to list one partition's keys without a full scan.
        store = self.table.data
        items: Iterable[tuple[bytes, bytes]] = store._visible_items(
            store._db_for_partition(partition)
        )
        return items


def committed_offsets(app: Any, topic: str) -> Callable[[int], int | None]:
    """The consumer's last committed offset of `topic`'s partition, None before any.

    Faust keeps it in a private dict and offers no public accessor; it flushes
    the producer before each commit, which is what the processor relies on.
    """

    def committed(partition: int) -> int | None:
        offset = app.consumer._committed_offset.get(TP(topic, partition))
        return None if offset is None else int(offset)

    return committed
