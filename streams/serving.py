"""Serving: the cache sink, the trigger dispatcher and the HTTP API in one asyncio task group."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Any

import click

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingConfig:
    """What serving needs: taken from the project's Settings, plus the trigger knobs."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = ""
    topic_prefix: str = ""
    app_id: str = "purchase-segments"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    api_token: str | None = None
    rules_path: str | None = None
    # Changes whose `at` is older than this at dispatch time never fire (history replays).
    trigger_max_age_s: float = 6 * 3600.0
    # The Settings it came from, for the dispatcher's SEGMENTS_TRIGGER_* retries, timeout
    # and concurrency (streams.triggers.DispatchConfig.from_settings); None: its defaults.
    trigger_settings: Any = None
    # How often an idle cache sink looks for the cache's sentinel (a Redis emptied while no
    # change flows is rebuilt within about this long); it also looks before every batch.
    cache_check_s: float = 1.0

    @property
    def changes_topic(self) -> str:
        return f"{self.topic_prefix}segment-changes"

    @property
    def memberships_topic(self) -> str:
        return f"{self.topic_prefix}segment-memberships"

    @property
    def triggers_dlq_topic(self) -> str:
        return f"{self.topic_prefix}triggers.dlq"

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> ServingConfig:
        token = settings.api_token.get_secret_value() if settings.api_token else None
        values: dict[str, Any] = {
            "kafka_bootstrap": settings.kafka_bootstrap,
            "redis_url": settings.redis_url,
            "redis_prefix": settings.redis_prefix,
            "topic_prefix": settings.topic_prefix,
            "app_id": settings.app_id,
            "web_host": settings.web_host,
            "web_port": settings.web_port,
            "api_token": token,
            "rules_path": str(settings.rules),
            "trigger_settings": settings,
        }
        values.update(overrides)
        return cls(**values)

    @classmethod
    def load(cls, **overrides: Any) -> ServingConfig:
        """From SEGMENTS_* (validated by streams.settings); exits with its message if invalid."""
        from streams.settings import SettingsError, load_settings

        try:
            settings = load_settings()
        except SettingsError as error:
            raise click.ClickException(str(error)) from None
        return cls.from_settings(settings, **overrides)

    def redis_client(self):
        from streams.sinks.redis import connect

        return connect(self.redis_url)

    def ruleset(self):
        from segments.data import EXAMPLE_RULES
        from segments.rules.ruleset import load_ruleset

        return load_ruleset(self.rules_path or EXAMPLE_RULES)


async def run_serving(
    settings: Any,
    *,
    stop: asyncio.Event | None = None,
    cache_sink: bool = True,
    triggers: bool = True,
    web: bool = True,
    web_port: int | None = None,
    lookup_port: int | None = None,
    ready: Any = None,
    started: asyncio.Event | None = None,
) -> None:
    """Runs the cache sink, the trigger dispatcher and the HTTP API until `stop` is set.

    `settings` is a streams.settings.Settings (or a ServingConfig). The worker process can
    start this beside Faust as one more task; give `web_port` (or web=False) when Faust's
    own web server already holds the configured port. `lookup_port` adds the checkout fast
    path (streams.lookup.LookupProtocol: GET /customers/{id}/segments only). Each part has
    its own consumer group and committed offsets, so it catches up by itself after any
    outage. If one part fails, the others are stopped and the error is raised.
    """
    from aiohttp import web as aioweb

    from streams.cache_sink import CacheSink, ChurnHistory
    from streams.sinks.redis import RedisCache
    from streams.triggers import TriggerDispatcher
    from streams.web import create_app

    config = (
        settings if isinstance(settings, ServingConfig) else ServingConfig.from_settings(settings)
    )
    stop = stop or asyncio.Event()
    ruleset = config.ruleset()
    client = config.redis_client()
    cache = RedisCache(client, config.redis_prefix)
    churn = ChurnHistory()
    tasks: list[asyncio.Task[None]] = []
    sink = None
    if cache_sink:
        sink = CacheSink(
            cache,
            bootstrap=config.kafka_bootstrap,
            topic=config.changes_topic,
            group_id=f"{config.app_id}-cache-sink",
            churn=churn,
            memberships_topic=config.memberships_topic,
            check_every_s=config.cache_check_s,
        )
        tasks.append(asyncio.create_task(sink.run(stop), name="cache-sink"))
    if triggers and ruleset.triggers:
        dispatcher = TriggerDispatcher(
            client,
            ruleset.triggers,
            bootstrap=config.kafka_bootstrap,
            topic=config.changes_topic,
            dlq_topic=config.triggers_dlq_topic,
            group_id=f"{config.app_id}-triggers",
            redis_prefix=config.redis_prefix,
            config=_dispatch_config(config),
        )
        tasks.append(asyncio.create_task(dispatcher.run(stop), name="triggers"))
    runner = None
    reader = None
    if web:

        def default_ready() -> bool:
            # On top of the app's own check (Redis answers, the cache is complete): the
            # sink's last write went through.
            return sink is None or sink.stats.redis_ok

        if config.redis_url.startswith("redis://"):
            from streams.sinks.redis import PipelinedReader

            reader = PipelinedReader(config.redis_url)
        app = create_app(
            cache,
            segments=[segment.name for segment in ruleset.segments],
            api_token=config.api_token,
            ready=ready or default_ready,
            churn=churn,
            reader=reader,
        )
        if reader is not None:
            app.on_cleanup.append(lambda _app: _close(reader))
        from streams.lookup import AIOHTTP_LIMITS

        # The fast path applies the same head limits (streams.lookup), so both ports
        # refuse the same oversize requests with the same 400.
        runner = aioweb.AppRunner(app, access_log=None, logger=_RequestErrorLog(), **AIOHTTP_LIMITS)
        await runner.setup()
        port = config.web_port if web_port is None else web_port
        await aioweb.TCPSite(runner, config.web_host, port, reuse_port=True).start()
        log.info("serving_web host=%s port=%d", config.web_host, port)
    lookup_server = None
    if lookup_port is not None:
        from streams.lookup import start_lookup_server
        from streams.sinks.redis import PipelinedReader

        lookup_reader = reader if reader is not None else PipelinedReader(config.redis_url)
        lookup_server = await start_lookup_server(
            lookup_reader,
            host=config.web_host,
            port=lookup_port,
            prefix=config.redis_prefix,
            api_token=config.api_token,
        )
        log.info("serving_lookup host=%s port=%d", config.web_host, lookup_port)
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
        if lookup_server is not None:
            lookup_server.close()
            lookup_reader.close()
        if runner is not None:
            await runner.cleanup()
        await client.aclose()


