"""The log formats of every process: JSON fields from the message templates, secrets masked."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from streams.logs import (
    JsonFormatter,
    Redactor,
    TextFormatter,
    configure_logging,
    settings_secrets,
)
from streams.settings import SettingsError, load_settings

pytestmark = pytest.mark.unit


def record(
    msg: str,
    *args: Any,
    name: str = "streams.worker.processor",
    level: int = logging.INFO,
    exc_info: Any = None,
    **extra: Any,
) -> logging.LogRecord:
    made = logging.LogRecord(name, level, "x.py", 1, msg, args, exc_info)
    made.__dict__.update(extra)
    return made


def as_json(made: logging.LogRecord, secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    line = JsonFormatter(Redactor(secrets)).format(made)
    assert "\n" not in line
    parsed = orjson.loads(line)
    assert isinstance(parsed, dict)
    return parsed


def test_a_record_is_one_object_with_time_level_logger_message_and_its_fields() -> None:
    made = record(
        "partition_opened partition=%d customers=%d clock=%s republish=%d ratio=%.2f prefix=%r",
        3, 1200, None, 0, 0.4567, "shop-",
    )  # fmt: skip
    made.created = 1_780_000_000.25
    document = as_json(made)
    assert document == {
        "time": "2026-05-28T20:26:40.250Z",
        "level": "INFO",
        "logger": "streams.worker.processor",
        "message": "partition_opened partition=3 customers=1200 clock=None republish=0"
        " ratio=0.46 prefix='shop-'",
        "process": made.process,
        "event": "partition_opened",
        "partition": 3,
        "customers": 1200,
        "clock": None,
        "republish": 0,
        "ratio": 0.46,
        "prefix": "shop-",
    }


def test_constant_fields_extra_fields_and_reserved_names() -> None:
    document = as_json(
        record("unclean_stop_detected local_state=discarded level=%s", "x", topic="purchases")
    )
    assert document["local_state"] == "discarded"
    assert document["topic"] == "purchases"
    assert document["level"] == "INFO" and document["level_"] == "x"


def test_a_message_formatted_before_logging_keeps_only_its_text() -> None:
    # Faust's and the Kafka clients' lines: no template fields, no guessed ones.
    document = as_json(record("Unable connect to node with id=1: refused", name="aiokafka"))
    assert document["message"] == "Unable connect to node with id=1: refused"
    assert "id" not in document and "event" not in document
    # directives that do not match the arguments one to one: the text only
    document = as_json(record("odd partition=%d width=%*d", 1, 2, 3))
    assert "partition" not in document and document["message"] == "odd partition=1 width= 3"


def test_an_exception_is_one_field_on_the_same_line() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        made = record(
            "processing_error partition=%d", 2, level=logging.ERROR, exc_info=sys.exc_info()
        )
    document = as_json(made)
    assert document["level"] == "ERROR" and document["partition"] == 2
    assert document["exception"].startswith("Traceback (most recent call last):")
    assert document["exception"].endswith("ValueError: bad value")


def test_secrets_and_url_passwords_are_masked_everywhere() -> None:
    secrets = ("s3cret-token",)
    try:
        raise ConnectionError("AUTH s3cret-token refused")
    except ConnectionError:
        made = record(
            "redis_unavailable url=%s token=%s",
            "redis://user:hunter2@cache:6379/0",
            "s3cret-token",
            exc_info=sys.exc_info(),
        )
    line = JsonFormatter(Redactor(secrets)).format(made)
    assert "s3cret-token" not in line and "hunter2" not in line
    document = orjson.loads(line)
    assert document["url"] == "redis://user:***@cache:6379/0"
    assert document["token"] == "***"
    assert "AUTH *** refused" in document["exception"]
    text = TextFormatter(Redactor(secrets)).format(made)
    assert "s3cret-token" not in text and "hunter2" not in text
    assert "url=redis://user:***@cache:6379/0" in text


def test_the_settings_secrets_are_the_token_and_url_passwords(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SEGMENTS_API_TOKEN", "tok-123")
    monkeypatch.setenv("SEGMENTS_REDIS_URL", "redis://:pw-456@cache:6379/0")
    secrets = settings_secrets(load_settings(env_file=None))
    assert "tok-123" in secrets and "pw-456" in secrets


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in ("kafka", "aiokafka"):
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_root")
def test_configure_logging_writes_json_lines_at_the_level_through_one_handler() -> None:
    out = io.StringIO()
    configure_logging("WARNING", "json", ("tok-123",), stream=out)
    configure_logging("WARNING", "json", ("tok-123",), stream=out)  # again: still one handler
    assert len(logging.getLogger().handlers) == 1
    log = logging.getLogger("streams.test")
    log.info("not_written count=%d", 1)
    log.warning("written count=%d token=%s", 2, "tok-123")
    log.warning("written count=%d token=%s", 3, "tok-123")  # held back: the same template
    logging.getLogger("faust.worker").debug("not written")
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["event"], line["count"], line["token"]) for line in lines] == [
        ("written", 2, "***")
    ]


@pytest.mark.usefixtures("restore_root")
def test_one_shot_commands_leave_the_kafka_clients_lines_out_unless_debug() -> None:
    out = io.StringIO()
    configure_logging("INFO", "text", stream=out, quiet_clients=True)
    logging.getLogger("kafka.conn").error("Connect attempt returned error 111")
    logging.getLogger("aiokafka.conn").warning("connection refused")
    logging.getLogger("streams.cli.produce").info("produce_started")
    assert out.getvalue().splitlines()[0].endswith("[INFO] produce_started")
    assert len(out.getvalue().splitlines()) == 1
    configure_logging("DEBUG", "text", stream=out, quiet_clients=True)
    logging.getLogger("kafka.conn").debug("connecting")
    assert out.getvalue().splitlines()[-1].endswith("[DEBUG] connecting")


def test_the_log_level_and_format_are_validated_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SEGMENTS_LOG_LEVEL", "debug")
    monkeypatch.setenv("SEGMENTS_LOG_FORMAT", "JSON")
    settings = load_settings(env_file=None)
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")
    monkeypatch.setenv("SEGMENTS_LOG_LEVEL", "verbose")
    monkeypatch.setenv("SEGMENTS_LOG_FORMAT", "xml")
    with pytest.raises(SettingsError) as raised:
        load_settings(env_file=None)
    assert raised.value.problems == [
        "SEGMENTS_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'verbose'",
        "SEGMENTS_LOG_FORMAT: must be 'text' or 'json', got 'xml'",
    ]


def test_the_defaults_are_info_and_text(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SEGMENTS_LOG_LEVEL", "SEGMENTS_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(env_file=None)
    assert (settings.log_level, settings.log_format) == ("INFO", "text")
