"""The one configuration of every process: SEGMENTS_* environment variables (and `.env`).

`load_settings()` is the one entry point: it returns a frozen `Settings` or raises
`SettingsError` whose message names each bad variable, what it must be and what it got.
Every process takes its part of the same object (the worker its Kafka, Faust and web
fields, serving its Redis, web and trigger fields); none keeps a copy with defaults
of its own.
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from segments.adapters import IdentityMap
from segments.data import EXAMPLE_RULES

ENV_PREFIX = "SEGMENTS_"
DEFAULT_ENV_FILE = ".env"

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Kafka's own rule for topic names (and so for everything that becomes part of one).
_KAFKA_NAME = re.compile(r"^[A-Za-z0-9._-]*$")
# Room left for the longest topic name we derive, e.g. "<app_id>-customers-changelog".
_MAX_PREFIX = 150

# SEGMENTS_KAFKA_SECURITY_PROTOCOL and _SASL_MECHANISM (streams/kafka/connection.py).
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SECURITY_PROTOCOLS: tuple[SecurityProtocol, ...] = (
    "PLAINTEXT",
    "SSL",
    "SASL_PLAINTEXT",
    "SASL_SSL",
)
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic of SPEC section 6, each with the configured prefix."""

    prefix: str = ""

    @property
    def purchases(self) -> str:
        """Canonical purchase events (SPEC section 1), key = customer id."""
        return f"{self.prefix}purchases"

    @property
    def purchases_pos(self) -> str:
        """Native POS receipts, turned into canonical events by the adapter agent."""
        return f"{self.prefix}purchases.pos"

    @property
    def purchases_online(self) -> str:
        """Native online-shop order webhooks, turned into canonical events by the adapter."""
        return f"{self.prefix}purchases.online"

    @property
    def purchases_dlq(self) -> str:
        """Rejected input: original bytes with a machine-readable reason."""
        return f"{self.prefix}purchases.dlq"

    @property
    def segment_changes(self) -> str:
        """Entered/exited events (SPEC section 4), key = customer id."""
        return f"{self.prefix}segment-changes"

    @property
    def segment_memberships(self) -> str:
        """Compacted current membership, key = `customer_id|segment`, tombstone on exit."""
        return f"{self.prefix}segment-memberships"

    @property
    def trait_changes(self) -> str:
        """Trait value changes (SPEC section 3, traits), key = customer id."""
        return f"{self.prefix}trait-changes"

    @property
    def trait_values(self) -> str:
        """Compacted last trait change, key = `customer_id|trait`, never a tombstone."""
        return f"{self.prefix}trait-values"

    @property
    def ticks(self) -> str:
        """Clock ticks that wake each partition's time-driven transitions."""
        return f"{self.prefix}ticks"

    @property
    def triggers_dlq(self) -> str:
        """Trigger calls that failed for their whole retry span (created by the dispatcher)."""
        return f"{self.prefix}triggers.dlq"

    def all(self) -> tuple[str, ...]:
        """The topics the worker creates, in the order data flows through them."""
        return (
            self.purchases_pos,
            self.purchases_online,
            self.purchases,
            self.ticks,
            self.segment_changes,
            self.segment_memberships,
            self.trait_changes,
            self.trait_values,
            self.purchases_dlq,
        )


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where the cache lives: SEGMENTS_REDIS_URL, _CLUSTER and the _SSL_* files.

    cluster: the URL names one node of a Redis Cluster (any node; the client learns the
    others from it). TLS is the `rediss://` scheme; cafile is the CA that signed the
    server's certificate (unset: the system's), certfile and keyfile a client
    certificate for servers that ask for one.
    """

    url: str
    cluster: bool = False
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @classmethod
    def of(cls, target: RedisTarget | str) -> RedisTarget:
        """A target as given, or a URL alone as a single-node target."""
        return target if isinstance(target, RedisTarget) else cls(target)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "rediss"

    def ssl_options(self) -> dict[str, Any]:
        """redis-py's connection options for the _SSL_* files (empty without TLS)."""
        if not self.tls:
            return {}
        options: dict[str, Any] = {}
        if self.ssl_cafile is not None:
            options["ssl_ca_certs"] = str(self.ssl_cafile)
        if self.ssl_certfile is not None:
            options["ssl_certfile"] = str(self.ssl_certfile)
        if self.ssl_keyfile is not None:
            options["ssl_keyfile"] = str(self.ssl_keyfile)
        return options

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of a raw connection (the lookup's pipelined reader); None: plain."""
        if not self.tls:
            return None
        context = ssl.create_default_context(
            cafile=str(self.ssl_cafile) if self.ssl_cafile is not None else None
        )
        if self.ssl_certfile is not None:
            context.load_cert_chain(
                str(self.ssl_certfile),
                str(self.ssl_keyfile) if self.ssl_keyfile is not None else None,
            )
        return context


class Settings(BaseSettings):
    """SPEC section 6's configuration table; each field is SEGMENTS_<FIELD NAME>."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=DEFAULT_ENV_FILE,
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",  # unknown SEGMENTS_* names are reported by load_settings()
        frozen=True,
    )

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port...]"
    )
    # How every Kafka client connects (streams/kafka/connection.py; docs/operations.md).
    kafka_security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_mechanism: str | None = Field(
        None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL protocols; default PLAIN)"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user (SASL protocols)")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (SASL protocols); never logged"
    )
    kafka_ssl_cafile: Path | None = Field(
        None,
        description="PEM CA certificates the brokers' certificates chain to; unset: the system's",
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="PEM client certificate (SSL protocols, when the brokers ask for one)"
    )
    kafka_ssl_keyfile: Path | None = Field(None, description="PEM key of the client certificate")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis of the membership cache")
    rules: Path = Field(EXAMPLE_RULES, description="Rule file (YAML, SPEC section 3)")
    clock: Literal["wall", "event"] = Field(
        "wall", description="wall: the wall clock; event: per-partition event time"
    )
    topic_prefix: str = Field("", description="Prefix of every topic name")
    redis_prefix: str = Field("", description="Prefix of every Redis key")
    # Redis Cluster and TLS (docs/serving.md "Redis Cluster and TLS").
    redis_cluster: bool = Field(
        False,
        description="SEGMENTS_REDIS_URL names one node of a Redis Cluster; the others are"
        " learnt from it",
    )
    redis_ssl_cafile: Path | None = Field(
        None,
        description="CA file that signed the Redis server's certificate (rediss:// only);"
        " unset: the system's CAs",
    )
    redis_ssl_certfile: Path | None = Field(
        None, description="Client certificate for a Redis that asks for one (rediss:// only)"
    )
    redis_ssl_keyfile: Path | None = Field(
        None, description="Private key of SEGMENTS_REDIS_SSL_CERTFILE (rediss:// only)"
    )
    app_id: str = Field(
        "purchase-segments", description="Faust app id: consumer group and changelog names"
    )
    partitions: int = Field(8, gt=0, description="Partitions of every topic keyed by customer")
    replication_factor: int | None = Field(
        None,
        gt=0,
        description="Replicas of every topic the product creates; unset: the broker's"
        " default.replication.factor",
    )
    data_dir: Path = Field(Path("./.segments-data"), description="RocksDB tables and local state")
    web_host: str = Field("127.0.0.1", description="Address the worker's HTTP server binds")
    web_port: int = Field(6066, ge=1, le=65535, description="Port of the worker's HTTP server")
    web_advertised_host: str | None = Field(
        None,
        description="Host other workers reach this worker's HTTP server at (an explain request"
        " is forwarded to the worker that owns the customer); unset: SEGMENTS_WEB_HOST, or the"
        " machine's host name when that is 0.0.0.0 or ::",
    )
    api_token: SecretStr | None = Field(
        None, description="When set, HTTP requests need `Authorization: Bearer <token>`"
    )
    changes_retention: str | None = Field(
        None,
        description="Retention of segment-changes when the worker creates it: <n>ms|s|m|h|d or"
        " 'forever'; unset: the broker's default",
    )
    identity_map: Path | None = Field(
        None,
        description="Identity file (CSV or JSON) joining POS loyalty ids and online customer"
        " ids into one customer_id; unset: each native id is its own customer",
    )

    # Webhook delivery of triggers (streams/serving/triggers.py; docs/serving.md "Triggers").
    trigger_retry_span: float = Field(
        3600.0,
        description="How long a failing webhook call is retried before it goes to triggers.dlq:"
        " a duration (1h, 90m, 30s, 500ms) or seconds",
    )
    trigger_retry_delay: float = Field(
        1.0, description="Bound of the first retry delay; it doubles per attempt (full jitter)"
    )
    trigger_retry_max_delay: float = Field(
        300.0, description="Largest bound of the delay between two attempts of one call"
    )
    trigger_timeout: float = Field(10.0, description="Timeout of one webhook call (one attempt)")
    trigger_concurrency: int = Field(16, description="Webhook calls in flight per webhook URL")

    # Logs of every process (streams/logs.py; docs/operations.md "Logs").
    log_level: str = Field(
        "INFO", description="Lowest level written: DEBUG, INFO, WARNING, ERROR or CRITICAL"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text: [time] [pid] [LEVEL] message; json: one object per line"
    )

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        servers = [server.strip() for server in value.split(",")]
        for server in servers:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("must be host:port[,host:port...]")
        return ",".join(servers)

    @field_validator("kafka_security_protocol", mode="before")
    @classmethod
    def _check_security_protocol(cls, value: Any) -> Any:
        return _one_of(value, SECURITY_PROTOCOLS)

    @field_validator("kafka_sasl_mechanism", mode="before")
    @classmethod
    def _check_sasl_mechanism(cls, value: Any) -> Any:
        return None if value in (None, "") else _one_of(value, SASL_MECHANISMS)

    @field_validator(
        "kafka_sasl_username", "kafka_sasl_password", "kafka_ssl_cafile", "kafka_ssl_certfile",
        "kafka_ssl_keyfile", mode="before",
    )  # fmt: skip
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
    @classmethod
    def _check_readable_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        path = value.expanduser()
        try:
            path.read_bytes()
        except OSError as error:
            raise ValueError(f"must name a readable PEM file ({error.strerror})") from None
        return path

    @model_validator(mode="after")
    def _check_kafka_security(self) -> Settings:
        problems = kafka_security_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix") or not (parts.netloc or parts.path):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("redis_cluster")
    @classmethod
    def _check_redis_cluster(cls, value: bool, info: ValidationInfo) -> bool:
        url = info.data.get("redis_url")
        if value and url is not None:
            parts = urlsplit(url)
            if parts.scheme == "unix":
                raise ValueError("needs a redis:// or rediss:// SEGMENTS_REDIS_URL, not unix://")
            if parts.path.strip("/") not in ("", "0"):
                raise ValueError("needs database 0 in SEGMENTS_REDIS_URL (a Cluster has no other)")
        return value

    @field_validator("redis_ssl_cafile", "redis_ssl_certfile", "redis_ssl_keyfile", mode="before")
    @classmethod
    def _check_redis_ssl_file(cls, value: Any, info: ValidationInfo) -> Any:
        if value in (None, ""):
            return None
        url = info.data.get("redis_url")
        if url is not None and urlsplit(url).scheme != "rediss":
            raise ValueError("applies to a rediss:// SEGMENTS_REDIS_URL only")
        if info.field_name == "redis_ssl_keyfile" and info.data.get("redis_ssl_certfile") is None:
            raise ValueError("needs SEGMENTS_REDIS_SSL_CERTFILE")
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError("must name an existing file")
        return path

    @field_validator("rules")
    @classmethod
    def _check_rules(cls, value: Path) -> Path:
        path = value.expanduser()
        if not path.is_file():
            raise ValueError("must name an existing rule file")
        return path

    @field_validator("topic_prefix", "app_id")
    @classmethod
    def _check_kafka_name(cls, value: str) -> str:
        if not _KAFKA_NAME.match(value) or len(value) > _MAX_PREFIX:
            raise ValueError(
                f"must be at most {_MAX_PREFIX} letters, digits, '.', '_' or '-'"
                " (it becomes part of Kafka topic names)"
            )
        return value

    @field_validator("app_id")
    @classmethod
    def _check_app_id_not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("redis_prefix")
    @classmethod
    def _check_redis_prefix(cls, value: str) -> str:
        # A brace would become the key's hash tag and move keys across cluster slots.
        if "{" in value or "}" in value:
            raise ValueError("must not contain '{' or '}' (keys use them as hash tags)")
        return value

    @field_validator("web_host")
    @classmethod
    def _check_web_host(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a host name or address")
        return value.strip()

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("changes_retention", mode="before")
    @classmethod
    def _check_changes_retention(cls, value: Any) -> Any:
        if value in (None, ""):
            return None
        text = str(value).strip().lower()
        if text != "forever" and retention_ms(text) is None:
            raise ValueError("must be a duration like 30d, 12h, 90m, 3600s, 500ms, or 'forever'")
        return text

    @field_validator("identity_map", mode="before")
    @classmethod
    def _check_identity_map(cls, value: Any) -> Any:
        if value in (None, ""):
            return None
        path = Path(value).expanduser()
        try:
            IdentityMap.load(path)
        except OSError as error:
            raise ValueError(f"cannot read the identity file: {error.strerror}") from None
        except ValueError as error:
            raise ValueError(f"not a valid identity file: {error}") from None
        return path

    @field_validator(
        "trigger_retry_span",
        "trigger_retry_delay",
        "trigger_retry_max_delay",
        "trigger_timeout",
        mode="before",
    )
    @classmethod
    def _check_trigger_duration(cls, value: Any) -> float:
        seconds = duration_seconds(str(value).strip().lower())
        if seconds is None:
            raise ValueError("must be a positive duration like 1h, 5m, 10s, 50ms, or seconds")
        return seconds

    @field_validator("trigger_concurrency", mode="before")
    @classmethod
    def _check_trigger_concurrency(cls, value: Any) -> int:
        text = str(value).strip()
        if not text.isdigit() or int(text) == 0:
            raise ValueError("must be a positive integer")
        return int(text)

    @field_validator("log_level", mode="before")
    @classmethod
    def _check_log_level(cls, value: Any) -> str:
        level = str(value).strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_log_format(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def changes_retention_ms(self) -> int | None:
        """`retention.ms` for segment-changes: None = broker default, -1 = forever."""
        if self.changes_retention is None:
            return None
        if self.changes_retention == "forever":
            return -1
        return retention_ms(self.changes_retention)

    @field_validator("data_dir")
    @classmethod
    def _expand_data_dir(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def redis_target(self) -> RedisTarget:
        """Where the cache lives, for every Redis client of the product."""
        return RedisTarget(
            self.redis_url,
            cluster=self.redis_cluster,
            ssl_cafile=self.redis_ssl_cafile,
            ssl_certfile=self.redis_ssl_certfile,
            ssl_keyfile=self.redis_ssl_keyfile,
        )

    @property
    def topics(self) -> Topics:
        """Topic names with this configuration's prefix."""
        return Topics(self.topic_prefix)

    @property
    def api_token_value(self) -> str | None:
        """The bearer token in clear, for the servers that compare it; None when unset."""
        return self.api_token.get_secret_value() if self.api_token is not None else None

    @property
    def cache_sink_group(self) -> str:
        """Consumer group of the cache sink on segment-changes."""
        return f"{self.app_id}-cache-sink"

    @property
    def triggers_group(self) -> str:
        """Consumer group of the trigger dispatcher on segment-changes."""
        return f"{self.app_id}-triggers"

    @property
    def faust_broker(self) -> str:
        """`kafka_bootstrap` as Faust's broker setting: `kafka://host:port;kafka://...`."""
        return ";".join(f"kafka://{server}" for server in self.kafka_bootstrap.split(","))


def _one_of(value: Any, allowed: tuple[str, ...]) -> str:
    """`value` upper-cased when it is one of `allowed`; else a ValueError with a did-you-mean."""
    text = str(value).strip().upper()
    if allowed == SASL_MECHANISMS:
        text = text.replace("_", "-")  # SCRAM_SHA_512 as some tools spell it
    if text in allowed:
        return text
    close = difflib.get_close_matches(text, allowed, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ValueError(f"must be {', '.join(allowed[:-1])} or {allowed[-1]}{hint}")


def kafka_security_problems(settings: Settings) -> list[str]:
    """What is inconsistent in the SEGMENTS_KAFKA_* security settings, one line each."""
    problems = []
    protocol = settings.kafka_security_protocol
    is_sasl = protocol in ("SASL_PLAINTEXT", "SASL_SSL")
    is_ssl = protocol in ("SSL", "SASL_SSL")
    named = f"{env_name('kafka_security_protocol')} is {protocol}"
    for field in ("kafka_sasl_username", "kafka_sasl_password"):
        if is_sasl and getattr(settings, field) is None:
            problems.append(f"{env_name(field)}: must be set when {named}")
    for field in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password"):
        if not is_sasl and getattr(settings, field) is not None:
            problems.append(
                f"{env_name(field)}: is set but {named}; SASL needs SASL_PLAINTEXT or SASL_SSL"
            )
    for field in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
        if not is_ssl and getattr(settings, field) is not None:
            problems.append(f"{env_name(field)}: is set but {named}; TLS needs SSL or SASL_SSL")
    if settings.kafka_ssl_keyfile is not None and settings.kafka_ssl_certfile is None:
        problems.append(
            f"{env_name('kafka_ssl_keyfile')}: is set without"
            f" {env_name('kafka_ssl_certfile')} (the certificate it is the key of)"
        )
    if is_ssl and not problems:
        problems += _tls_file_problems(
            settings.kafka_ssl_cafile, settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile
        )
    return problems


def _tls_file_problems(
    cafile: Path | None, certfile: Path | None, keyfile: Path | None
) -> list[str]:
    """Loads the CA, certificate and key as the clients will, so a wrong file fails here."""
    import ssl

    problems = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is not None:
        try:
            context.load_verify_locations(cafile=cafile)
        except (ssl.SSLError, ValueError) as error:
            problems.append(
                f"{env_name('kafka_ssl_cafile')}: holds no PEM CA certificate ({error}),"
                f" got {str(cafile)!r}"
            )
    if certfile is not None:
        try:
            context.load_cert_chain(certfile, keyfile)
        except (ssl.SSLError, ValueError) as error:
            names = env_name("kafka_ssl_certfile")
            if keyfile is not None:
                names += f" and {env_name('kafka_ssl_keyfile')}"
            problems.append(
                f"{names}: not a PEM certificate with its unencrypted private key ({error})"
            )
    return problems


_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h|d)$")
_MILLISECONDS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def retention_ms(text: str) -> int | None:
    """`30d` -> 2592000000; None for anything that is not a positive duration."""
    match = _DURATION.match(text)
    if match is None or int(match[1]) == 0:
        return None
    return int(match[1]) * _MILLISECONDS[match[2]]


_SECONDS = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)?$")


