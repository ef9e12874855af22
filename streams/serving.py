"""Serving: the cache sink, the trigger dispatcher and the HTTP API in one asyncio task group."""

from __future__ import annotations

import logging
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
    # Webhook attempts before a change goes to the trigger dead-letter topic.
    trigger_attempts: int = 6

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
