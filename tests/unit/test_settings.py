"""Settings: SPEC section 6 defaults, env and .env precedence, one clear error per variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from segments.data import EXAMPLE_RULES
from streams.settings import SettingsError, Topics, load_settings, redacted_url, setting_names


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No SEGMENTS_* from the caller's shell, and a working directory without a .env."""
    for name in list(os.environ):
        if name.upper().startswith("SEGMENTS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def problems_of(excinfo: pytest.ExceptionInfo[SettingsError]) -> list[str]:
    return excinfo.value.problems


def test_defaults_are_the_spec_table() -> None:
    settings = load_settings()

    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.rules == EXAMPLE_RULES
    assert settings.rules.is_file()
    assert settings.clock == "wall"
    assert settings.topic_prefix == ""
    assert settings.redis_prefix == ""
    assert settings.app_id == "purchase-segments"
    assert settings.partitions == 8
    assert settings.data_dir == Path("./.segments-data")
    assert settings.web_host == "127.0.0.1"
    assert settings.web_port == 6066
    assert settings.api_token is None


def test_every_spec_variable_is_a_setting() -> None:
    spec_variables = {
        "SEGMENTS_KAFKA_BOOTSTRAP",
        "SEGMENTS_REDIS_URL",
        "SEGMENTS_RULES",
        "SEGMENTS_CLOCK",
        "SEGMENTS_TOPIC_PREFIX",
        "SEGMENTS_REDIS_PREFIX",
        "SEGMENTS_APP_ID",
        "SEGMENTS_PARTITIONS",
        "SEGMENTS_DATA_DIR",
        "SEGMENTS_WEB_HOST",
        "SEGMENTS_WEB_PORT",
        "SEGMENTS_API_TOKEN",
        "SEGMENTS_REPLICATION_FACTOR",
    }
    assert spec_variables <= setting_names()


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\n")
    monkeypatch.setenv("SEGMENTS_KAFKA_BOOTSTRAP", "k1:9092, k2:9093")
    monkeypatch.setenv("SEGMENTS_RULES", str(rules))
    monkeypatch.setenv("SEGMENTS_CLOCK", "event")
    monkeypatch.setenv("SEGMENTS_PARTITIONS", "3")
    monkeypatch.setenv("SEGMENTS_WEB_PORT", "8080")
    monkeypatch.setenv("segments_topic_prefix", "t1.")  # names are case-insensitive

    settings = load_settings()

    assert settings.kafka_bootstrap == "k1:9092,k2:9093"
    assert settings.faust_broker == "kafka://k1:9092;kafka://k2:9093"
    assert settings.rules == rules
    assert settings.clock == "event"
    assert settings.partitions == 3
    assert settings.web_port == 8080
    assert settings.topic_prefix == "t1."


def test_dot_env_is_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("SEGMENTS_PARTITIONS=4\nSEGMENTS_APP_ID=from-file\n")
    monkeypatch.setenv("SEGMENTS_APP_ID", "from-env")

    settings = load_settings()

    assert settings.partitions == 4
    assert settings.app_id == "from-env"


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTS_PARTITIONS", "4")
    assert load_settings(partitions=2).partitions == 2


def test_an_explicit_env_file_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / "other.env"
    env_file.write_text("SEGMENTS_REDIS_PREFIX=test:\n")
    assert load_settings(env_file=env_file).redis_prefix == "test:"


@pytest.mark.parametrize("value", ["abc", "0", "-1", "2.5"])
def test_partitions_must_be_a_positive_integer(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SEGMENTS_PARTITIONS", value)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert problems_of(excinfo) == [
        f"SEGMENTS_PARTITIONS: must be a positive integer, got '{value}'"
    ]
    assert f"SEGMENTS_PARTITIONS: must be a positive integer, got '{value}'" in str(excinfo.value)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SEGMENTS_CLOCK", "stream", "must be 'wall' or 'event'"),
        ("SEGMENTS_WEB_PORT", "70000", "must be a TCP port number (1-65535)"),
        ("SEGMENTS_WEB_PORT", "http", "must be a TCP port number (1-65535)"),
        ("SEGMENTS_KAFKA_BOOTSTRAP", "localhost", "must be host:port[,host:port...]"),
        ("SEGMENTS_KAFKA_BOOTSTRAP", "a:9092,b:x", "must be host:port[,host:port...]"),
        (
            "SEGMENTS_REDIS_URL",
            "http://127.0.0.1:6379",
            "must be a redis://, rediss:// or unix:// URL",
        ),
        ("SEGMENTS_RULES", "/does/not/exist.yaml", "must name an existing rule file"),
        ("SEGMENTS_TOPIC_PREFIX", "bad prefix/", "must be at most 150 letters, digits"),
        ("SEGMENTS_APP_ID", "", "must not be empty"),
        ("SEGMENTS_REDIS_PREFIX", "seg{x}:", "must not contain '{' or '}'"),
    ],
)
def test_invalid_values_name_the_variable_and_the_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    [problem] = problems_of(excinfo)
    assert problem.startswith(f"{variable}: {expected}")
    assert problem.endswith(f"got {value!r}")


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTS_PARTITIONS", "many")
    monkeypatch.setenv("SEGMENTS_CLOCK", "sundial")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert [p.split(":")[0] for p in problems_of(excinfo)] == [
        "SEGMENTS_CLOCK",
        "SEGMENTS_PARTITIONS",
    ]


def test_a_misspelt_variable_is_an_error_with_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTS_PARTITON", "4")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert problems_of(excinfo) == [
        "SEGMENTS_PARTITON: unknown setting; did you mean SEGMENTS_PARTITIONS?"
    ]


