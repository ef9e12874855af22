"""Prometheus metrics of the streaming worker, served at GET /metrics of its web server."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# Each worker process has its own registry: the serving process exports the cache,
# trigger and segment-size metrics from the default one.
REGISTRY = CollectorRegistry()
# What the default registry of `segments serve` has too: process_cpu_seconds_total,
# process_resident_memory_bytes, process_open_fds, process_start_time_seconds, ...,
# python_info and the garbage collector's python_gc_*.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

DEADLINE_LATENESS = Histogram(
    "segments_deadline_lateness_seconds",
    "Wall-clock mode: how long after its due instant a time-driven deadline was handled.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
    registry=REGISTRY,
)


class ProcessorCounts(Collector):
    """Exports the agents' own counters (each counts in a plain Counter), labelled by agent."""

    def __init__(self, counts_by_agent: dict[str, Counter[str]]) -> None:
        self.counts_by_agent = counts_by_agent

    def collect(self) -> Iterator[CounterMetricFamily]:
        messages = CounterMetricFamily(
            "segments_worker_messages",
            "Messages handled by the segment agent, by outcome "
            "(applied, duplicates, ticks, clock_marks, messages, changes).",
            labels=["agent", "outcome"],
        )
        dead = CounterMetricFamily(
            "segments_worker_dead_letters",
            "Events sent to the dead-letter topic, by reason.",
            labels=["agent", "reason"],
        )
        for agent, counts in self.counts_by_agent.items():
            for name, value in sorted(counts.items()):
                if name.startswith(("rejected.", "adapter_rejected.")):
                    dead.add_metric([agent, name.split(".", 1)[1]], value)
                else:
                    messages.add_metric([agent, name], value)
        yield messages
        yield dead


class ConsumerLag(Collector):
    """segments_worker_consumer_lag{topic,partition}: for each input partition this worker
    owns, messages the group has not committed yet (Kafka's high watermark minus the
    committed offset), read from Faust's consumer at scrape time."""

    def __init__(self, consumer: Callable[[], Any], topics: Iterable[str]) -> None:
        self.consumer = consumer
        self.topics = frozenset(topics)

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "segments_worker_consumer_lag",
            "Messages of an owned input partition not yet committed by the worker's group.",
            labels=["topic", "partition"],
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()  # registering must not need a running consumer

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = self._family()
        consumer = self.consumer()
        for tp in sorted(consumer.assignment()):
            if tp.topic not in self.topics:
                continue
            try:
                end = consumer.highwater(tp)
            except Exception:  # not fetched yet, or revoked while scraping
                continue
            if end is None:
                continue
            committed = consumer._committed_offset.get(tp) or 0
            lag.add_metric([tp.topic, str(tp.partition)], max(0, end - committed))
        yield lag


class BrokerContact(Collector):
    """segments_worker_broker_reachable and segments_worker_broker_silence_seconds, from the
    worker's own metadata probe (streams.worker.broker_probe): the consumer alone cannot tell an
    idle topic from a broker that is gone."""

    def __init__(self, silence: Callable[[], float], interval: float, limit: float) -> None:
        self.silence = silence
        self.interval = interval
        self.limit = limit

    def collect(self) -> Iterator[GaugeMetricFamily]:
        seconds = self.silence()
        yield GaugeMetricFamily(
            "segments_worker_broker_reachable",
            f"1 when a broker answered the worker's metadata probe (sent every "
            f"{self.interval:g} s) within the last {self.limit:g} s, else 0.",
            value=1.0 if seconds <= self.limit else 0.0,
        )
        yield GaugeMetricFamily(
            "segments_worker_broker_silence_seconds",
            "Seconds since a broker last answered the worker's metadata probe.",
            value=seconds,
        )
