"""Secret redaction in log lines, and the human/machine output helpers."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Iterator

import pyrage
import pytest

from pgvault import log
from pgvault.log import RedactingFilter, redact
from pgvault.output import human_bytes, human_duration, table, to_json

AGE_SECRET = str(pyrage.x25519.Identity.generate())

ENV_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD", "PGVAULT_ENCRYPTION_AGE_IDENTITY")


@pytest.fixture(autouse=True)
def no_env_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """redact() also masks the values of some environment variables; start from none."""
    for var in ENV_SECRETS:
        monkeypatch.delenv(var, raising=False)


# --- redact --------------------------------------------------------------------------------------


def test_age_secret_key_is_masked() -> None:
    text = f"identity {AGE_SECRET} loaded; again: {AGE_SECRET}."
    out = redact(text)
    assert AGE_SECRET not in out
    assert AGE_SECRET[len("AGE-SECRET-KEY-1") :] not in out
    assert out == "identity AGE-SECRET-KEY-<redacted> loaded; again: AGE-SECRET-KEY-<redacted>."


def test_age_public_key_is_left_alone() -> None:
    public = str(pyrage.x25519.Identity.generate().to_public())
    assert redact(f"encrypting to {public}") == f"encrypting to {public}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host=db password=hunter2 user=app", "host=db password=<redacted> user=app"),
        ("host=db password=hunter2", "host=db password=<redacted>"),
        ("host=db password = hunter2 user=app", "host=db password = <redacted> user=app"),
        ("host=db PASSWORD=hunter2", "host=db PASSWORD=<redacted>"),
        ("PGPASSWORD=hunter2 pg_dump", "PGPASSWORD=<redacted> pg_dump"),
        ("host=db password='hunter 2 two' user=app", "host=db password=<redacted> user=app"),
        ("host=db password='' user=app", "host=db password=<redacted> user=app"),
        # libpq allows \' and \\ inside quoted values and "\ " in unquoted ones.
        (r"host=db password='it\'s a secret' user=app", "host=db password=<redacted> user=app"),
        (r"host=db password='ends in \\' user=app", "host=db password=<redacted> user=app"),
        (r"host=db password=two\ words user=app", "host=db password=<redacted> user=app"),
    ],
)
def test_conninfo_password_is_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgres://app:hunter2@db:5432/prod", "postgres://app:<redacted>@db:5432/prod"),
        ("postgresql://app:hunter2@db/prod?sslmode=require", "postgresql://app:<redacted>@db/prod?sslmode=require"),
        ("dsn postgresql://app:p%40ss@db/x and more", "dsn postgresql://app:<redacted>@db/x and more"),
        ("postgresql://:hunter2@db/prod", "postgresql://:<redacted>@db/prod"),
        ("postgresql://app@db:5432/prod", "postgresql://app@db:5432/prod"),  # no password: unchanged
        ("postgresql://db:5432/prod", "postgresql://db:5432/prod"),
    ],
)
def test_url_password_is_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_environment_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEJr")
    monkeypatch.setenv("PGPASSWORD", "s3cr3t-pw")
    monkeypatch.setenv("PGVAULT_ENCRYPTION_AGE_IDENTITY", "custom-identity-text")
    text = "signed with wJalrXUtnFEMI/K7MDENG token FwoGZXIvYXdzEJr pw s3cr3t-pw id custom-identity-text"
    assert redact(text) == "signed with <redacted> token <redacted> pw <redacted> id <redacted>"


def test_very_short_environment_values_are_not_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    # A three-letter "secret" would shred every message; such a password is not protected by this.
    monkeypatch.setenv("PGPASSWORD", "abc")
    assert redact("abcdef abc") == "abcdef abc"


def test_other_environment_variables_are_not_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGUSER", "backupuser")
    assert redact("connecting as backupuser") == "connecting as backupuser"


def test_harmless_text_is_unchanged() -> None:
    text = "backup 20260101T000000Z of cluster 'main': 3 databases, 1.5 GiB in 2m10s (host=db port=5432)"
    assert redact(text) == text


# --- the logging filter ---------------------------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    logger = logging.getLogger(f"pgvault-test-{id(object())}")
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, buf
    logger.removeHandler(handler)


def test_filter_masks_the_formatted_message(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buf = captured
    logger.info("connecting with %s as %s", "host=db password=hunter2", "app")
    logger.warning("url %s", "postgres://app:hunter2@db/x")
    logger.error("key %r", AGE_SECRET)
    out = buf.getvalue()
    assert "hunter2" not in out and AGE_SECRET not in out
    assert out.splitlines() == [
        "INFO connecting with host=db password=<redacted> as app",
        "WARNING url postgres://app:<redacted>@db/x",
        "ERROR key 'AGE-SECRET-KEY-<redacted>'",
    ]


def test_filter_masks_the_traceback(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buf = captured
    try:
        raise RuntimeError("could not use host=db password=hunter2")
    except RuntimeError:
        logger.exception("internal error")
    out = buf.getvalue()
    assert "Traceback (most recent call last)" in out
    assert "RuntimeError: could not use host=db password=<redacted>" in out
    assert "hunter2" not in out


def test_filter_leaves_the_record_usable_by_other_handlers(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buf = captured
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "n=%d pw=%s", (3, "password=x"), None)
    assert RedactingFilter().filter(record) is True
    assert (record.getMessage(), record.args) == ("n=3 pw=password=<redacted>", None)
    assert RedactingFilter().filter(record) is True  # idempotent: a second filter changes nothing
    assert record.getMessage() == "n=3 pw=password=<redacted>"


@pytest.fixture
def pgvault_logger() -> Iterator[logging.Logger]:
    logger = log.get()
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_setup_json_lines_are_redacted(pgvault_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    logger = log.setup("debug", json_lines=True)
    assert logger is pgvault_logger
    logging.getLogger("pgvault.operations.test").debug("dsn %s", "user=a password='x y'")
    (line,) = capsys.readouterr().err.splitlines()
    doc = json.loads(line)
    assert doc["level"] == "debug" and doc["msg"] == "dsn user=a password=<redacted>"
    assert doc["ts"].endswith("Z")


def test_setup_plain_lines_are_redacted(pgvault_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    log.setup("info", json_lines=False)
    log.get().debug("hidden below the level")
    log.get().info("using %s", AGE_SECRET)
    assert capsys.readouterr().err == "pgvault: using AGE-SECRET-KEY-<redacted>\n"


# --- output ----------------------------------------------------------------------------------------


def test_table_aligns_columns() -> None:
    out = table(["ID", "DATABASES", "SIZE"], [["20260101T000000Z", 3, "1.5 GiB"], ["x", 12, None]], right=[1])
    assert out.splitlines() == [
        "ID                DATABASES  SIZE",
        "----------------  ---------  -------",
        "20260101T000000Z          3  1.5 GiB",
        "x                        12",
    ]


def test_table_widens_columns_for_long_cells_and_strips_trailing_space() -> None:
    out = table(["a", "b"], [["long cell here", ""], ["", "z"]])
    lines = out.splitlines()
    assert lines == [
        "a               b",
        "--------------  -",
        "long cell here",
        "                z",
    ]
    assert all(line == line.rstrip() for line in lines)


def test_table_without_rows() -> None:
    assert table(["NAME", "SIZE"], []) == "NAME  SIZE\n----  ----"


def test_table_right_aligns_only_the_chosen_columns() -> None:
    out = table(["n", "size"], [["a", "1 B"], ["bbbb", "10.0 KiB"]], right=[1])
    assert out.splitlines()[2:] == ["a          1 B", "bbbb  10.0 KiB"]


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "-"),
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (10 * 1024 * 1024, "10.0 MiB"),
        (3 * 1024**3 + 512 * 1024**2, "3.5 GiB"),
        (1024**4, "1.0 TiB"),
        (5000 * 1024**4, "5000.0 TiB"),  # TiB is the largest unit
    ],
)
def test_human_bytes(n: int | None, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0, "0.0s"),
        (0.04, "0.0s"),
        (1.26, "1.3s"),
        (59.9, "59.9s"),
        (60, "1m00s"),
        (75.2, "1m15s"),
        (3599, "59m59s"),
        (3599.6, "1h00m"),
        (3600, "1h00m"),
        (3 * 3600 + 7 * 60 + 30, "3h07m"),
        (50 * 3600, "50h00m"),
    ],
)
def test_human_duration(seconds: float | None, text: str) -> None:
    assert human_duration(seconds) == text


def test_to_json_is_versioned() -> None:
    doc = json.loads(to_json("backup_list", {"backups": [], "when": dt.date(2026, 1, 2)}))
    assert doc == {"format": 1, "kind": "backup_list", "backups": [], "when": "2026-01-02"}
    assert list(doc)[:2] == ["format", "kind"]
