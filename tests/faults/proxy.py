"""A TCP proxy for fault injection: forwards a port to a server and breaks the link on demand.

It runs an asyncio loop in a daemon thread, so a synchronous test drives it with plain
method calls while real processes talk through it:

    with TcpProxy(upstream=("127.0.0.1", 6379)) as proxy:   # listens on proxy.port
        proxy.refuse()       # connections refused, open ones cut (the server is down)
        proxy.restore()
        proxy.partition()    # nothing passes, nothing is refused: packets lost, TCP waits
        proxy.heal()         # what was held is delivered, as TCP retransmission would
        proxy.latency = 0.2  # every chunk, each way, arrives 200 ms later

Faults are modelled on what the product meets in production: a stopped server refuses
and resets; a partition neither refuses nor resets, the peers just stop hearing each
other until the link heals or their own timeouts give up; latency delays but reorders
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class ProxyStats:
    accepted: int = 0  # client connections accepted
    refused: int = 0  # connections cut or refused by refuse()
    bytes_up: int = 0  # client -> server
    bytes_down: int = 0  # server -> client


class TcpProxy:
    """Forwards `listen` (default: a free port on 127.0.0.1) to `upstream`."""

    def __init__(self, upstream: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0)):
        self.upstream = upstream
        self.host, self.port = listen
        self.stats = ProxyStats()
        self._latency = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None  # cleared during a partition
        self._links: set[_Link] = set()

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._init())
        self._call(self._listen())
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # --- controls ------------------------------------------------------------------------

    def refuse(self) -> None:
        """Stop listening and reset every open connection: the server is gone."""
        self._call(self._refuse())

    def restore(self) -> None:
        """Listen again after refuse(); new connections reach the server."""
        self._call(self._listen())

    def partition(self) -> None:
        """Hold every byte in both directions and forward no new connection."""
        self._call(self._set_flowing(False))

    def heal(self) -> None:
        """End a partition: what was held is delivered, in order."""
        self._call(self._set_flowing(True))

    @property
    def latency(self) -> float:
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        """Delay added to every chunk in each direction (so a round trip gains twice this)."""
        self._latency = max(0.0, seconds)

    @property
    def connections(self) -> int:
        """Connections open through the proxy now."""
        return len(self._links)

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        self.refuse()
        try:
            yield
        finally:
            self.restore()

    @contextlib.contextmanager
    def partitioned(self) -> Iterator[None]:
        self.partition()
        try:
            yield
        finally:
            self.heal()

    # --- the loop side -------------------------------------------------------------------

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _init(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        try:
            self._server = await asyncio.start_server(
                self._accept, self.host, self.port, reuse_address=True
            )
        except OSError as error:
            raise RuntimeError(
                f"the fault proxy cannot listen on {self.host}:{self.port} "
                f"(to {self.upstream[0]}:{self.upstream[1]}): {error}"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]

    async def _refuse(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for link in list(self._links):
            self.stats.refused += 1
            link.abort()
            if link.runner is not None:
                link.runner.cancel()  # also one still waiting for a partition to heal

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _shutdown(self) -> None:
        await self._refuse()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        link = _Link(self, writer)
        link.runner = asyncio.current_task()
        self._links.add(link)
        try:
            await link.run(reader)
        except asyncio.CancelledError:
            pass  # cut by refuse(); asyncio's server logs a cancelled handler as an error
        finally:
            self._links.discard(link)


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, proxy: TcpProxy, client: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.writers: list[asyncio.StreamWriter] = [client]
        self.tasks: list[asyncio.Task[None]] = []
        self.runner: asyncio.Task[Any] | None = None

    def abort(self) -> None:
        for writer in self.writers:
            with contextlib.suppress(Exception):
                # SO_LINGER 0: the peer gets a reset, as from a server that died.
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()

    async def run(self, client_reader: asyncio.StreamReader) -> None:
        flowing = self.proxy._flowing
        assert flowing is not None
        client = self.writers[0]
        try:
            await flowing.wait()  # during a partition a new connection hears nothing
            server_reader, server = await asyncio.open_connection(*self.proxy.upstream)
        except (OSError, asyncio.CancelledError):
            self.abort()
            return
        self.writers.append(server)
        self.tasks = [
            asyncio.create_task(self._pipe(client_reader, server, up=True)),
            asyncio.create_task(self._pipe(server_reader, client, up=False)),
        ]
        await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        self.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool
    ) -> None:
        proxy = self.proxy
        flowing = proxy._flowing
        assert flowing is not None
        # Chunks wait in this queue for their delivery time, so added latency delays each
        # chunk by the same amount without reordering or throttling the stream.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # the injected latency itself
                await flowing.wait()
                if not data:
                    writer.write_eof() if writer.can_write_eof() else writer.close()
                    return
                writer.write(data)
                await writer.drain()

        delivery = asyncio.create_task(deliver())
        try:
            while True:
                await flowing.wait()
                data = await reader.read(65536)
                if up:
                    proxy.stats.bytes_up += len(data)
                else:
                    proxy.stats.bytes_down += len(data)
                queue.put_nowait((time.monotonic() + proxy.latency, data))
                if not data:
                    break
            await delivery
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            delivery.cancel()
