"""The worker's web server: only on the configured host, bearer token, no table or router views.

Issue 9, defect 2: it listened on 0.0.0.0 with no token, and Faust's
/table/customers/<id>/ served a customer's order ids, amounts and memberships.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.worker_harness import (
    produce,
    running_workers,
    wait_drained,
)

pytestmark = pytest.mark.slow

TOKEN = "worker-test-token"


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket the process `pid` listens on, IPv4 and IPv6.

    /proc/<pid>/net/tcp lists the whole network namespace, so a socket counts
    only when its inode is one of the process's open file descriptors.
    """
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        with open(f"/proc/{pid}/net/{table}") as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A" or inode not in inodes:  # 0A: LISTEN
                    continue
                address, port = local.split(":")
                assert len(address) == width
                found.append((_address(address), int(port, 16)))
    return found


def _address(hex_address: str) -> str:
    """/proc's hex notation (little-endian words) to text; IPv6 only as far as tests need."""
    if len(hex_address) == 8:
        return ".".join(str(int(hex_address[i : i + 2], 16)) for i in (6, 4, 2, 0))
    words = [hex_address[i : i + 8] for i in range(0, 32, 8)]
    raw = b"".join(bytes.fromhex(word)[::-1] for word in words)
    if raw == bytes(15) + b"\x01":
        return "::1"
    if raw == bytes(16):
        return "::"
    return raw.hex()


def status(port: int, path: str, token: str | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_worker_listens_on_loopback_only_requires_its_token_and_serves_no_tables(
    segments_env: dict[str, str], topics: object, tmp_path: Path
) -> None:
    env = {**segments_env, "SEGMENTS_API_TOKEN": TOKEN, "SEGMENTS_CLOCK": "event"}
    env.pop("SEGMENTS_WEB_HOST", None)  # the default: 127.0.0.1
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        b'{"event_id": "e1", "customer_id": "c-1", "occurred_at": "2025-03-01T10:00:00Z",'
        b' "channel": "pos", "currency": "EUR", "total": "99.00"}\n'
    )
    produce(env, events)
    with running_workers(env, tmp_path) as (worker,):
        worker.wait_ready()  # /readyz answers without the token
        wait_drained(
            env["SEGMENTS_KAFKA_BOOTSTRAP"],
            env["SEGMENTS_APP_ID"],
            topics.purchases,  # type: ignore[attr-defined]
            workers=(worker,),
        )
        sockets = listening_addresses(worker.pid)
        assert (("127.0.0.1", worker.port)) in sockets
        assert all(address == "127.0.0.1" for address, _ in sockets), sockets

        # Faust's built-in views are not served at all, even with the token.
        for path in ("/table/", "/table/customers/", "/table/customers/c-1/", "/router/"):
            assert status(worker.port, path, TOKEN) == 404, path
        for path in ("/router/customers/c-1/", "/stats/", "/graph/", "/performance/"):
            assert status(worker.port, path, TOKEN) == 404, path

        assert status(worker.port, "/metrics") == 401
        assert status(worker.port, "/metrics", "wrong") == 401
        assert status(worker.port, "/metrics", TOKEN) == 200
        assert status(worker.port, "/table/customers/c-1/") == 401
        assert status(worker.port, "/healthz") == 200
        assert status(worker.port, "/readyz") == 200
        assert worker.stop() == 0
