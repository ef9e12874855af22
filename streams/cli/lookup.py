"""`segments lookup ID`: a customer's segments and traits straight from the Redis cache."""

from __future__ import annotations

import asyncio

import click
import orjson
from redis.exceptions import RedisError

from streams.cli.common import settings_or_exit
from streams.serving.cache import RedisCache, connect
from streams.serving.lookup import CACHE_INCOMPLETE_MESSAGE, lookup_document
from streams.settings import redacted_url


@click.command("lookup")
@click.argument("customer_id")
def lookup_command(customer_id: str) -> None:
    """Print the segments CUSTOMER_ID is in now and its traits, as JSON, from the Redis cache."""
    settings = settings_or_exit()

    async def main() -> tuple[dict[str, str], bool]:
        client = connect(settings.redis_target)
        try:
            return await RedisCache(client, settings.redis_prefix).customer_fields(customer_id)
        finally:
            await client.aclose()

    try:
        fields, complete = asyncio.run(main())
    except (RedisError, OSError) as error:
        raise click.ClickException(
            f"Redis at {redacted_url(settings.redis_url)} did not answer: {error}"
        ) from None
    if not complete:  # an empty hash may be a lost cache, not "no segments" (decision 0004)
        raise click.ClickException(CACHE_INCOMPLETE_MESSAGE)
    document = lookup_document(customer_id, fields)
    click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
