"""How every Kafka client of the product connects: bootstrap servers and security.

`KafkaConnection` is built from the settings (`KafkaConnection.from_settings`) and is the one place
that turns SEGMENTS_KAFKA_* into each client library's keyword arguments:
`kafka_python_args()` (produce, topics admin), `aiokafka_args()` (serve's consumers,
triggers, resync, the worker's broker probe) and `faust_credentials()` (the worker's
Faust app, which hands them to its own aiokafka clients). No other module passes
`bootstrap_servers` or a security option to a Kafka client.

The password is a SecretStr: it is unwrapped only in the keyword arguments, never in
`describe()`, a repr or an error message.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError
from pydantic import SecretStr

from streams.settings import SecurityProtocol, Settings

DEFAULT_SASL_MECHANISM = "PLAIN"  # Kafka clients' own default


@dataclass(frozen=True)
class KafkaConnection:
    """Where the brokers are and how to log in; `KafkaConnection("host:9092")` is plaintext."""

    bootstrap: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaConnection:
        """SEGMENTS_KAFKA_BOOTSTRAP and SEGMENTS_KAFKA_* (validated by the settings)."""
        return cls(
            bootstrap=settings.kafka_bootstrap,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_username=settings.kafka_sasl_username,
            sasl_password=settings.kafka_sasl_password,
            ssl_cafile=settings.kafka_ssl_cafile,
            ssl_certfile=settings.kafka_ssl_certfile,
            ssl_keyfile=settings.kafka_ssl_keyfile,
        )

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def mechanism(self) -> str:
        return self.sasl_mechanism or DEFAULT_SASL_MECHANISM

    def describe(self) -> str:
        """For logs and errors: servers, protocol, mechanism and user; never the password."""
        return f"{self.bootstrap} ({self.security()})"

    def security(self) -> str:
        """`SASL_SSL, SCRAM-SHA-512 as user 'u', CA /path`: what the clients use; no secret."""
        text: str = self.security_protocol
        if self.uses_sasl:
            text += f", {self.mechanism} as user {self.sasl_username!r}"
        if self.uses_ssl:
            text += f", CA {self.ssl_cafile or 'of the system'}"
        if self.ssl_certfile is not None:
            text += f", client certificate {self.ssl_certfile}"
        return text

    def kafka_python_args(self, **extra: Any) -> dict[str, Any]:
        """Keyword arguments for kafka-python's KafkaProducer/KafkaConsumer/KafkaAdminClient."""
        args: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
        }
        if self.uses_sasl:
            args.update(self._sasl_args())
        if self.uses_ssl:
            args["ssl_check_hostname"] = True
            for name, path in (
                ("ssl_cafile", self.ssl_cafile),
                ("ssl_certfile", self.ssl_certfile),
                ("ssl_keyfile", self.ssl_keyfile),
            ):
                if path is not None:
                    args[name] = str(path)
        return {**args, **extra}

    def aiokafka_args(self, **extra: Any) -> dict[str, Any]:
        """Keyword arguments for aiokafka's consumer, producer, admin client and AIOKafkaClient."""
        args: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
        }
        if self.uses_sasl:
            args.update(self._sasl_args())
        if self.uses_ssl:
            args["ssl_context"] = self.ssl_context
        return {**args, **extra}

    def faust_credentials(self) -> Any:
        """Faust's `broker_credentials`: None for PLAINTEXT, else SSL or SASL credentials.

        Faust's aiokafka driver turns them into the same aiokafka arguments as
        `aiokafka_args()` (faust/transport/drivers/aiokafka.py, credentials_to_aiokafka_auth);
        SASLCredentials with an ssl_context means SASL_SSL, without one SASL_PLAINTEXT.
        """
        import faust

        if self.uses_sasl:
            assert self.sasl_password is not None
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password.get_secret_value(),
                mechanism=self.mechanism,
                ssl_context=self.ssl_context if self.uses_ssl else None,
            )
        if self.uses_ssl:
            return faust.SSLCredentials(self.ssl_context)
        return None

    @cached_property
    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context of aiokafka and Faust: the CA (system CAs when unset), the
        client certificate and key when set, host name checked."""
        from aiokafka.helpers import create_ssl_context

        context: ssl.SSLContext = create_ssl_context(
            cafile=self.ssl_cafile,
            certfile=self.ssl_certfile,
            keyfile=self.ssl_keyfile,
        )
        return context

    def _sasl_args(self) -> dict[str, Any]:
        assert self.sasl_password is not None
        return {
            "sasl_mechanism": self.mechanism,
            "sasl_plain_username": self.sasl_username,
            "sasl_plain_password": self.sasl_password.get_secret_value(),
        }


class KafkaConnectionFailed(RuntimeError):
    """No bootstrap server accepted the connection; the message says why, without secrets.

    `fatal` is True when retrying cannot help (a refused login or certificate): the
    process must stop with the message rather than wait for the broker."""

    def __init__(self, message: str, *, fatal: bool) -> None:
        super().__init__(message)
        self.fatal = fatal


CHECK_TIMEOUT_S = 10.0


async def check_connection(kafka: KafkaConnection, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Connects to a bootstrap server and logs in as the clients will; raises
    KafkaConnectionFailed with the reason when none accepts.

    The client libraries report a refused login or an untrusted certificate only in a
    log line (aiokafka) or as an unrelated error (kafka-python: "broker does not support
    MetadataRequest_v0"), so every command checks the connection itself at start.
    """
    from aiokafka.conn import create_conn

    args = kafka.aiokafka_args(request_timeout_ms=int(timeout * 1000))
    del args["bootstrap_servers"]
    failures: list[KafkaConnectionFailed] = []
    for server in kafka.bootstrap.split(","):
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(create_conn(host, int(port), **args), timeout)
        except (OSError, TimeoutError, KafkaError) as error:
            failures.append(_explain(kafka, server, error))
            continue
        conn.close()
        return
    fatal = [failure for failure in failures if failure.fatal]
    raise (fatal or failures)[0]


