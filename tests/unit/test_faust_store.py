"""streams.worker.faust_store over a real Faust app and RocksDB store, with no broker.

It reads Faust's private attributes (`store._db_for_partition`,
`store._visible_items`, `consumer._committed_offset`); these tests fail when
an upgrade renames or reshapes them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faust.types import TP

from streams.settings import Settings, load_settings
from streams.worker.app import create_app
from streams.worker.faust_store import FaustCustomerTable, committed_offsets

pytestmark = pytest.mark.unit


def config(data_dir: Path) -> Settings:
    return load_settings(
        env_file=None,
        kafka_bootstrap="127.0.0.1:1",  # never connected
        clock="event",
        topic_prefix="t.",
        app_id="faust-store-test",
        partitions=2,
        data_dir=data_dir,
        web_port=6066,  # never bound: the app is not started
    )


def test_partition_items_lists_only_that_partitions_keys(tmp_path: Path) -> None:
    segments_app = create_app(config(tmp_path))
    store = segments_app.customers.data
    # Faust's RocksDB store writes to the database of the partition being handled.
    store._db_for_partition(0)[b"c-1"] = b"one"
    store._db_for_partition(1)[b"c-2"] = b"two"
    table = FaustCustomerTable(segments_app.customers)
    assert list(table.partition_items(0)) == [(b"c-1", b"one")]
    assert list(table.partition_items(1)) == [(b"c-2", b"two")]


def test_committed_offsets_reads_the_consumers_bookkeeping(tmp_path: Path) -> None:
    segments_app = create_app(config(tmp_path))
    app = segments_app.app
    committed = committed_offsets(app, "t.purchases")
    assert committed(0) is None
    app.consumer._committed_offset[TP("t.purchases", 0)] = 42
    assert committed(0) == 42
