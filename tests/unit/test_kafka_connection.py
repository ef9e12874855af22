"""SEGMENTS_KAFKA_* security settings: validation at start, and the one mapping to each
Kafka client library's arguments (streams/kafka/connection.py)."""

from __future__ import annotations

import ast
import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from streams.kafka.connection import KafkaConnection
from streams.settings import SettingsError, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pa55-w0rd-never-shown"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SEGMENTS_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed CA, a client certificate it signed and that certificate's key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    here = tmp_path_factory.mktemp("pem")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=here, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "ca.key",
            "-out", "ca.pem", "-subj", "/CN=test ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
            "-subj", "/CN=client")  # fmt: skip
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", "client.pem")  # fmt: skip
    (here / "not-pem.txt").write_text("hello\n")
    return {name: here / name for name in ("ca.pem", "client.pem", "client.key", "not-pem.txt")}


def connection(**settings: object) -> KafkaConnection:
    return KafkaConnection.from_settings(load_settings(None, **settings))


def problems(**settings: object) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        load_settings(None, **settings)
    return caught.value.problems


SASL_SSL = {
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "segments",
    "kafka_sasl_password": PASSWORD,
}


def test_plaintext_is_the_default_and_adds_nothing_but_the_protocol() -> None:
    kafka = connection()
    assert kafka.security_protocol == "PLAINTEXT"
    expected = {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}
    assert kafka.kafka_python_args() == expected
    assert kafka.aiokafka_args() == expected
    assert kafka.faust_credentials() is None
    assert kafka.kafka_python_args(client_id="x")["client_id"] == "x"


def test_the_variables_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, pem: dict[str, Path]
) -> None:
    monkeypatch.setenv("SEGMENTS_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("SEGMENTS_KAFKA_SASL_MECHANISM", "scram_sha_256")
    monkeypatch.setenv("SEGMENTS_KAFKA_SASL_USERNAME", "segments")
    monkeypatch.setenv("SEGMENTS_KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("SEGMENTS_KAFKA_SSL_CAFILE", str(pem["ca.pem"]))
    settings = load_settings(None)
    kafka = KafkaConnection.from_settings(settings)
    assert (kafka.security_protocol, kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-256")
    assert kafka.ssl_cafile == pem["ca.pem"]
    assert PASSWORD not in repr(settings) + repr(kafka) + kafka.describe()


def test_sasl_ssl_maps_to_each_library(pem: dict[str, Path]) -> None:
    kafka = connection(**SASL_SSL, kafka_ssl_cafile=pem["ca.pem"])
    sasl = {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "segments",
        "sasl_plain_password": PASSWORD,
    }
    assert kafka.kafka_python_args() == {
        "bootstrap_servers": "127.0.0.1:9092",
        **sasl,
        "ssl_check_hostname": True,
        "ssl_cafile": str(pem["ca.pem"]),
    }
    aiokafka = kafka.aiokafka_args()
    context = aiokafka.pop("ssl_context")
    assert aiokafka == {"bootstrap_servers": "127.0.0.1:9092", **sasl}
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1  # the CA file, not the system's
    # Faust hands its credentials to its own aiokafka clients: the same arguments.
    assert credentials_to_aiokafka_auth(kafka.faust_credentials()) == {
        **sasl,
        "ssl_context": context,
    }


def test_sasl_plaintext_has_no_tls(pem: dict[str, Path]) -> None:
    kafka = connection(**{**SASL_SSL, "kafka_security_protocol": "SASL_PLAINTEXT"})
    assert "ssl_context" not in kafka.aiokafka_args()
    assert not any(name.startswith("ssl_") for name in kafka.kafka_python_args())
    auth = credentials_to_aiokafka_auth(kafka.faust_credentials())
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["ssl_context"] is None
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"


def test_the_mechanism_defaults_to_plain_as_in_the_kafka_clients() -> None:
    kafka = connection(**{**SASL_SSL, "kafka_sasl_mechanism": ""})
    assert kafka.kafka_python_args()["sasl_mechanism"] == "PLAIN"
    assert credentials_to_aiokafka_auth(kafka.faust_credentials())["sasl_mechanism"] == "PLAIN"


def test_ssl_with_a_client_certificate_maps_to_each_library(pem: dict[str, Path]) -> None:
    kafka = connection(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=pem["ca.pem"],
        kafka_ssl_certfile=pem["client.pem"],
        kafka_ssl_keyfile=pem["client.key"],
    )
    args = kafka.kafka_python_args()
    assert args["security_protocol"] == "SSL"
    assert (args["ssl_certfile"], args["ssl_keyfile"]) == (
        str(pem["client.pem"]),
        str(pem["client.key"]),
    )
    assert not any(name.startswith("sasl_") for name in args)
    assert credentials_to_aiokafka_auth(kafka.faust_credentials()) == {
        "security_protocol": "SSL",
        "ssl_context": kafka.ssl_context,
    }


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"kafka_security_protocol": "SASL_SS"},
            "SEGMENTS_KAFKA_SECURITY_PROTOCOL: must be PLAINTEXT, SSL, SASL_PLAINTEXT or"
            " SASL_SSL (did you mean SASL_SSL?), got 'SASL_SS'",
        ),
        (
            {**SASL_SSL, "kafka_sasl_mechanism": "SCRAM-SHA512"},
            "SEGMENTS_KAFKA_SASL_MECHANISM: must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
            " (did you mean SCRAM-SHA-512?), got 'SCRAM-SHA512'",
        ),
        (
            {**SASL_SSL, "kafka_sasl_username": ""},
            "SEGMENTS_KAFKA_SASL_USERNAME: must be set when SEGMENTS_KAFKA_SECURITY_PROTOCOL"
            " is SASL_SSL",
        ),
        (
            {**SASL_SSL, "kafka_sasl_password": None},
            "SEGMENTS_KAFKA_SASL_PASSWORD: must be set when SEGMENTS_KAFKA_SECURITY_PROTOCOL"
            " is SASL_SSL",
        ),
        (
            {"kafka_sasl_username": "segments"},
            "SEGMENTS_KAFKA_SASL_USERNAME: is set but SEGMENTS_KAFKA_SECURITY_PROTOCOL is"
            " PLAINTEXT",
        ),
        (
            {**SASL_SSL, "kafka_security_protocol": "SASL_PLAINTEXT", "kafka_ssl_cafile": "x"},
            "SEGMENTS_KAFKA_SSL_CAFILE: must name a readable PEM file (No such file or"
            " directory), got 'x'",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/nonexistent/c.pem"},
            "SEGMENTS_KAFKA_SSL_CERTFILE: must name a readable PEM file",
        ),
    ],
)
def test_a_bad_security_setting_names_its_variable(
    settings: dict[str, object], expected: str
) -> None:
    found = problems(**settings)
    assert any(problem.startswith(expected) for problem in found), found
    assert not any(PASSWORD in problem for problem in found)


