"""Security under the suite's real processes: loopback sockets, the token, no table views,
the same limits on both lookup ports (SPEC section 6; issue 9 items 2 and 7)."""

from __future__ import annotations

import http.client
import os
import socket
import time
from pathlib import Path

import pytest

from tests.faults.harness import AS_OF, Product, http_status, make_backlog
from tests.helpers import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

TOKEN = "fault-suite-token"
LOOPBACK = "127.0.0.1"


def _process_tree(pid: int) -> list[int]:
    pids, index = [pid], 0
    while index < len(pids):
        task_dir = Path(f"/proc/{pids[index]}/task")
        for task in task_dir.iterdir() if task_dir.exists() else ():
            children = (task / "children").read_text().split()
            pids.extend(int(child) for child in children if int(child) not in pids)
        index += 1
    return pids


def _address(hex_address: str) -> tuple[str, int]:
    """/proc/net/tcp{,6} `local_address` (little-endian words in hex) -> (host, port)."""
    host_hex, port_hex = hex_address.split(":")
    raw = bytes.fromhex(host_hex)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port_hex, 16)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words), int(port_hex, 16)


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """Every TCP socket in LISTEN state held by `pid` or its children, as (host, port)."""
    found: set[tuple[str, int]] = set()
    for member in _process_tree(pid):
        inodes = set()
        for fd in Path(f"/proc/{member}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
        for table in ("tcp", "tcp6"):
            lines = Path(f"/proc/{member}/net/{table}").read_text().splitlines()[1:]
            for line in lines:
                fields = line.split()
                if fields[3] == "0A" and int(fields[9]) in inodes:  # 0A: LISTEN
                    found.add(_address(fields[1]))
    return found


def test_serve_listens_on_loopback_only(product: Product) -> None:
    serve = product.start_serve()
    sockets = listening_sockets(serve.pid)
    assert {port for _, port in sockets} >= {serve.port, product.lookup_port}, sockets
    assert {host for host, _ in sockets} == {LOOPBACK}, sockets


SERVE_ROUTES = (
    "/customers/c-0000001/segments",
    "/segments",
    "/segments/history",
    "/segments/vip/members",
    "/metrics",
    "/openapi.json",
)


def test_serve_answers_401_without_the_token(product: Product) -> None:
    """Every route but the health checks and the dashboard page, on the HTTP port and the
    checkout fast path. The page is static (no data): a browser cannot send a bearer token
    for the page it opens, so its script sends the token from the URL fragment."""
    product.base_env["SEGMENTS_API_TOKEN"] = TOKEN
    serve = product.start_serve()
    base = f"http://127.0.0.1:{serve.port}"
    fast = f"http://127.0.0.1:{product.lookup_port}"
    wrong = {"Authorization": "Bearer not-the-token"}
    right = {"Authorization": f"Bearer {TOKEN}"}
    answers = {}
    for url in [base + route for route in SERVE_ROUTES] + [fast + SERVE_ROUTES[0]]:
        answers[url] = (http_status(url), http_status(url, wrong), http_status(url, right))
    assert {url: a[:2] for url, a in answers.items() if a[:2] != (401, 401)} == {}
    assert {url: a[2] for url, a in answers.items() if a[2] != 200} == {}
    for route in ("/healthz", "/readyz", "/"):
        assert http_status(base + route) == 200


def test_worker_listens_on_loopback_only_and_shows_no_data_without_the_token(
    product: Product, tmp_path: Path
) -> None:
    """The worker's sockets are on 127.0.0.1; with a token set it has no table or routing
    views at all, and nothing but its health checks answers without the token."""
    backlog = make_backlog(tmp_path / "backlog", customers=50, seed=101, parts=1)
    product.base_env["SEGMENTS_API_TOKEN"] = TOKEN
    worker = product.start_worker()
    sockets = listening_sockets(worker.pid)
    assert worker.port in {port for _, port in sockets}, sockets
    assert {host for host, _ in sockets} == {LOOPBACK}, sockets
    product.produce(backlog.parts[0], AS_OF)
    wait_until(
        lambda: product.group_caught_up(product.app_id, product.topics.purchases),
        120,
        interval=0.5,
        what="the worker to process the backlog",
    )
    customer = backlog.reference.changes[0]["customer_id"]
    base = f"http://127.0.0.1:{worker.port}"
    right = {"Authorization": f"Bearer {TOKEN}"}
    views = ("/table/", "/table/customers/", f"/table/customers/{customer}/", "/router/")
    # No table or routing views at all, not even with the token.
    assert {view: http_status(base + view, right) for view in views} == dict.fromkeys(views, 404)
    # Whatever else Faust serves answers nothing without the token.
    for path in ("/", "/graph/", "/stats/", "/stats/assignment/", "/router/customers/"):
        assert http_status(base + path) in (401, 404), path
    assert (http_status(base + "/metrics"), http_status(base + "/metrics", right)) == (401, 200)
    for route in ("/healthz", "/readyz"):
        assert http_status(base + route) == 200, route


def _raw_get(port: int, target: str, headers: dict[str, str]) -> int:
    """One GET with the target sent as given (no quoting), so both ports see the same bytes."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("GET", target, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        return connection.getresponse().status
    except (ConnectionError, http.client.HTTPException):
        return 0  # closed without an answer
    finally:
        connection.close()


def test_lookup_limits_are_the_same_on_both_ports(product: Product) -> None:
    serve = product.start_serve()
    cases = {
        "id of 100,000 characters": ("/customers/" + "a" * 100_000 + "/segments", {}),
        "header of 20 KB": ("/customers/c-1/segments", {"X-Padding": "p" * 20_000}),
        "id of 129 characters": ("/customers/" + "b" * 129 + "/segments", {}),
    }
    answers = {
        name: (_raw_get(serve.port, target, h), _raw_get(product.lookup_port, target, h))
        for name, (target, h) in cases.items()
    }
    for name, (http_port, fast_port) in answers.items():
        assert http_port == fast_port, (name, answers)
    for name in ("id of 100,000 characters", "header of 20 KB"):
        assert 400 <= answers[name][0] < 500, (name, answers)
    # An id that is not UTF-8 names one customer, the same on both ports (or is refused
    # by both alike).
    invalid = "/customers/%FF%FEc-1/segments"
    started = time.monotonic()
    assert _raw_get(serve.port, invalid, {}) == _raw_get(product.lookup_port, invalid, {})
    assert time.monotonic() - started < 20