class _RequestErrorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's request-error log, without a traceback for a client's malformed request.

    aiohttp logs every request its parser refuses (a header over the limit, a bad byte in
    the path) with a traceback at ERROR; those are the client's mistake, answered 400,
    and a client could fill the log with them. They go to DEBUG in one line; everything
    else (a 500) keeps aiohttp's traceback.
    """

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: Any, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        from aiohttp.http_exceptions import HttpProcessingError

        if isinstance(exc_info, HttpProcessingError) and 400 <= exc_info.code < 500:
            log.debug("http_bad_request status=%d reason=%.200s", exc_info.code, exc_info.message)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


async def _close(reader: Any) -> None:
    reader.close()


def _dispatch_config(config: ServingConfig):  # -> streams.triggers.DispatchConfig
    from streams.triggers import DispatchConfig

    if config.trigger_settings is None:
        return DispatchConfig(max_age_s=config.trigger_max_age_s)
    return DispatchConfig.from_settings(config.trigger_settings, max_age_s=config.trigger_max_age_s)


@click.command("serve")
@click.option("--no-sink", is_flag=True, help="do not run the segment-changes -> Redis sink")
@click.option("--no-triggers", is_flag=True, help="do not run the webhook dispatcher")
@click.option("--port", type=int, default=None, help="HTTP port (default SEGMENTS_WEB_PORT)")
@click.option("--lookup-port", type=int, default=None,
              help="also serve the checkout fast path (lookup only) on this port")  # fmt: skip
@click.option("--trigger-max-age", type=float, default=6 * 3600.0, show_default=True,
              help="seconds; changes older than this never fire a trigger")  # fmt: skip
@click.option("--workers", type=int, default=1, show_default=True,
              help="HTTP processes sharing the port (SO_REUSEPORT); 1 = this one only")  # fmt: skip
@click.option("--cache-check-interval", type=click.FloatRange(min=0.05), default=1.0,
              show_default=True,
              help="seconds; how often the idle cache sink checks that Redis still holds "
              "the cache (an emptied Redis is rebuilt from segment-memberships)")  # fmt: skip
def serve_command(
    no_sink: bool,
    no_triggers: bool,
    port: int | None,
    lookup_port: int | None,
    trigger_max_age: float,
    workers: int,
    cache_check_interval: float,
) -> None:
    """Serve the lookup API, and run the cache sink and triggers, without the Faust worker."""
    config = ServingConfig.load(
        trigger_max_age_s=trigger_max_age, cache_check_s=cache_check_interval
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # The Kafka client logs a refused connection about 65 times a second while the broker
    # is unreachable: each repeated warning or error at most once per 10 s, as the worker.
    from streams.log_rate import limit_repeated_messages

    limit_repeated_messages(logging.getLogger())
    extra = [_spawn_web_only(port, lookup_port) for _ in range(max(0, workers - 1))]
    try:
        _run_until_signal(
            lambda stop: run_serving(
                config,
                stop=stop,
                cache_sink=not no_sink,
                triggers=not no_triggers,
                web_port=port,
                lookup_port=lookup_port,
            )
        )
    finally:
        for process in extra:
            process.terminate()
        for process in extra:
            process.wait(timeout=10)


def _spawn_web_only(port: int | None, lookup_port: int | None):  # -> subprocess.Popen
    import subprocess
    import sys

    command = [sys.executable, "-m", "streams", "serve", "--no-sink", "--no-triggers"]
    if port is not None:
        command += ["--port", str(port)]
    if lookup_port is not None:
        command += ["--lookup-port", str(lookup_port)]
    return subprocess.Popen(command)


def _run_until_signal(main: Any) -> None:
    """Runs main(stop) on uvloop when installed; SIGINT/SIGTERM set stop.

    The handlers are installed before the loop runs: installed from inside a running
    uvloop (uvloop.run, asyncio.Runner) SIGTERM still killed the process here.
    """
    try:
        import uvloop  # type: ignore[import-not-found]

        from streams.aiokafka_fixes import closed_transports_raise_connection_errors

        closed_transports_raise_connection_errors()  # aiokafka on uvloop: see there
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        loop.run_until_complete(main(stop))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()
