"""`segments worker`: the Faust worker process, with the SEGMENTS_* settings."""

from __future__ import annotations

import logging

import click

from segments.rules.evaluator import compile_rules
from streams.cli.common import check_kafka_or_exit, settings_or_exit
from streams.cli.validate import load_ruleset_or_exit
from streams.kafka.connection import KafkaConnection
from streams.kafka.topics import TopicsError, ensure_topics, topics_error_text
from streams.logs import configure_from
from streams.worker.app import changelog_topic
from streams.worker.process import (
    RUNNING_MARKER,
    build_worker_app,
    prepare_data_dir,
    use_uvloop,
    worker_class,
)

log = logging.getLogger(__name__)


@click.command("worker")
def worker_command() -> None:
    """Run the streaming worker (Faust) with the SEGMENTS_* configuration."""
    worker = worker_class()
    settings = settings_or_exit()
    configure_from(settings)
    check_kafka_or_exit(settings, must_answer=True)  # the topics are checked next
    try:
        ready = ensure_topics(
            KafkaConnection.from_settings(settings),
            settings.topics,
            settings.partitions,
            settings.changes_retention_ms,
            settings.replication_factor,
            changelog=changelog_topic(settings),
        )
    except TopicsError as error:
        raise click.ClickException(topics_error_text(error)) from None
    # Faust creates the changelog with the same replicas and min.insync.replicas as the topics.
    settings = settings.model_copy(update={"replication_factor": ready.replication_factor})
    if prepare_data_dir(settings.data_dir):
        log.warning("unclean_stop_detected local_state=discarded restore=changelog")
    rules = compile_rules(load_ruleset_or_exit(settings.rules))
    uvloop = use_uvloop()
    segments_app, _ = build_worker_app(settings, rules, ready.min_insync_replicas)
    log.info(
        "worker_starting app_id=%s clock=%s partitions=%d prefix=%r uvloop=%s",
        settings.app_id,
        settings.clock,
        settings.partitions,
        settings.topic_prefix,
        uvloop,
    )
    # faust.Worker installs SIGTERM/SIGINT handlers that stop the app cleanly
    # (commit offsets, flush the producer, close RocksDB).
    running = worker(segments_app.app)
    try:
        running.execute_from_commandline()
    except SystemExit as stop:
        if stop.code in (0, None):
            (settings.data_dir / RUNNING_MARKER).unlink(missing_ok=True)
        raise
