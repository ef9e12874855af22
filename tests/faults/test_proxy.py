"""The fault proxy itself: what each fault looks like to a client (no Kafka, no Redis)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.faults.proxy import TcpProxy

pytestmark = pytest.mark.faults


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except ConnectionResetError:  # the proxy cut the link: what refuse() is for
            pass


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with TcpProxy(("127.0.0.1", server.server_address[1])) as running:
        yield running
    server.shutdown()
    server.server_close()


def _connect(proxy: TcpProxy, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def _echo(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_forwards_both_ways(proxy: TcpProxy) -> None:
    with _connect(proxy) as sock:
        assert _echo(sock, b"x" * 200_000) == b"x" * 200_000
    assert proxy.stats.bytes_up == proxy.stats.bytes_down == 200_000


def test_latency_delays_each_direction(proxy: TcpProxy) -> None:
    proxy.latency = 0.2
    with _connect(proxy) as sock:
        started = time.monotonic()
        assert _echo(sock, b"ping") == b"ping"
        assert time.monotonic() - started >= 0.4  # 200 ms there, 200 ms back


def test_refuse_resets_open_connections_and_refuses_new_ones(proxy: TcpProxy) -> None:
    with _connect(proxy) as sock:
        assert _echo(sock, b"a") == b"a"
        proxy.refuse()
        with pytest.raises(OSError):
            _echo(sock, b"b")
            _echo(sock, b"c")  # a reset may surface on the second call
    with pytest.raises(ConnectionRefusedError):
        _connect(proxy)
    proxy.restore()
    with _connect(proxy) as sock:
        assert _echo(sock, b"d") == b"d"


def test_partition_holds_the_bytes_until_it_heals(proxy: TcpProxy) -> None:
    with _connect(proxy) as sock:
        assert _echo(sock, b"a") == b"a"
        proxy.partition()
        sock.sendall(b"held")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(10)  # nothing comes back, and nothing is refused
        proxy.heal()
        sock.settimeout(5)
        assert sock.recv(10) == b"held"
