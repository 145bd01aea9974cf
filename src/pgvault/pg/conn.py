"""psycopg connections and the server facts pgvault records.

A :class:`ConnInfo` is built from the configured libpq conninfo plus the usual ``PG*`` environment.
Child programs (pg_dump, pg_restore, psql) get the connection through environment variables built
by :meth:`ConnInfo.child_env`, never through argv: a password in argv is visible to every user of
the machine via ``ps``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgvault.errors import DatabaseError, NotFoundError

if TYPE_CHECKING:
    import psycopg

# psycopg is imported where a connection is made: it costs ~150 ms, and wal push / wal fetch (one
# process per WAL file, run by PostgreSQL) never connect.

# libpq keyword -> environment variable (https://www.postgresql.org/docs/current/libpq-envars.html)
_ENV_FOR_KEYWORD = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "gssencmode": "PGGSSENCMODE",
    "channel_binding": "PGCHANNELBINDING",
    "sslcrldir": "PGSSLCRLDIR",
    "sslcertmode": "PGSSLCERTMODE",
    "sslnegotiation": "PGSSLNEGOTIATION",
    "sslcompression": "PGSSLCOMPRESSION",
    "sslsni": "PGSSLSNI",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "requirepeer": "PGREQUIREPEER",
    "require_auth": "PGREQUIREAUTH",
    "krbsrvname": "PGKRBSRVNAME",
    "gsslib": "PGGSSLIB",
    "gssdelegation": "PGGSSDELEGATION",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}


@dataclass(frozen=True)
class ConnInfo:
    """Connection parameters (libpq keywords). ``params`` may hold a password: never print it."""

    params: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dsn(cls, dsn: str, environ: Mapping[str, str]) -> ConnInfo:
        """Merge a conninfo string over the ``PG*`` variables of ``environ`` (conninfo wins)."""
        params: dict[str, str] = {}
        for kw, var in _ENV_FOR_KEYWORD.items():
            if environ.get(var):
                params[kw] = environ[var]
        if dsn:
            from psycopg.conninfo import conninfo_to_dict

            params.update({k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None})
        return cls(params)

    def with_db(self, dbname: str) -> ConnInfo:
        """The same server, another database."""
        return ConnInfo({**self.params, "dbname": dbname})

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or self.params.get("user") or "postgres"

    def describe(self) -> str:
        """host:port/db for messages (no password)."""
        host = self.params.get("host") or self.params.get("hostaddr") or "local socket"
        return f"{host}:{self.params.get('port', '5432')}/{self.dbname}"

    def conninfo(self) -> str:
        """Conninfo string for psycopg (in-process only: never pass it to a child's argv)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(**{k: v for k, v in self.params.items()})

    def child_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """Environment for a libpq child program: ``base`` minus its PG* vars, plus ours."""
        env = {k: v for k, v in base.items() if k not in _ENV_FOR_KEYWORD.values()}
        for kw, value in self.params.items():
            var = _ENV_FOR_KEYWORD.get(kw)
            if var:
                env[var] = value
        env.setdefault("PGAPPNAME", "pgvault")
        return env


def connect(info: ConnInfo, *, autocommit: bool = True, dbname: str | None = None) -> psycopg.Connection[Any]:
    """Open a connection, turning libpq failures into one-line :class:`DatabaseError` s."""
    import psycopg

    target = info.with_db(dbname) if dbname else info
    params: dict[str, Any] = dict(target.params)
    params.setdefault("application_name", "pgvault")
    params.setdefault("connect_timeout", "10")
    try:
        return psycopg.connect(autocommit=autocommit, **params)
    except psycopg.OperationalError as e:
        msg = _first_line(str(e))
        if "does not exist" in msg and "database" in msg:
            raise NotFoundError(f"database {target.dbname!r} does not exist on {target.describe()}") from None
        hint = None
        if "password authentication failed" in msg or "no password supplied" in msg:
            hint = "check PGPASSWORD, ~/.pgpass or the password in postgres.dsn"
        elif "Connection refused" in msg or "could not connect" in msg or "timeout" in msg:
            hint = "is the server running and reachable? check PGHOST/PGPORT or postgres.dsn"
        raise DatabaseError(f"cannot connect to PostgreSQL at {target.describe()}: {msg}", hint=hint) from None


@contextmanager
def connection(info: ConnInfo, *, dbname: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """Context-managed autocommit connection."""
    conn = connect(info, dbname=dbname)
    try:
        yield conn
    finally:
        conn.close()


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # libpq prefixes "connection to server at ... failed:"; keep the informative tail.
    return " ".join(lines[:2]) if lines else text


@dataclass(frozen=True)
class ServerFacts:
    """What the manifest records about the server."""

    version_num: int
    version: str
    system_identifier: str
    is_superuser: bool

    @property
    def major(self) -> int:
        return self.version_num // 10000


def server_facts(conn: psycopg.Connection[Any]) -> ServerFacts:
    """Version, system identifier and whether we are superuser."""
    row = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('server_version'),"
        " (SELECT system_identifier::text FROM pg_control_system()),"
        " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
    ).fetchone()
    assert row is not None
    return ServerFacts(int(row[0]), str(row[1]), str(row[2]), bool(row[3]))


def list_databases(conn: psycopg.Connection[Any]) -> list[str]:
    """Databases that accept connections, excluding templates."""
    rows = conn.execute(
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname"
    ).fetchall()
    return [str(r[0]) for r in rows]


def database_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    """True if ``name`` is a database on the server."""
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def database_sessions(conn: psycopg.Connection[Any], name: str) -> list[tuple[int, str, str, str]]:
    """(pid, user, application, state) of every other client session connected to ``name``.

    Only client backends: an autovacuum worker is no one's session (PostgreSQL itself ends it
    when the database is renamed or dropped), and refusing a restore because autovacuum happened
    to visit the target made restores fail at random; a parallel worker belongs to a client
    session that is counted anyway."""
    rows = conn.execute(
        "SELECT pid, coalesce(usename, ''), coalesce(application_name, ''), coalesce(state, '')"
        " FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend' ORDER BY pid",
        (name,),
    ).fetchall()
    return [(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]
