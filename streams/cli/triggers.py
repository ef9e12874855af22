"""`segments triggers`: only the trigger dispatcher (also part of `segments serve`)."""

from __future__ import annotations

import asyncio
import logging

import click

from segments.rules.ruleset import load_ruleset
from streams.cli.common import check_kafka_or_exit, run_until_signal, settings_or_exit
from streams.kafka.connection import KafkaConnection
from streams.logs import configure_from
from streams.serving.cache import connect
from streams.serving.triggers import DEFAULT_MAX_AGE_S, DispatchConfig, TriggerDispatcher

log = logging.getLogger(__name__)


@click.command("triggers")
@click.option("--from-beginning", is_flag=True, help="a new consumer group reads all history")
@click.option("--max-age", type=float, default=DEFAULT_MAX_AGE_S, show_default=True,
              help="seconds; older changes never fire")  # fmt: skip
@click.option("--group", default=None, help="consumer group (default <app_id>-triggers)")
def triggers_command(from_beginning: bool, max_age: float, group: str | None) -> None:
    """Run only the trigger dispatcher (also part of `segments serve`).

    Retries and timeouts come from SEGMENTS_TRIGGER_* (docs/serving.md).
    """
    settings = settings_or_exit()
    # Each repeated warning or error at most once per 10 s, as the worker (the Kafka
    # client logs a refused connection about 65 times a second while the broker is away).
    configure_from(settings)
    check_kafka_or_exit(settings, must_answer=False)

    async def main(stop: asyncio.Event) -> None:
        client = connect(settings.redis_target)
        dispatcher = TriggerDispatcher(
            client,
            load_ruleset(settings.rules).triggers,
            kafka=KafkaConnection.from_settings(settings),
            topic=settings.topics.segment_changes,
            dlq_topic=settings.topics.triggers_dlq,
            group_id=group or settings.triggers_group,
            redis_prefix=settings.redis_prefix,
            config=DispatchConfig.from_settings(
                settings, max_age_s=max_age, from_beginning=from_beginning
            ),
        )
        ready = asyncio.create_task(dispatcher.ready.wait())
        # A log line, so that a JSON log stays one object per line.
        ready.add_done_callback(lambda _: log.info("triggers_ready group=%s", dispatcher.group_id))
        try:
            await dispatcher.run(stop)
        finally:
            ready.cancel()
            await client.aclose()

    run_until_signal(main)
