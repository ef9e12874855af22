"""Serving: the cache sink, the trigger dispatcher and the HTTP API in one asyncio task group."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web as aioweb
from aiohttp.http_exceptions import HttpProcessingError

from segments.rules.ruleset import load_ruleset
from streams.kafka.connection import KafkaConnection
from streams.serving.cache import RedisCache, connect
from streams.serving.cache_sink import CacheSink
from streams.serving.churn import ChurnHistory
from streams.serving.fast_path import start_lookup_server
from streams.serving.lookup import AIOHTTP_LIMITS
from streams.serving.lookup_reader import LookupReader, lookup_reader
from streams.serving.triggers import DEFAULT_MAX_AGE_S, DispatchConfig, TriggerDispatcher
from streams.serving.web import create_app
from streams.settings import Settings

log = logging.getLogger(__name__)


async def run_serving(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    cache_sink: bool = True,
    triggers: bool = True,
    web: bool = True,
    web_port: int | None = None,
    lookup_port: int | None = None,
    ready: Callable[[], bool | Awaitable[bool]] | None = None,
    started: asyncio.Event | None = None,
    trigger_max_age_s: float = DEFAULT_MAX_AGE_S,
    cache_check_s: float = 1.0,
) -> None:
    """Runs the cache sink, the trigger dispatcher and the HTTP API until `stop` is set.

    Serving's part of `settings`: Kafka, Redis, the rule file (segment names and
    triggers), the web host, port and token, and the SEGMENTS_TRIGGER_* retries. The
    worker process can start this beside Faust as one more task; give `web_port` (or
    web=False) when Faust's own web server already holds the configured port.
    `lookup_port` adds the checkout fast path (streams.serving.fast_path: GET
    /customers/{id}/segments only). `trigger_max_age_s`: changes older than this never
    fire; `cache_check_s`: how often an idle cache sink looks for the cache's sentinel (a
    Redis emptied while no change flows is rebuilt within about this long). Each part has
    its own consumer group and committed offsets, so it catches up by itself after any
    outage. If one part fails, the others are stopped and the error is raised.
    """
    topics = settings.topics
    api_token = settings.api_token_value
    stop = stop or asyncio.Event()
    ruleset = load_ruleset(settings.rules)
    client = connect(settings.redis_target)
    cache = RedisCache(client, settings.redis_prefix)
    churn = ChurnHistory()
    tasks: list[asyncio.Task[None]] = []
    sink = None
    if cache_sink:
        sink = CacheSink(
            cache,
            kafka=KafkaConnection.from_settings(settings),
            topic=topics.segment_changes,
            group_id=settings.cache_sink_group,
            churn=churn,
            memberships_topic=topics.segment_memberships,
            check_every_s=cache_check_s,
            traits_topic=topics.trait_changes,
            trait_values_topic=topics.trait_values,
        )
        tasks.append(asyncio.create_task(sink.run(stop), name="cache-sink"))
    if triggers and ruleset.triggers:
        dispatcher = TriggerDispatcher(
            client,
            ruleset.triggers,
            kafka=KafkaConnection.from_settings(settings),
            topic=topics.segment_changes,
            dlq_topic=topics.triggers_dlq,
            group_id=settings.triggers_group,
            redis_prefix=settings.redis_prefix,
            config=dispatch_config(settings, trigger_max_age_s),
        )
        tasks.append(asyncio.create_task(dispatcher.run(stop), name="triggers"))
    runner = None
    reader: LookupReader | None = None
    if web:

        def default_ready() -> bool:
            # On top of the app's own check (Redis answers, the cache is complete): the
            # sink's last write went through.
            return sink is None or sink.stats.redis_ok

        reader = lookup_reader(settings.redis_target, client)
        app = create_app(
            cache,
            segments=[segment.name for segment in ruleset.segments],
            api_token=api_token,
            ready=ready or default_ready,
            churn=churn,
            reader=reader,
        )
        if reader is not None:
            app.on_cleanup.append(_closer(reader))
        # The fast path applies the same head limits (streams.serving.lookup), so both ports
        # refuse the same oversize requests with the same 400.
        runner = aioweb.AppRunner(app, access_log=None, logger=_RequestErrorLog(), **AIOHTTP_LIMITS)
        await runner.setup()
        port = settings.web_port if web_port is None else web_port
        await aioweb.TCPSite(runner, settings.web_host, port, reuse_port=True).start()
        log.info("serving_web host=%s port=%d", settings.web_host, port)
    lookup_server = None
    fast_reader: LookupReader | None = None
    if lookup_port is not None:
        fast_reader = reader if reader is not None else lookup_reader(settings.redis_target, client)
        lookup_server = await start_lookup_server(
            fast_reader,
            host=settings.web_host,
            port=lookup_port,
            prefix=settings.redis_prefix,
            api_token=api_token,
            is_complete=cache.is_complete if cache.cluster else None,
        )
        log.info("serving_lookup host=%s port=%d", settings.web_host, lookup_port)
    if started is not None:
        started.set()
    waiter = asyncio.create_task(stop.wait(), name="stop")
    try:
        await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("serving_part_failed part=%s error=%r", task.get_name(), result)
                raise result
    finally:
        waiter.cancel()
        if lookup_server is not None and fast_reader is not None:
            lookup_server.close()
            fast_reader.close()
        if runner is not None:
            await runner.cleanup()
        await client.aclose()


class _RequestErrorLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's request-error log, without a traceback for a client's malformed request.

    aiohttp logs every request its parser refuses (a header over the limit, a bad byte in
    the path) with a traceback at ERROR; those are the client's mistake, answered 400,
    and a client could fill the log with them. They go to DEBUG in one line; everything
    else (a 500) keeps aiohttp's traceback.
    """

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: Any, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError) and 400 <= exc_info.code < 500:
            log.debug("http_bad_request status=%d reason=%.200s", exc_info.code, exc_info.message)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


def _closer(reader: LookupReader) -> Callable[[aioweb.Application], Awaitable[None]]:
    async def close(_app: aioweb.Application) -> None:
        reader.close()

    return close


def dispatch_config(settings: Settings, max_age_s: float = DEFAULT_MAX_AGE_S) -> DispatchConfig:
    """The dispatcher's configuration: SEGMENTS_TRIGGER_* and serve's --trigger-max-age."""
    return DispatchConfig.from_settings(settings, max_age_s=max_age_s)