def test_tls_files_must_be_pem_and_used_by_a_tls_protocol(pem: dict[str, Path]) -> None:
    [found] = problems(kafka_security_protocol="SSL", kafka_ssl_cafile=pem["not-pem.txt"])
    assert found.startswith("SEGMENTS_KAFKA_SSL_CAFILE: holds no PEM CA certificate")
    [found] = problems(
        kafka_security_protocol="SSL",
        kafka_ssl_certfile=pem["client.pem"],
        kafka_ssl_keyfile=pem["ca.pem"],  # a certificate, not the key
    )
    assert found.startswith(
        "SEGMENTS_KAFKA_SSL_CERTFILE and SEGMENTS_KAFKA_SSL_KEYFILE: not a PEM certificate"
    )
    [found] = problems(kafka_security_protocol="SSL", kafka_ssl_keyfile=pem["client.key"])
    assert found.startswith(
        "SEGMENTS_KAFKA_SSL_KEYFILE: is set without SEGMENTS_KAFKA_SSL_CERTFILE"
    )
    [found] = problems(kafka_ssl_cafile=pem["ca.pem"])
    assert found.startswith("SEGMENTS_KAFKA_SSL_CAFILE: is set but")
    assert found.endswith("TLS needs SSL or SASL_SSL")


def test_a_bad_password_value_is_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTS_KAFKA_SASL_PASSWORD", PASSWORD)
    with pytest.raises(SettingsError) as caught:
        load_settings(None)
    assert "SEGMENTS_KAFKA_SASL_PASSWORD: is set but" in str(caught.value)
    assert PASSWORD not in str(caught.value)


# Every constructor of a Kafka client in the two libraries.
CLIENTS = {
    "KafkaProducer",
    "KafkaConsumer",
    "KafkaAdminClient",
    "AIOKafkaProducer",
    "AIOKafkaConsumer",
    "AIOKafkaAdminClient",
    "AIOKafkaClient",
}


def test_every_kafka_client_of_the_product_gets_its_arguments_from_the_one_mapping() -> None:
    """A client built with its own `bootstrap_servers=` would connect without the security
    settings: every one in streams/ takes `**kafka.kafka_python_args()` or `aiokafka_args()`."""
    found, offenders = 0, []
    for path in sorted((ROOT / "streams").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in CLIENTS:
                continue
            found += 1
            mapped = [
                keyword
                for keyword in node.keywords
                if keyword.arg is None
                and isinstance(keyword.value, ast.Call)
                and getattr(keyword.value.func, "attr", None)
                in ("kafka_python_args", "aiokafka_args")
            ]
            if not mapped or any(keyword.arg == "bootstrap_servers" for keyword in node.keywords):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert found >= 10, "the scan finds the product's clients"
    assert offenders == []
