"""The worker process: the app with its agents, health pages and metrics; its local state."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

from segments.adapters import IdentityMap
from segments.rules.evaluator import CompiledRules
from streams.kafka.connection import KafkaConnection
from streams.settings import Settings
from streams.worker.agents import AdapterProcessor, build_processor, register_agents
from streams.worker.app import SegmentsApp, create_app
from streams.worker.broker_probe import SILENCE_LIMIT, BrokerProbe, Readiness
from streams.worker.explain_page import register_explain_page
from streams.worker.processor import SegmentProcessor


def build_worker_app(
    settings: Settings, rules: CompiledRules, min_insync_replicas: int | None = None
) -> tuple[SegmentsApp, SegmentProcessor]:
    """The Faust app with its agents, timers, pages and metrics, ready to run."""
    segments_app = create_app(settings, min_insync_replicas)
    processor = build_processor(segments_app, rules)
    # Without an identity file every native id stands for its own customer.
    identities = IdentityMap.load(settings.identity_map) if settings.identity_map else IdentityMap()
    adapter = AdapterProcessor(segments_app, rules, identities)
    register_agents(segments_app, processor, adapter)
    probe = BrokerProbe(KafkaConnection.from_settings(settings))
    register_pages(segments_app, probe)
    register_explain_page(segments_app, processor, rules)
    register_metrics(segments_app, processor, adapter, probe)
    return segments_app, processor


def register_pages(segments_app: SegmentsApp, probe: BrokerProbe) -> None:
    """/healthz: the process runs; /readyz: recovered, assigned, no rebalance, broker answers."""
    app = segments_app.app

    @app.task  # type: ignore[untyped-decorator]  # faust: untyped
    async def probe_broker() -> None:
        await probe.run()

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        readiness = Readiness(
            # TableManagerT declares no `recovery`; faust's TableManager has it.
            recovered=app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
            and not app.in_recovery,
            rebalancing=bool(app.rebalancing),
            assigned=not app.unassigned,
            broker_silence=probe.silence(),
        )
        return web.json(readiness.body(), status=200 if readiness.ready else 503)


def register_metrics(
    segments_app: SegmentsApp,
    processor: SegmentProcessor,
    adapter: AdapterProcessor,
    probe: BrokerProbe,
) -> None:
    """GET /metrics: events processed, dead letters by reason, deadline lateness, lag, broker."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from streams.worker.metrics import REGISTRY, BrokerContact, ConsumerLag, ProcessorCounts

    REGISTRY.register(ProcessorCounts({"segments": processor.counts, "adapter": adapter.counts}))
    names = segments_app.names
    inputs = (names.purchases, names.purchases_pos, names.purchases_online)
    REGISTRY.register(ConsumerLag(lambda: segments_app.app.consumer, inputs))
    REGISTRY.register(BrokerContact(probe.silence, probe.interval, SILENCE_LIMIT))

    @segments_app.app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        body = generate_latest(REGISTRY)
        return web.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])


RUNNING_MARKER = "worker.running"


def prepare_data_dir(data_dir: Path) -> bool:
    """Make the local state safe to use; True when it was discarded after an unclean stop.

    Faust (at-least-once) writes RocksDB before the changelog record is
    acknowledged, and on restart replays the changelog only from the last
    acknowledged offset. After a crash the local store can therefore hold writes
    the changelog lacks, and the replay then rolls some keys back but not
    others: a state no run ever had. The changelog itself is always a prefix of
    the writes, so after an unclean stop the local state is dropped and the
    table is restored from the changelog alone.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    marker = data_dir / RUNNING_MARKER
    unclean = marker.exists()
    if unclean:
        for child in data_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            elif child != marker:
                child.unlink()
    marker.write_text(f"{os.getpid()}\n")
    return unclean


def use_uvloop() -> bool:
    """Make uvloop the event loop of every loop created from now on (the worker's, and
    the one of Faust's consumer thread), when it is installed; True when it is.

    Called before the app is built: Faust's services take the loop of the policy.
    aiokafka on uvloop needs the fix that the serving process uses too."""
    try:
        import uvloop
    except ImportError:
        return False
    from streams.kafka.aiokafka_fixes import closed_transports_raise_connection_errors

    closed_transports_raise_connection_errors()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def worker_class() -> type[Any]:
    import faust

    class Worker(faust.Worker):
        """faust.Worker that leaves logging to the process (streams.logs) and prints nothing.

        Faust would replace the root logger's handlers with its own (coloured text on
        stdout) and, at WARNING and above, write a start-up spinner and "OK ^" around
        the log: not one JSON object per line.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, override_logging=False, **kwargs)
            self.spinner = None

    return Worker
