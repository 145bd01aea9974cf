"""ConnInfo: libpq conninfo over PG* environment, and the environment handed to child programs.

No server: only the parameter handling is tested here.
"""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from pgvault.pg.conn import ConnInfo

PG_ENV = {
    "PGHOST": "env-host",
    "PGPORT": "6000",
    "PGUSER": "env-user",
    "PGDATABASE": "env-db",
    "PGPASSWORD": "env-secret",
    "PGSSLMODE": "require",
}


# --- from_dsn -------------------------------------------------------------------------------------


def test_environment_alone() -> None:
    info = ConnInfo.from_dsn("", PG_ENV)
    assert dict(info.params) == {
        "host": "env-host",
        "port": "6000",
        "user": "env-user",
        "dbname": "env-db",
        "password": "env-secret",
        "sslmode": "require",
    }


def test_dsn_wins_over_environment_key_by_key() -> None:
    info = ConnInfo.from_dsn("host=dsn-host dbname=dsn-db password=dsn-secret", PG_ENV)
    assert info.params["host"] == "dsn-host"
    assert info.params["dbname"] == "dsn-db"
    assert info.params["password"] == "dsn-secret"
    # What the DSN does not say still comes from the environment, as in psql.
    assert (info.params["port"], info.params["user"], info.params["sslmode"]) == ("6000", "env-user", "require")


def test_url_dsn() -> None:
    info = ConnInfo.from_dsn("postgresql://app:p%40ss@db.internal:5433/prod?sslmode=verify-full", {})
    assert dict(info.params) == {
        "user": "app",
        "password": "p@ss",
        "host": "db.internal",
        "port": "5433",
        "dbname": "prod",
        "sslmode": "verify-full",
    }


def test_empty_and_unrelated_variables_are_ignored() -> None:
    info = ConnInfo.from_dsn("", {"PGHOST": "", "PGPORT": "5433", "HOME": "/root", "PGVAULT_CLUSTER": "x"})
    assert dict(info.params) == {"port": "5433"}


def test_from_dsn_does_not_read_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", "process-host")
    assert dict(ConnInfo.from_dsn("", {}).params) == {}  # only the mapping it is given counts


def test_invalid_dsn_raises() -> None:
    with pytest.raises(Exception) as exc:
        ConnInfo.from_dsn("host=db password=hunter2 nonsense", {})
    assert "hunter2" not in str(exc.value)


# --- describe / repr ------------------------------------------------------------------------------


def test_describe_has_no_password() -> None:
    info = ConnInfo.from_dsn("host=db port=5433 dbname=app user=bob password=hunter2", {})
    assert info.describe() == "db:5433/app"
    assert "hunter2" not in info.describe()
    assert "hunter2" not in repr(info) and "hunter2" not in str(info)


@pytest.mark.parametrize(
    ("dsn", "text"),
    [
        ("", "local socket:5432/postgres"),
        ("user=bob", "local socket:5432/bob"),  # libpq's default database is the user name
        ("hostaddr=10.0.0.5 dbname=x", "10.0.0.5:5432/x"),
        ("host=/var/run/postgresql port=5433", "/var/run/postgresql:5433/postgres"),
        ("host=a,b port=5432,5433 dbname=d", "a,b:5432,5433/d"),
    ],
)
def test_describe_defaults(dsn: str, text: str) -> None:
    assert ConnInfo.from_dsn(dsn, {}).describe() == text


def test_with_db_changes_only_the_database() -> None:
    info = ConnInfo.from_dsn("host=db dbname=app password=pw", {})
    other = info.with_db("crm")
    assert other.params == {**info.params, "dbname": "crm"}
    assert info.params["dbname"] == "app"  # the original is untouched
    assert other.describe() == "db:5432/crm"


def test_conninfo_round_trips_for_in_process_use() -> None:
    info = ConnInfo.from_dsn(r"host=db dbname='my db' password='it\'s'", {})
    assert info.params["password"] == "it's"
    assert conninfo_to_dict(info.conninfo()) == dict(info.params)


# --- child_env ------------------------------------------------------------------------------------


def test_child_env_password_only_in_pgpassword() -> None:
    info = ConnInfo.from_dsn("postgresql://app:hunter2@db:5433/prod", {})
    env = info.child_env({"PATH": "/usr/bin", "LANG": "C.UTF-8"})
    assert env == {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "PGHOST": "db",
        "PGPORT": "5433",
        "PGUSER": "app",
        "PGDATABASE": "prod",
        "PGPASSWORD": "hunter2",
        "PGAPPNAME": "pgvault",
    }
    assert [k for k, v in env.items() if "hunter2" in v] == ["PGPASSWORD"]


def test_child_env_strips_stale_parent_variables() -> None:
    parent = {
        "PATH": "/usr/bin",
        "PGHOST": "stale-host",
        "PGPORT": "1111",
        "PGPASSWORD": "stale-secret",
        "PGSERVICE": "stale-service",
        "PGOPTIONS": "-c search_path=evil",
        "PGSSLMODE": "disable",
        "PGREQUIREAUTH": "password",
    }
    info = ConnInfo.from_dsn("host=db user=app", {})  # built without that environment
    env = info.child_env(parent)
    assert env == {"PATH": "/usr/bin", "PGHOST": "db", "PGUSER": "app", "PGAPPNAME": "pgvault"}
    assert "PGPASSWORD" not in env  # no stale password for the child to try
    assert parent["PGPASSWORD"] == "stale-secret"  # the parent mapping is not modified


def test_child_env_from_the_same_environment_is_consistent() -> None:
    parent = {"PATH": "/bin", **PG_ENV}
    info = ConnInfo.from_dsn("dbname=other", parent)
    env = info.child_env(parent)
    assert env == {"PATH": "/bin", **PG_ENV, "PGDATABASE": "other", "PGAPPNAME": "pgvault"}


def test_child_env_keeps_an_explicit_application_name() -> None:
    info = ConnInfo.from_dsn("application_name=nightly", {})
    assert info.child_env({})["PGAPPNAME"] == "nightly"


def test_child_env_carries_tls_and_auth_requirements_from_the_dsn() -> None:
    # A DSN that demands scram and TLS 1.3 must bind pg_dump too, not only pgvault's own connection.
    dsn = (
        "host=db sslmode=verify-full sslrootcert=/etc/ca.pem sslcrldir=/etc/crl "
        "ssl_min_protocol_version=TLSv1.3 require_auth=scram-sha-256 channel_binding=require "
        "target_session_attrs=read-write connect_timeout=5 load_balance_hosts=random"
    )
    env = ConnInfo.from_dsn(dsn, {}).child_env({})
    assert env == {
        "PGHOST": "db",
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": "/etc/ca.pem",
        "PGSSLCRLDIR": "/etc/crl",
        "PGSSLMINPROTOCOLVERSION": "TLSv1.3",
        "PGREQUIREAUTH": "scram-sha-256",
        "PGCHANNELBINDING": "require",
        "PGTARGETSESSIONATTRS": "read-write",
        "PGCONNECT_TIMEOUT": "5",
        "PGLOADBALANCEHOSTS": "random",
        "PGAPPNAME": "pgvault",
    }
