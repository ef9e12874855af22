"""The worker's view of the SEGMENTS_* settings, plus the few knobs only the worker has."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.settings import Topics


@dataclass(frozen=True)
class WorkerConfig:
    kafka_bootstrap: str = "127.0.0.1:9092"
    rules: str | None = None  # None: the example rule set shipped in the package
    clock: str = "wall"  # wall | event
    topic_prefix: str = ""
    app_id: str = "purchase-segments"
    partitions: int = 8
    data_dir: Path = Path("./.segments-data")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    changes_retention_ms: int | None = None
    tick_interval: float = 0.5  # seconds between ticks per owned partition

    @property
    def names(self) -> Topics:
        return Topics(self.topic_prefix)


def load_config(**overrides: Any) -> WorkerConfig:
    """From the project's one settings object (streams.settings): SEGMENTS_* and `.env`."""
    import click

    from streams.settings import SettingsError, load_settings

    try:
        settings = load_settings(**overrides)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    return WorkerConfig(
        kafka_bootstrap=settings.kafka_bootstrap,
        rules=str(settings.rules),
        clock=settings.clock,
        topic_prefix=settings.topic_prefix,
        app_id=settings.app_id,
        partitions=settings.partitions,
        data_dir=Path(settings.data_dir),
        web_host=settings.web_host,
        web_port=settings.web_port,
    )
