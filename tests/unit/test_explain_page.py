"""The worker's explain routing: which partition holds a customer, which worker owns it."""

from __future__ import annotations

import pytest
from kafka.partitioner.default import DefaultPartitioner
from yarl import URL

from streams.worker.explain_page import customer_partition, owner_of, same_worker

pytestmark = pytest.mark.unit


def test_the_partition_is_the_one_segments_produce_sends_the_customer_to() -> None:
    # `segments produce` keys by customer id with kafka-python's default (murmur2) partitioner
    partitioner = DefaultPartitioner()
    for partitions in (1, 2, 8, 12):
        every = list(range(partitions))
        for number in range(200):
            customer_id = f"c-{number}"
            expected = partitioner(customer_id.encode(), every, every)
            assert customer_partition(customer_id, partitions) == expected
    assert {customer_partition(f"c-{n}", 8) for n in range(200)} == set(range(8))


def test_the_owner_is_the_worker_whose_assignment_holds_the_changelog_partition() -> None:
    assignment = {
        "http://10.0.0.1:6066": {"app-customers-changelog": [0, 2], "other": [1]},
        "http://10.0.0.2:6066": {"app-customers-changelog": [1, 3]},
    }
    assert owner_of(assignment, "app-customers-changelog", 1) == URL("http://10.0.0.2:6066")
    assert owner_of(assignment, "app-customers-changelog", 2) == URL("http://10.0.0.1:6066")
    assert owner_of(assignment, "app-customers-changelog", 4) is None  # being reassigned
    assert owner_of({}, "app-customers-changelog", 0) is None
    assert same_worker(URL("http://10.0.0.1:6066"), URL("http://10.0.0.1:6066/"))
    assert not same_worker(URL("http://10.0.0.1:6066"), URL("http://10.0.0.1:6067"))


def test_the_advertised_host_is_reachable_by_other_workers() -> None:
    import socket

    from streams.worker.web import advertised_host, faust_web_settings

    assert advertised_host("127.0.0.1", None) == "127.0.0.1"
    assert advertised_host("0.0.0.0", None) == socket.gethostname()
    assert advertised_host("::", "10.1.2.3") == "10.1.2.3"
    web = faust_web_settings("0.0.0.0", 6066, None, "10.1.2.3")
    assert (web["web_bind"], web["web_host"], web["web_port"]) == ("0.0.0.0", "10.1.2.3", 6066)