def duration_seconds(text: str) -> float | None:
    """`1h` -> 3600.0, `50ms` -> 0.05, `2.5` (seconds) -> 2.5; None unless a positive duration."""
    match = _SECONDS.match(text)
    if match is None or float(match[1]) == 0:
        return None
    return float(match[1]) * _MILLISECONDS[match[2] or "s"] / 1000


# What each variable must be, for errors whose pydantic wording would be about Python types.
_EXPECTED = {
    "clock": "'wall' or 'event'",
    "partitions": "a positive integer",
    "replication_factor": "a positive integer",
    "web_port": "a TCP port number (1-65535)",
    "log_format": "'text' or 'json'",
}


def redacted_url(url: str) -> str:
    """The URL for logs and errors: a password in it replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


class SettingsError(ValueError):
    """Invalid configuration; `problems` holds one line per bad variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


def env_name(field: str) -> str:
    """The environment variable of a Settings field: `partitions` -> `SEGMENTS_PARTITIONS`."""
    return ENV_PREFIX + field.upper()


def setting_names() -> frozenset[str]:
    """Every SEGMENTS_* variable that Settings reads."""
    return frozenset(env_name(field) for field in Settings.model_fields)


def load_settings(env_file: str | Path | None = DEFAULT_ENV_FILE, **overrides: Any) -> Settings:
    """Reads and validates the configuration: environment over `.env` over defaults.

    `overrides` (field names) win over both. Raises SettingsError naming every bad or
    unknown SEGMENTS_* variable, so a typo never silently falls back to a default.
    """
    file_values = _read_env_file(env_file)
    problems = _unknown_variables([*os.environ, *file_values])
    try:
        # `_env_file` is a pydantic-settings init argument its signature does not declare.
        settings = Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as error:
        problems += _describe(error)
        raise SettingsError(problems) from None
    if problems:
        raise SettingsError(problems)
    return settings