def test_a_misspelt_variable_in_dot_env_is_an_error(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SEGMENTS_REDIS_URI=redis://x:6379/0\n")
    with pytest.raises(SettingsError, match="SEGMENTS_REDIS_URI: unknown setting"):
        load_settings()


def test_the_api_token_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTS_API_TOKEN", "s3cret-token")
    settings = load_settings()
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == "s3cret-token"
    assert "s3cret-token" not in repr(settings)
    assert "s3cret-token" not in str(settings.model_dump())


def test_the_replication_factor_defaults_to_the_brokers_and_must_be_positive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().replication_factor is None
    monkeypatch.setenv("SEGMENTS_REPLICATION_FACTOR", "3")
    assert load_settings().replication_factor == 3
    monkeypatch.setenv("SEGMENTS_REPLICATION_FACTOR", "0")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert problems_of(excinfo) == [
        "SEGMENTS_REPLICATION_FACTOR: must be a positive integer, got '0'"
    ]


def test_a_redis_password_is_never_shown_in_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTS_REDIS_URL", "http://cache:s3cret-pass@redis.internal:6379/0")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    (problem,) = problems_of(excinfo)
    assert "SEGMENTS_REDIS_URL" in problem
    assert "s3cret-pass" not in problem
    assert "http://cache:***@redis.internal:6379/0" in problem


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:p%40ss@h:1/0", "redis://u:***@h:1/0"),
        ("rediss://:pass@h:6380", "rediss://:***@h:6380"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://user@h", "redis://user@h"),
    ],
)
def test_redacted_url_hides_only_the_password(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


def test_segments_lookup_does_not_print_the_redis_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from streams.cli.lookup import lookup_command

    monkeypatch.setenv("SEGMENTS_REDIS_URL", "redis://cache:s3cret-pass@127.0.0.1:1/0")
    result = CliRunner().invoke(lookup_command, ["c-1"])
    assert result.exit_code == 1
    assert "did not answer" in result.output
    assert "s3cret-pass" not in result.output
    assert "redis://cache:***@127.0.0.1:1/0" in result.output


def test_an_empty_api_token_means_no_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTS_API_TOKEN", "")
    assert load_settings().api_token is None


def test_settings_are_immutable() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.partitions = 3  # type: ignore[misc]


def test_topic_names_carry_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTS_TOPIC_PREFIX", "test-1.")
    topics = load_settings().topics

    assert topics == Topics("test-1.")
    assert topics.purchases == "test-1.purchases"
    assert topics.purchases_pos == "test-1.purchases.pos"
    assert topics.purchases_online == "test-1.purchases.online"
    assert topics.purchases_dlq == "test-1.purchases.dlq"
    assert topics.segment_changes == "test-1.segment-changes"
    assert topics.segment_memberships == "test-1.segment-memberships"
    assert topics.ticks == "test-1.ticks"
    assert topics.trait_changes == "test-1.trait-changes"
    assert topics.trait_values == "test-1.trait-values"
    assert len(set(topics.all())) == 9
    assert all(name.startswith("test-1.") for name in topics.all())


def test_unprefixed_topic_names_are_the_spec_names() -> None:
    assert load_settings().topics.all() == (
        "purchases.pos",
        "purchases.online",
        "purchases",
        "ticks",
        "segment-changes",
        "segment-memberships",
        "trait-changes",
        "trait-values",
        "purchases.dlq",
    )


def test_changes_retention_and_identity_map_default_to_unset() -> None:
    settings = load_settings()
    assert settings.changes_retention is None
    assert settings.changes_retention_ms is None
    assert settings.identity_map is None


@pytest.mark.parametrize(
    ("value", "milliseconds"),
    [
        ("30d", 2_592_000_000),
        ("12h", 43_200_000),
        ("90m", 5_400_000),
        ("500ms", 500),
        ("FOREVER", -1),
        ("", None),
    ],
)
def test_changes_retention_is_a_duration(
    monkeypatch: pytest.MonkeyPatch, value: str, milliseconds: int | None
) -> None:
    monkeypatch.setenv("SEGMENTS_CHANGES_RETENTION", value)
    assert load_settings().changes_retention_ms == milliseconds


@pytest.mark.parametrize("value", ["30 days", "0d", "-1d", "1w", "d"])
def test_a_bad_changes_retention_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("SEGMENTS_CHANGES_RETENTION", value)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    [problem] = problems_of(excinfo)
    assert problem.startswith("SEGMENTS_CHANGES_RETENTION: must be a duration like 30d")
    assert repr(value) in problem


def test_the_identity_map_file_is_read_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    identities = tmp_path / "identities.csv"
    identities.write_text("customer_id,loyalty_id,shopify_customer_id\nc-1,L1,701\n")
    monkeypatch.setenv("SEGMENTS_IDENTITY_MAP", str(identities))
    assert load_settings().identity_map == identities


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "SEGMENTS_IDENTITY_MAP: cannot read the identity file: No such file"),
        ("loyalty_id\nL1\n", "SEGMENTS_IDENTITY_MAP: not a valid identity file: "),
        ("customer_id,loyalty_id\nc-1,L1\nc-2,L1\n", "SEGMENTS_IDENTITY_MAP: not a valid"),
    ],
)
def test_a_bad_identity_map_fails_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str | None, expected: str
) -> None:
    identities = tmp_path / "identities.csv"
    if text is not None:
        identities.write_text(text)
    monkeypatch.setenv("SEGMENTS_IDENTITY_MAP", str(identities))
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    [problem] = problems_of(excinfo)
    assert problem.startswith(expected), problem
