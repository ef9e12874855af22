"""Checkout lookup end to end: segment-changes on Kafka -> run_serving -> HTTP and CLI answers."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.serving.process import run_serving
from streams.settings import Settings, load_settings
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

BOOTSTRAP = os.environ.get("SEGMENTS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
REDIS_URL = os.environ.get("SEGMENTS_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def config():
    from kafka.admin import KafkaAdminClient, NewTopic

    prefix = f"test-{uuid.uuid4().hex[:8]}."
    cfg = load_settings(
        env_file=None,
        kafka_bootstrap=BOOTSTRAP,
        redis_url=REDIS_URL,
        redis_prefix=prefix,
        topic_prefix=prefix,
        app_id=prefix + "app",
        web_port=free_port(),
        api_token="t0ken",
    )
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, client_id="test-lookup")
    # The worker creates both: the changes, and the memberships the cache is rebuilt from.
    admin.create_topics(
        [
            NewTopic(cfg.topics.segment_changes, 2, 1),
            NewTopic(
                cfg.topics.segment_memberships, 2, 1, topic_configs={"cleanup.policy": "compact"}
            ),
        ]
    )
    yield cfg
    try:
        admin.delete_topics([cfg.topics.segment_changes, cfg.topics.segment_memberships])
    finally:
        admin.close()
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def change(customer, segment, seq, at):
    return {
        "change_id": f"{customer}:{segment}:{seq}",
        "customer_id": customer,
        "segment": segment,
        "change": "entered" if seq % 2 else "exited",
        "at": at,
        "cause": "purchase",
        "event_id": f"e-{seq}",
        "rules_version": 1,
        "seq": seq,
        "metrics": {},
    }


def test_a_change_on_kafka_is_answered_by_the_lookup_api_and_cli(config):
    async def main():
        stop, started = asyncio.Event(), asyncio.Event()
        lookup_port = free_port()
        serving = asyncio.create_task(
            run_serving(config, stop=stop, triggers=False, started=started, lookup_port=lookup_port)
        )
        await asyncio.wait_for(started.wait(), 30)
        base = f"http://127.0.0.1:{config.web_port}"
        auth = {"Authorization": "Bearer t0ken"}
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
        await producer.start()
        try:
            for item in [
                change("c-42", "vip", 1, "2026-11-20T14:03:11.120Z"),
                change("c-42", "runner", 1, "2026-11-01T00:00:00Z"),
                change("c-42", "runner", 2, "2026-11-10T00:00:00Z"),
            ]:
                await producer.send_and_wait(
                    config.topics.segment_changes, orjson.dumps(item), key=b"c-42"
                )
            async with aiohttp.ClientSession() as http:

                async def vip_only():
                    async with http.get(f"{base}/customers/c-42/segments", headers=auth) as r:
                        body = await r.json()
                        return (
                            r.status == 200
                            and body["segments"]
                            == [{"name": "vip", "since": "2026-11-20T14:03:11.120Z"}]
                            and body
                        )

                body = await wait_for(vip_only, 60, "the lookup to show the change")
                assert body["customer_id"] == "c-42" and body["as_of"].endswith("Z")
                async with http.get(f"{base}/customers/c-42/segments") as r:
                    assert r.status == 401
                async with http.get(f"{base}/customers/nobody/segments", headers=auth) as r:
                    assert r.status == 200 and (await r.json())["segments"] == []
                async with http.get(f"{base}/segments", headers=auth) as r:
                    sizes = {s["name"]: s for s in (await r.json())["segments"]}
                    assert sizes["vip"]["size"] == 1 and sizes["runner"]["size"] == 0
                    assert sizes["vip"]["entered_last_hour"] == 1
                async with http.get(f"{base}/segments/vip/members", headers=auth) as r:
                    assert (await r.json())["members"] == ["c-42"]
                async with http.get(f"{base}/metrics", headers=auth) as r:
                    text = await r.text()
                    assert 'segments_size{segment="vip"} 1.0' in text
                    assert "segments_serving_consumer_lag{" in text
                    assert 'segments_changes_total{cause="purchase",change="entered"' in text
                async with http.get(f"{base}/readyz") as r:
                    assert r.status == 200
                fast = f"http://127.0.0.1:{lookup_port}/customers/c-42/segments"
                async with http.get(fast, headers=auth) as r:
                    assert (await r.json())["segments"] == body["segments"]

            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("SEGMENTS_")},
                "SEGMENTS_REDIS_URL": REDIS_URL,
                "SEGMENTS_REDIS_PREFIX": config.redis_prefix,
            }
            result = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "streams", "lookup", "c-42"],
                env=env,
                capture_output=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            cli = orjson.loads(result.stdout)
            assert cli["segments"] == [{"name": "vip", "since": "2026-11-20T14:03:11.120Z"}]
        finally:
            await producer.stop()
            stop.set()
            await asyncio.wait_for(serving, 30)

    asyncio.run(main())


def test_web_binds_to_loopback_by_default():
    assert Settings().web_host == "127.0.0.1"


def test_serving_waits_for_the_worker_to_create_topics_and_stops_cleanly(config):
    """Started before the worker created segment-changes: it serves, waits, and a stop ends
    it promptly (a consumer subscribed to a missing topic would hang in start())."""
    missing = config.model_copy(update={"topic_prefix": config.topic_prefix + "later."})

    async def main():
        stop, started = asyncio.Event(), asyncio.Event()
        serving = asyncio.create_task(run_serving(missing, stop=stop, started=started))
        await asyncio.wait_for(started.wait(), 30)
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{config.web_port}/healthz"
            async with http.get(url) as response:
                assert response.status == 200
        stop.set()
        await asyncio.wait_for(serving, 15)

    asyncio.run(main())