def _read_env_file(env_file: str | Path | None) -> Mapping[str, str | None]:
    if env_file is None or not Path(env_file).is_file():
        return {}
    return dotenv_values(env_file)


def _unknown_variables(names: list[str]) -> list[str]:
    known = setting_names()
    problems = []
    for name in sorted({name.upper() for name in names if name.upper().startswith(ENV_PREFIX)}):
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(known))}"
        problems.append(f"{name}: unknown setting; {hint}")
    return problems


def _describe(error: ValidationError) -> list[str]:
    problems = []
    for detail in error.errors():
        if not detail["loc"] and detail["type"] == "value_error":
            # A check across several variables (a model validator): its lines name them.
            problems += str(detail["ctx"]["error"]).splitlines()
            continue
        field = str(detail["loc"][0]) if detail["loc"] else "?"
        if detail["type"] == "value_error":
            reason = str(detail["ctx"]["error"])
        else:
            reason = f"must be {_EXPECTED.get(field, detail['msg'].lower())}"
        value = detail.get("input")
        if field in ("api_token", "kafka_sasl_password"):
            got = "<hidden>"
        elif field == "redis_url" and isinstance(value, str):
            got = repr(redacted_url(value))
        else:
            got = repr(str(value) if isinstance(value, Path) else value)
        problems.append(f"{env_name(field)}: {reason}, got {got}")
    return problems
