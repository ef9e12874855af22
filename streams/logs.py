"""The one logging setup of every process: level and format from the settings, secrets masked.

Every log call of the product reads `event key=%d key=%s ...` (an event name, then
fields). In the JSON format each record is one object on one line, with `time`,
`level`, `logger`, `message`, `process`, the `event`, each `key=%x` field of the
message with its argument (a number stays a number) and any `extra=` fields. The text
format is the worker's classic one, `[time] [pid] [LEVEL] message`. Both formats mask
the settings' secrets and the password of any URL (SPEC section 6).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import IO, Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import SecretStr

from streams.log_rate import limit_repeated_messages
from streams.settings import Settings

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "[%(asctime)s] [%(process)s] [%(levelname)s] %(message)s"
MASK = "***"
# Loggers of the Kafka clients. A one-shot command (produce, resync-cache) says in one
# line what failed; the clients' retries (a refused connection: two ERROR lines and a
# WARNING per attempt) are written only at DEBUG, as before this setup (kafka-python's
# own NullHandler kept them out).
CLIENT_LOGGERS = ("kafka", "aiokafka")
# Loggers whose messages follow `event key=value ...` (logging.getLogger(__name__)).
PRODUCT_LOGGERS = frozenset({"streams", "segments"})

# A printf directive: %[(name)][flags][width][.precision][length]type
_DIRECTIVE = re.compile(
    r"%(?:\((?P<name>\w+)\))?[#0\- +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?"
    r"(?P<type>[diouxXeEfFgGcrsa%])"
)
_FIELD_NAME = re.compile(r"([A-Za-z_][\w.]*)=$")
_LITERAL_FIELD = re.compile(r"(?<!\S)([A-Za-z_][\w.]*)=([^\s%]+)(?=\s|$)")
_EVENT = re.compile(r"^[a-z][a-z0-9_]*$")
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+(@)", re.IGNORECASE)
# Every attribute a LogRecord has of itself: anything else came in through `extra=`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_RESERVED = frozenset({"time", "level", "logger", "message", "process", "event", "exception"})


class Redactor:
    """Replaces each secret, and the password of any URL, with ***."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first: a secret that contains another is masked whole.
        self.secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return _URL_PASSWORD.sub(rf"\1{MASK}\2", text)


def settings_secrets(settings: Settings) -> list[str]:
    """Every secret value of the settings: the SecretStr fields and passwords in URLs."""
    found = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, str) and "://" in value:
            password = urlsplit(value).password
            if password:
                found.append(password)
    return found


def message_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The `key=%x` fields of the record's template with their arguments, its constant
    `key=value` fields (the product's loggers only), then `extra=` ones.

    A field is left out when the template's directives do not match the arguments one
    to one (a message built before logging has only its text).
    """
    fields: dict[str, Any] = {}
    template = record.msg if isinstance(record.msg, str) else ""
    args = record.args
    if template and isinstance(args, tuple) and args:
        directives = [m for m in _DIRECTIVE.finditer(template) if m["type"] != "%"]
        plain = all(
            m["name"] is None and m["width"] != "*" and m["precision"] != "*" for m in directives
        )
        if plain and len(directives) == len(args):
            for directive, arg in zip(directives, args, strict=True):
                named = _FIELD_NAME.search(template, 0, directive.start())
                if named is not None and named.end() == directive.start():
                    fields[named[1]] = _field_value(directive, arg)
    if template and record.name.split(".", 1)[0] in PRODUCT_LOGGERS:
        # The product's templates also carry constant fields, e.g. local_state=discarded.
        for match in _LITERAL_FIELD.finditer(template):
            fields.setdefault(match[1], match[2])
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_"):
            fields[key] = value
    return fields


def _field_value(directive: re.Match[str], arg: Any) -> Any:
    kind = directive["type"]
    number = isinstance(arg, int | float) and not isinstance(arg, bool)
    if arg is None:
        return None
    if kind in "diu" and number:
        return int(arg)
    if kind in "eEfFgG" and number:
        return float(directive[0] % (arg,))
    if kind == "s" and (number or isinstance(arg, bool)):
        return arg
    if kind == "r" and isinstance(arg, str):
        return arg
    return directive[0] % (arg,)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring)."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "process": record.process,
        }
        first = message.split(" ", 1)[0]
        if _EVENT.match(first):
            document["event"] = first
        for key, value in message_fields(record).items():
            document[f"{key}_" if key in _RESERVED else key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(_redacted(document, self.redact), default=str).decode()


def _redacted(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: _redacted(item, redact) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item, redact) for item in value]
    if isinstance(value, bool | int | float) or value is None:
        return value
    return redact(str(value))


class TextFormatter(logging.Formatter):
    """`[time] [pid] [LEVEL] message`, the worker's format since the start, secrets masked."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__(TEXT_FORMAT)
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


def configure_logging(
    level: str = "INFO",
    log_format: LogFormat = "text",
    secrets: Iterable[str] = (),
    *,
    stream: IO[str] | None = None,
    quiet_clients: bool = False,
) -> logging.Handler:
    """Replaces the root logger's handlers with one handler writing to `stream` (stderr).

    Each repeated warning or error is written at most once per 10 s (streams.log_rate);
    Python warnings go through logging too. With `quiet_clients`, the Kafka clients'
    loggers write nothing unless `level` is DEBUG.
    """
    redact = Redactor(secrets)
    formatter: logging.Formatter = (
        JsonFormatter(redact) if log_format == "json" else TextFormatter(redact)
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    quiet = quiet_clients and logging.getLevelName(level) != logging.DEBUG
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1 if quiet else logging.NOTSET)
    logging.captureWarnings(True)
    # The Kafka client logs a refused connection thousands of times a second while the
    # broker is down (docs/operations.md).
    limit_repeated_messages(root)
    return handler


def configure_from(settings: Settings, *, quiet_clients: bool = False) -> logging.Handler:
    """configure_logging with SEGMENTS_LOG_LEVEL, SEGMENTS_LOG_FORMAT and the settings' secrets."""
    return configure_logging(
        settings.log_level,
        settings.log_format,
        settings_secrets(settings),
        quiet_clients=quiet_clients,
    )
