"""`segments worker`: the Faust worker process: topics, app, agents, health pages, signals."""

from __future__ import annotations

import logging
from typing import Any

import click

from segments.rules.evaluator import compile_rules
from segments.rules.validate import load_ruleset_or_exit
from streams.agents import SegmentProcessor, register_agents
from streams.app import SegmentsApp, create_app
from streams.config import WorkerConfig, load_config
from streams.topics import ensure_topics

log = logging.getLogger(__name__)


def build_worker_app(config: WorkerConfig) -> tuple[SegmentsApp, SegmentProcessor]:
    from segments.data import EXAMPLE_RULES

    rules = compile_rules(load_ruleset_or_exit(config.rules or EXAMPLE_RULES))
    segments_app = create_app(config)
    processor = SegmentProcessor(segments_app, rules)
    register_agents(segments_app, processor)
    register_pages(segments_app)
    return segments_app, processor


def register_pages(segments_app: SegmentsApp) -> None:
    """/healthz: the process runs; /readyz: table recovery is done and no rebalance is running."""
    app = segments_app.app

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        recovered = app.tables.recovery.completed.is_set() and not app.in_recovery
        ready = recovered and not app.rebalancing and not app.unassigned
        return web.json({"ready": ready}, status=200 if ready else 503)


@click.command("worker")
def worker_command() -> None:
    """Run the streaming worker (Faust) with the SEGMENTS_* configuration."""
    import faust

    config = load_config()
    ensure_topics(config.kafka_bootstrap, config.names, config.partitions)
    segments_app, _ = build_worker_app(config)
    log.info(
        "worker_starting app_id=%s clock=%s partitions=%d prefix=%r",
        config.app_id,
        config.clock,
        config.partitions,
        config.topic_prefix,
    )
    # faust.Worker installs SIGTERM/SIGINT handlers that stop the app cleanly
    # (commit offsets, flush the producer, close RocksDB).
    worker = faust.Worker(segments_app.app, loglevel="info")
    worker.execute_from_commandline()
