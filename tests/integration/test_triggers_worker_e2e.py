"""End to end: purchases -> real worker (wall clock) -> `segments serve` -> lookup and webhooks.

The two jobs that depend on serving, proven on real processes: a VIP is answered at the
checkout lookup moments after the purchase that made it one, and a time-driven change
calls its webhook once, within two seconds of its due instant.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from kafka import KafkaProducer

from segments.clock import parse_instant
from tests.helpers import wait_for
from tests.integration.worker_harness import (
    REPO_ROOT,
    committed_offsets,
    free_port,
    running_workers,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# vip is event-driven; small_buyer's exit is held back 5 s by min_dwell, so a customer
# whose only order is refunded leaves by time, 5 s after entering: a wall-clock deadline.
RULES = """\
version: 1
base_currency: EUR
segments:
  - name: vip
    when: orders() >= 2
  - name: small_buyer
    when: orders() >= 1
    min_dwell: 5s
triggers:
  - name: welcome-vip
    segment: vip
    on: entered
    webhook: {base}/hooks/vip
  - name: goodbye
    segment: small_buyer
    on: exited
    webhook: {base}/hooks/goodbye
"""


def event(event_id: str, customer: str, kind: str = "purchase", **extra: str) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "customer_id": customer,
            "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "channel": "pos",
            "type": kind,
            "currency": "EUR",
            "total": "40.00",
            **extra,
        }
    )


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):  # HTTPError: a 503
        return False


def test_worker_to_lookup_and_webhooks(segments_env, topics, tmp_path: Path) -> None:
    async def main() -> None:
        calls: list[tuple[str, dict, str, float]] = []

        async def hook(request: web.Request) -> web.Response:
            body = await request.json()
            calls.append((request.path, body, request.headers["Idempotency-Key"], time.time()))
            return web.Response(status=204)

        receiver = web.Application()
        receiver.router.add_post("/hooks/{name}", hook)
        runner = web.AppRunner(receiver)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        rules = tmp_path / "rules.yaml"
        rules.write_text(RULES.format(base=base))
        env = {**segments_env, "SEGMENTS_CLOCK": "wall", "SEGMENTS_RULES": str(rules)}
        bootstrap = env["SEGMENTS_KAFKA_BOOTSTRAP"]
        web_port, lookup_port = free_port(), free_port()
        serve = None
        serve_log = (tmp_path / "serve.log").open("wb")
        try:
            with running_workers(env, tmp_path) as (worker,):
                await asyncio.to_thread(worker.wait_ready)
                serve = subprocess.Popen(
                    [sys.executable, "-m", "streams", "serve", "--lookup-port", str(lookup_port)],
                    env={**os.environ, **env, "SEGMENTS_WEB_PORT": str(web_port)},
                    cwd=REPO_ROOT,
                    stdout=serve_log,
                    stderr=subprocess.STDOUT,
                )
                group = f"{env['SEGMENTS_APP_ID']}-triggers"

                def dispatcher_positioned() -> bool:
                    assert serve.poll() is None, (tmp_path / "serve.log").read_text()
                    return bool(committed_offsets(bootstrap, group, topics.segment_changes))

                await wait_for(
                    lambda: asyncio.to_thread(dispatcher_positioned), 60, "dispatcher start"
                )

                def serve_ready() -> bool:
                    # Until its cache sink has built the cache from segment-memberships,
                    # serve answers 503 cache-rebuilding on both ports (decision 0004).
                    assert serve.poll() is None, (tmp_path / "serve.log").read_text()
                    return all(ready(port) for port in (web_port, lookup_port))

                await wait_for(lambda: asyncio.to_thread(serve_ready), 60, "serve /readyz")
                producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
                for value in (
                    event("v-1", "c-vip"),
                    event("v-2", "c-vip"),
                    event("s-1", "c-small"),
                    event("s-r", "c-small", "return", original_event_id="s-1"),
                ):
                    key = orjson.loads(value)["customer_id"].encode()
                    producer.send(topics.purchases, key=key, value=value)
                producer.flush()
                producer.close()

                async with aiohttp.ClientSession() as http:

                    async def lookup(port: int, customer: str) -> list[str] | None:
                        url = f"http://127.0.0.1:{port}/customers/{customer}/segments"
                        async with http.get(url) as response:
                            if response.status == 503:  # ask again, as Retry-After says
                                assert response.headers["Retry-After"] == "1"
                                return None
                            assert response.status == 200
                            return [s["name"] for s in (await response.json())["segments"]]

                    async def vip_at_checkout() -> bool:
                        return await lookup(lookup_port, "c-vip") == ["small_buyer", "vip"]

                    await wait_for(vip_at_checkout, 60, "c-vip to be VIP at the checkout lookup")

                    # Both ports answer the same; a 503 (cache being checked or rebuilt,
                    # Retry-After: 1) is retried, as a client following the contract does.
                    async def vip_on_http() -> bool:
                        return await lookup(web_port, "c-vip") == ["small_buyer", "vip"]

                    await wait_for(vip_on_http, 30, "c-vip to be VIP on the HTTP port")

                    await wait_for(lambda: len(calls) >= 2, 60, "the vip and goodbye webhooks")

                    async def small_left() -> bool:
                        return await lookup(lookup_port, "c-small") == []

                    await wait_for(small_left, 30, "c-small's time-driven exit in the cache")
                assert worker.stop() == 0
                serve.terminate()  # SIGTERM: a clean stop, exit 0
                assert serve.wait(30) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        finally:
            if serve is not None and serve.poll() is None:
                serve.terminate()
                serve.wait(30)
            serve_log.close()
            await runner.cleanup()

        by_path = {path: (body, key, received) for path, body, key, received in calls}
        assert sorted(path for path, *_ in calls) == ["/hooks/goodbye", "/hooks/vip"]
        vip, vip_key, _ = by_path["/hooks/vip"]
        assert (vip["customer_id"], vip["segment"], vip["trigger"]) == (
            "c-vip",
            "vip",
            "welcome-vip",
        )
        assert vip_key == vip["change_id"] == "c-vip:vip:1"
        goodbye, _key, received = by_path["/hooks/goodbye"]
        assert goodbye["change_id"] == "c-small:small_buyer:2"
        due = parse_instant(goodbye["at"].replace("Z", "+00:00")) / 1e6
        assert received - due < 2.0, f"webhook {received - due:.2f}s after the due instant"

    asyncio.run(main())
