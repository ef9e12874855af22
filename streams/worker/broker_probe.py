"""Whether the worker can reach the broker, and the /readyz decision built on it.

Faust and its Kafka client keep retrying through an outage and expose no
"connected" state: their consumer simply fetches nothing, which looks like an
idle topic. So the worker asks the broker itself: a metadata request every
second on a small client of its own. The broker counts as unreachable when it
has not answered for `silence_limit` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streams.kafka.connection import KafkaConnection

log = logging.getLogger(__name__)

PROBE_INTERVAL = 1.0  # seconds between metadata requests
PROBE_TIMEOUT = 3.0  # a request that takes longer counts as no answer (a partition, not a refusal)
SILENCE_LIMIT = 5.0  # no answer for this long: /readyz says 503


@dataclass(frozen=True)
class Readiness:
    """The /readyz answer: ready only when every condition holds; the body says which failed."""

    recovered: bool  # table recovery from the changelog is done
    rebalancing: bool
    assigned: bool  # the group gave this worker its partitions
    broker_silence: float  # seconds since the broker last answered
    silence_limit: float = SILENCE_LIMIT

    @property
    def broker_reachable(self) -> bool:
        return self.broker_silence <= self.silence_limit

    @property
    def ready(self) -> bool:
        return self.recovered and not self.rebalancing and self.assigned and self.broker_reachable

    def body(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "recovered": self.recovered,
            "rebalancing": self.rebalancing,
            "assigned": self.assigned,
            "broker": "reachable" if self.broker_reachable else "unreachable",
            "broker_silence_seconds": round(self.broker_silence, 1),
        }


class BrokerProbe:
    """Asks the brokers for cluster metadata every `interval` seconds; remembers the last answer."""

    def __init__(
        self,
        kafka: KafkaConnection,
        interval: float = PROBE_INTERVAL,
        timeout: float = PROBE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kafka = kafka
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        # Until the first request the worker is starting; its readiness is
        # gated by table recovery then, which needs the broker anyway.
        self.last_answer = clock()
        self.answered = False

    def silence(self) -> float:
        """Seconds since the broker last answered (or since the probe started)."""
        return max(0.0, self.clock() - self.last_answer)

    async def run(self) -> None:
        """Probe until cancelled (the worker stops)."""
        from aiokafka import AIOKafkaClient

        client = AIOKafkaClient(
            **self.kafka.aiokafka_args(
                client_id="segments-readiness-probe",
                request_timeout_ms=int(self.timeout * 1000),
            )
        )
        self.last_answer = self.clock()
        try:
            while True:
                if await self.ask(client):
                    self.last_answer = self.clock()
                    self.answered = True
                await asyncio.sleep(self.interval)
        finally:
            await client.close()

    async def ask(self, client: Any) -> bool:
        """One metadata request; False when no broker answered within the timeout."""
        from aiokafka.errors import KafkaError

        try:
            if self.answered:
                await asyncio.wait_for(client.fetch_all_metadata(), self.timeout)
            else:
                # Connects to the bootstrap servers and reads the broker list.
                await asyncio.wait_for(client.bootstrap(), self.timeout)
        except (TimeoutError, KafkaError, OSError):
            # The client logs why; the limiter in the worker keeps that bounded.
            return False
        return True
