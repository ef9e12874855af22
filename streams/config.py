"""The worker's view of the SEGMENTS_* settings, plus the few knobs only the worker has.

Every value a user sets comes from streams.settings.Settings (its defaults are
the SPEC table); this only narrows it to what the worker reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.settings import Settings, Topics


@dataclass(frozen=True)
class WorkerConfig:
    kafka_bootstrap: str
    rules: str
    clock: str  # wall | event
    topic_prefix: str
    app_id: str
    partitions: int
    data_dir: Path
    web_host: str
    web_port: int
    changes_retention_ms: int | None  # None: the broker's default; -1: forever
    identity_map: Path | None  # None: every native id is its own customer
    tick_interval: float = 0.5  # seconds between ticks per owned partition
    # When set, every route of the worker's web server but /healthz and /readyz
    # needs `Authorization: Bearer <token>`; kept out of repr so it is never logged.
    api_token: str | None = field(default=None, repr=False)

    @property
    def names(self) -> Topics:
        return Topics(self.topic_prefix)

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerConfig:
        return cls(
            kafka_bootstrap=settings.kafka_bootstrap,
            rules=str(settings.rules),
            clock=settings.clock,
            topic_prefix=settings.topic_prefix,
            app_id=settings.app_id,
            partitions=settings.partitions,
            data_dir=Path(settings.data_dir),
            web_host=settings.web_host,
            web_port=settings.web_port,
            changes_retention_ms=settings.changes_retention_ms,
            identity_map=settings.identity_map,
            api_token=settings.api_token.get_secret_value() if settings.api_token else None,
        )


def load_config(**overrides: Any) -> WorkerConfig:
    """From the project's one settings object (streams.settings): SEGMENTS_* and `.env`."""
    import click

    from streams.settings import SettingsError, load_settings

    try:
        settings = load_settings(**overrides)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    return WorkerConfig.from_settings(settings)