def check_connection_now(kafka: KafkaConnection, timeout: float = CHECK_TIMEOUT_S) -> None:
    """`check_connection` from synchronous code, on a loop of its own (the current one, if
    any, is left alone: Faust sets up its own afterwards)."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(check_connection(kafka, timeout))
    finally:
        loop.close()


def _explain(kafka: KafkaConnection, server: str, error: BaseException) -> KafkaConnectionFailed:
    from aiokafka.errors import (
        AuthenticationFailedError,
        AuthenticationMethodNotSupported,
        IllegalSaslStateError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )

    where = f"cannot connect to Kafka at {server} ({kafka.security()})"
    if isinstance(error, ssl.SSLCertVerificationError):
        return KafkaConnectionFailed(
            f"{where}: the broker's TLS certificate is not trusted ({error.verify_message});"
            " SEGMENTS_KAFKA_SSL_CAFILE must name the CA that signed it, and the certificate"
            " must be for the host name in SEGMENTS_KAFKA_BOOTSTRAP",
            fatal=True,
        )
    if isinstance(error, ssl.SSLError):
        return KafkaConnectionFailed(
            f"{where}: the TLS handshake failed ({error.reason or error}); does this listener"
            " speak SEGMENTS_KAFKA_SECURITY_PROTOCOL, and does it need a client certificate"
            " (SEGMENTS_KAFKA_SSL_CERTFILE, SEGMENTS_KAFKA_SSL_KEYFILE)?",
            fatal=True,
        )
    if isinstance(
        error,
        SaslAuthenticationFailed
        | AuthenticationFailedError
        | AuthenticationMethodNotSupported
        | UnsupportedSaslMechanismError
        | IllegalSaslStateError,
    ):
        return KafkaConnectionFailed(
            f"{where}: the broker refused the login"
            f" ({type(error).__name__}: {_broker_says(error)}); check"
            " SEGMENTS_KAFKA_SASL_USERNAME, SEGMENTS_KAFKA_SASL_PASSWORD and"
            " SEGMENTS_KAFKA_SASL_MECHANISM",
            fatal=True,
        )
    unreachable = f"cannot reach Kafka at {server} ({kafka.security()})"
    if isinstance(error, TimeoutError):
        return KafkaConnectionFailed(
            f"{unreachable}: no answer within the timeout; if the listener uses TLS or SASL,"
            " does SEGMENTS_KAFKA_SECURITY_PROTOCOL match it?",
            fatal=False,
        )
    return KafkaConnectionFailed(
        f"{unreachable}: {_broker_says(error)}; is the broker running, is"
        " SEGMENTS_KAFKA_BOOTSTRAP its address, and does SEGMENTS_KAFKA_SECURITY_PROTOCOL"
        " match its listener?",
        fatal=False,
    )


def _broker_says(error: BaseException) -> str:
    """The error's text, with the library's "[Error 58] Name:" prefix dropped."""
    text = str(error)
    return text.split(": ", 1)[1] if text.startswith("[Error ") and ": " in text else text
