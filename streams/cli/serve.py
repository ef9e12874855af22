"""`segments serve`: the cache sink, triggers and the HTTP API, without the Faust worker."""

from __future__ import annotations

import subprocess
import sys

import click

from streams.cli.common import check_kafka_or_exit, run_until_signal, settings_or_exit
from streams.logs import configure_from
from streams.serving.process import run_serving
from streams.serving.triggers import DEFAULT_MAX_AGE_S


@click.command("serve")
@click.option("--no-sink", is_flag=True, help="do not run the segment-changes -> Redis sink")
@click.option("--no-triggers", is_flag=True, help="do not run the webhook dispatcher")
@click.option("--port", type=int, default=None, help="HTTP port (default SEGMENTS_WEB_PORT)")
@click.option("--lookup-port", type=int, default=None,
              help="also serve the checkout fast path (lookup only) on this port")  # fmt: skip
@click.option("--trigger-max-age", type=float, default=DEFAULT_MAX_AGE_S, show_default=True,
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
    settings = settings_or_exit()
    # Each repeated warning or error at most once per 10 s, as the worker (the Kafka
    # client logs a refused connection about 65 times a second while the broker is away).
    configure_from(settings)
    if not (no_sink and no_triggers):
        check_kafka_or_exit(settings, must_answer=False)
    extra = [_spawn_web_only(port, lookup_port) for _ in range(max(0, workers - 1))]
    try:
        run_until_signal(
            lambda stop: run_serving(
                settings,
                stop=stop,
                cache_sink=not no_sink,
                triggers=not no_triggers,
                web_port=port,
                lookup_port=lookup_port,
                trigger_max_age_s=trigger_max_age,
                cache_check_s=cache_check_interval,
            )
        )
    finally:
        for process in extra:
            process.terminate()
        for process in extra:
            process.wait(timeout=10)


def _spawn_web_only(port: int | None, lookup_port: int | None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "streams", "serve", "--no-sink", "--no-triggers"]
    if port is not None:
        command += ["--port", str(port)]
    if lookup_port is not None:
        command += ["--lookup-port", str(lookup_port)]
    return subprocess.Popen(command)
