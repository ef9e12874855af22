"""`segments resync-cache`: rebuild the Redis cache from the compacted memberships and traits."""

from __future__ import annotations

import asyncio

import click

from streams.cli.common import check_kafka_or_exit, settings_or_exit
from streams.kafka.connection import KafkaConnection
from streams.logs import configure_from
from streams.serving.cache import RedisCache, connect
from streams.serving.resync import ResyncResult, TopicNotFound, resync_cache


@click.command("resync-cache")
@click.option(
    "--no-flush",
    is_flag=True,
    help="keep existing keys (only newer memberships are written; stale members stay)",
)
def resync_command(no_flush: bool) -> None:
    """Rebuild the Redis cache from the segment-memberships and trait-values topics."""
    settings = settings_or_exit()
    configure_from(settings, quiet_clients=True)
    check_kafka_or_exit(settings, must_answer=True)

    async def main() -> ResyncResult:
        client = connect(settings.redis_target)
        try:
            cache = RedisCache(client, settings.redis_prefix)
            return await resync_cache(
                cache,
                kafka=KafkaConnection.from_settings(settings),
                topic=settings.topics.segment_memberships,
                flush=not no_flush,
                traits_topic=settings.topics.trait_values,
            )
        finally:
            await client.aclose()

    try:
        result = asyncio.run(main())
    except TopicNotFound as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        f"resync-cache: read {result.records_read} records, {result.members} members, "
        f"{result.tombstones} exits, {result.skipped} skipped; "
        f"deleted {result.keys_deleted} keys, wrote {result.applied}; "
        + (
            "no trait-values topic, no traits"
            if result.traits_topic_missing
            else f"{result.traits} trait values, wrote {result.traits_applied}"
        )
    )
