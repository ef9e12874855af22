"""`segments lookup ID`: a customer's segments straight from the Redis cache (one HGETALL)."""

from __future__ import annotations

import asyncio

import click
import orjson

from streams.sinks.redis import RedisCache


async def lookup(cache: RedisCache, customer_id: str) -> dict:
    """The same document as GET /customers/{id}/segments."""
    from streams.web import now_iso

    segments = await cache.customer_segments(customer_id)
    return {
        "customer_id": customer_id,
        "segments": [{"name": name, "since": since} for name, since in segments],
        "as_of": now_iso(),
    }


@click.command("lookup")
@click.argument("customer_id")
def lookup_command(customer_id: str) -> None:
    """Print the segments CUSTOMER_ID is in now, as JSON, from the Redis cache."""
    from redis.exceptions import RedisError

    from streams.serving import ServingConfig

    config = ServingConfig.load()

    async def main() -> dict:
        client = config.redis_client()
        try:
            return await lookup(RedisCache(client, config.redis_prefix), customer_id)
        finally:
            await client.aclose()

    try:
        document = asyncio.run(main())
    except (RedisError, OSError) as error:
        raise click.ClickException(f"Redis at {config.redis_url} did not answer: {error}") from None
    click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
