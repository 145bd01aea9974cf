"""``recover-table``'s production side: put verified, dumped rows into the live database.

Everything happens in **one transaction** on the running server (never restarted): either every
table is recovered as planned and verified, or nothing changed.  Rows arrive from the dump files
through ``COPY`` into a private temporary table (``stage``: the table's columns, no constraints),
then, per mode:

* ``new-table``: ``CREATE TABLE`` the copy (columns, NOT NULL), ``COPY`` into it, then its primary
  key, unique and check constraints under new names (see :mod:`pgvault.policy.recover`).
* ``missing-rows``: ``INSERT`` the stage rows whose key is not in the table now, parents before
  children.  Rows written since the mistake are never touched.
* ``replace``: the table's contents become the stage's: changed rows updated, missing ones
  inserted (parents first), rows not at the target deleted (children first).  Rows are matched on
  the key, so a row that stays is never deleted and re-inserted (which would fire ``ON DELETE
  CASCADE`` into its children).  If a table *not* being recovered still references a row that
  would be deleted, the command refuses (CASCADE would delete those rows too, RESTRICT would
  fail): recover that table in the same command, or use ``missing-rows``.

Recovered rows come back as they were: no trigger of the recovered tables fires for them (no
audit trigger recording them again, no touch trigger rewriting them).  See :func:`_session_replica`
for the two ways (``session_replication_role = replica`` with set-based foreign-key checks, which
locks nothing for other sessions; else ``ALTER TABLE ... DISABLE TRIGGER``, which blocks writers of
those tables until the commit).  Replace mode's explicit ``LOCK`` blocks writers either way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgvault.errors import DatabaseError, PgvaultError, UsageError, VerificationError
from pgvault.operations.physical.table_facts import exact_count
from pgvault.policy.recover import ON_DELETE, RecoverPlanTables, TableFacts, TablePlan, ident

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Dump:
    """One table's rows at the target, in COPY text format, checked three ways when written."""

    table: str
    path: Path
    columns: tuple[str, ...]
    rows: int
    bytes: int


@dataclass
class TableReport:
    table: str
    mode: str
    rows_at_target: int
    rows_before: int | None = None  # None: new-table (the copy did not exist)
    rows_after: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    not_at_target: int = 0  # missing-rows: rows there now that were not at the target (left alone)
    created: str = ""  # new-table: the copy
    constraints: list[str] = field(default_factory=list)  # new-table: its constraints
    not_copied: list[str] = field(default_factory=list)
    triggers_disabled: list[str] = field(default_factory=list)
    triggers_how: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _cols(names: tuple[str, ...], prefix: str = "") -> str:
    return ", ".join(prefix + ident(c) for c in names)


def _copy_in(cur: Any, table: str, columns: tuple[str, ...], path: Path) -> int:
    with cur.copy(f"COPY {table} ({_cols(columns)}) FROM STDIN") as cp, open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            cp.write(chunk)
    return int(cur.rowcount)


def _one(cur: Any, sql: str, params: tuple[Any, ...] = ()) -> int:
    row = cur.execute(sql, params).fetchone()
    return int(row[0])


def load(conn: Any, plans: RecoverPlanTables, dumps: Mapping[str, Dump], now: Mapping[str, TableFacts | None],
         say: Callable[[str], None]) -> list[TableReport]:
    """Apply ``plans`` in one transaction on ``conn`` (autocommit off); every count checked before
    the commit, else :class:`VerificationError` and nothing changed."""
    by_table = {p.table: p for p in plans.tables}
    reports: dict[str, TableReport] = {}
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = '30s'")
            replica = _session_replica(cur)
            chosen = set(by_table)
            for i, name in enumerate(plans.order):
                p = by_table[name]
                d = dumps[name]
                rep = TableReport(name, p.mode, d.rows)
                reports[name] = rep
                if p.mode == "new-table":
                    _new_table(cur, p, d, rep, say)
                    continue
                cur_facts = now[name]
                assert cur_facts is not None
                stage = f"pg_temp.pgvault_stage_{i}"
                cur.execute(f"CREATE TEMP TABLE pgvault_stage_{i} (LIKE {name}) ON COMMIT DROP")
                loaded = _copy_in(cur, stage, d.columns, d.path)
                if loaded != d.rows:
                    raise VerificationError(f"{name}: {d.rows} rows dumped but {loaded} loaded into the staging table")
                if p.mode == "replace":
                    _lock_and_guard(cur, p, stage, cur_facts, chosen)
                rep.rows_before = exact_count(cur, name)
                rep.triggers_disabled = list(cur_facts.user_triggers)
                rep.triggers_how = _REPLICA if replica else _DISABLED if cur_facts.user_triggers else ""
                for t in () if replica else cur_facts.user_triggers:
                    cur.execute(f"ALTER TABLE {name} DISABLE TRIGGER {ident(t)}")
                if p.mode == "missing-rows":
                    _missing_rows(cur, p, stage, cur_facts, chosen, rep)
                else:
                    _upsert(cur, p, stage, rep)
            # Deletes of replace: children before parents (their rows went first).
            for i, name in reversed(list(enumerate(plans.order))):
                p = by_table[name]
                if p.mode == "replace":
                    _delete_gone(cur, p, f"pg_temp.pgvault_stage_{i}", reports[name])
            for i, name in enumerate(plans.order):
                p = by_table[name]
                if p.mode == "new-table":
                    continue
                for t in () if replica else now[name].user_triggers:  # type: ignore[union-attr]
                    cur.execute(f"ALTER TABLE {name} ENABLE TRIGGER {ident(t)}")
                if replica:  # the foreign keys PostgreSQL did not check row by row: checked here, set-based
                    _check_references(cur, p, i, now[name])  # type: ignore[arg-type]
                _verify(cur, p, f"pg_temp.pgvault_stage_{i}", reports[name])
                say(_line(reports[name]))
    except PgvaultError:
        raise
    except Exception as e:
        if type(e).__module__.split(".")[0] != "psycopg":
            raise
        msg = str(e).strip().splitlines()
        raise DatabaseError(f"loading the recovered rows failed, nothing was changed (rolled back): "
                            f"{type(e).__name__}: {' | '.join(msg[:3])}") from None
    return [reports[n] for n in plans.order]


_REPLICA = "session_replication_role = replica for this transaction (nothing is locked for other sessions)"
_DISABLED = "ALTER TABLE ... DISABLE TRIGGER until the commit (writes to the table wait until then)"


def _session_replica(cur: Any) -> bool:
    """Whether this role may set ``session_replication_role`` (a superuser, or from PostgreSQL 15
    a role granted SET on it): then, for this transaction only, no trigger of the recovered tables
    fires, foreign keys included, and they are checked set-based before the commit
    (:func:`_check_references`), which is much faster than row by row and locks nothing for other
    sessions.  Otherwise the tables' own triggers are disabled by ``ALTER TABLE``, which holds a
    lock against writers until the commit, and foreign keys are checked as usual."""
    version = _one(cur, "SELECT current_setting('server_version_num')::int")
    sql = ("SELECT rolsuper OR has_parameter_privilege('session_replication_role', 'SET') FROM pg_roles "
           "WHERE rolname = current_user" if version >= 150000 else
           "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    row = cur.execute(sql).fetchone()
    if not (row and row[0]):
        return False
    cur.execute("SET LOCAL session_replication_role = replica")
    return True


def _check_references(cur: Any, p: TablePlan, i: int, facts: TableFacts) -> None:
    """Every row this run wrote into ``p.table`` references existing rows (MATCH SIMPLE: a row with
    a NULL in the key references nothing), for each of the table's foreign keys."""
    stage = f"pg_temp.pgvault_stage_{i}"
    written = f"{stage}_put" if p.mode == "missing-rows" else stage
    for fk in facts.foreign_keys:
        match = " AND ".join(f"r.{ident(b)} = c.{ident(a)}" for a, b in zip(fk.columns, fk.ref_columns))
        present = " AND ".join(f"c.{ident(a)} IS NOT NULL" for a in fk.columns)
        n = _one(cur, f"SELECT count(*) FROM {written} c WHERE {present} AND NOT EXISTS "
                      f"(SELECT 1 FROM {fk.ref_table} r WHERE {match})")
        if n:
            raise UsageError(f"{n} recovered rows of {p.table} reference rows of {fk.ref_table} that do not exist "
                             f"({fk.name}); nothing was changed",
                             hint=f"recover {fk.ref_table} in the same command (--table {fk.ref_table})")


def _line(r: TableReport) -> str:
    if r.mode == "new-table":
        return f"created {r.created}: {r.rows_after} rows"
    return (f"{r.table}: {r.rows_before} rows before, {r.rows_at_target} at the target, {r.inserted} inserted, "
            f"{r.updated} updated, {r.deleted} deleted, {r.rows_after} now")


def _new_table(cur: Any, p: TablePlan, d: Dump, rep: TableReport, say: Callable[[str], None]) -> None:
    cols = ", ".join(f"{ident(c)} {t}{' NOT NULL' if nn else ''}" for c, t, nn in p.column_defs)
    cur.execute(f"CREATE TABLE {p.new_sql} ({cols})")
    loaded = _copy_in(cur, p.new_sql, d.columns, d.path)
    if loaded != d.rows:
        raise VerificationError(f"{p.table}: {d.rows} rows dumped but {loaded} loaded into {p.new_name}")
    for (old, new), definition in zip(p.renames, p.constraint_defs):
        cur.execute(f"ALTER TABLE {p.new_sql} ADD CONSTRAINT {ident(new)} {definition}")
        rep.constraints.append(f"{new} (was {old}): {definition}")
    rep.created = p.new_name
    rep.rows_after = exact_count(cur, p.new_sql)
    rep.not_copied = list(p.not_copied)
    if rep.rows_after != d.rows:
        raise VerificationError(f"{p.new_name} holds {rep.rows_after} rows, {d.rows} were dumped")
    say(_line(rep))


def _key_match(p: TablePlan, a: str, b: str) -> str:
    assert p.key is not None
    return " AND ".join(f"{a}.{ident(c)} = {b}.{ident(c)}" for c in p.key.columns)


def _missing_rows(cur: Any, p: TablePlan, stage: str, facts: TableFacts, chosen: set[str], rep: TableReport) -> None:
    name = p.table
    rep.not_at_target = _one(cur, f"SELECT count(*) FROM {name} t WHERE {_key_missing(p, stage, 't')}")
    put = f"{stage}_put"
    cur.execute(f"CREATE TEMP TABLE {put.removeprefix('pg_temp.')} ON COMMIT DROP AS SELECT s.* FROM {stage} s "
                f"WHERE NOT EXISTS (SELECT 1 FROM {name} t WHERE {_key_match(p, 't', 's')})")
    cur.execute(f"INSERT INTO {name} ({_cols(p.columns)}) OVERRIDING SYSTEM VALUE SELECT {_cols(p.columns)} FROM {put}")
    rep.inserted = int(cur.rowcount)
    # Evidence for the cascade advice: rows put back whose children are gone now too.
    for fk in facts.referenced_by:
        if fk.table in chosen or fk.on_delete != "c" or fk.table == name or not rep.inserted:
            continue
        match = " AND ".join(f"c.{ident(a)} = s.{ident(b)}" for a, b in zip(fk.columns, fk.ref_columns))
        orphans = _one(cur, f"SELECT count(*) FROM {put} s WHERE NOT EXISTS (SELECT 1 FROM {fk.table} c WHERE {match})")
        if orphans:
            rep.notes.append(f"{orphans} of the {rep.inserted} rows put back have no rows in {fk.table} now "
                             f"({fk.name} is ON DELETE CASCADE): recover {fk.table} in the same command")


def _lock_and_guard(cur: Any, p: TablePlan, stage: str, facts: TableFacts, chosen: set[str]) -> None:
    """Replace: block writes to the table and to the tables referencing it, and refuse if a table
    not being recovered references a row that would be deleted."""
    cur.execute(f"LOCK TABLE {p.table} IN EXCLUSIVE MODE")
    for fk in facts.referenced_by:
        if fk.table in chosen:
            continue
        cur.execute(f"LOCK TABLE {fk.table} IN SHARE ROW EXCLUSIVE MODE")
        match = " AND ".join(f"c.{ident(a)} = t.{ident(b)}" for a, b in zip(fk.columns, fk.ref_columns))
        gone = _key_missing(p, stage, "t") if p.key else "TRUE"
        n = _one(cur, f"SELECT count(*) FROM {fk.table} c WHERE EXISTS (SELECT 1 FROM {p.table} t WHERE {match} AND {gone})")
        if n:
            action = ON_DELETE.get(fk.on_delete, fk.on_delete)
            effect = "would delete them too" if fk.on_delete == "c" else (
                "would change them" if fk.on_delete in ("n", "d") else "would make the replace fail")
            raise UsageError(f"--mode replace refused, nothing was changed: {n} rows of {fk.table} reference rows of "
                             f"{p.table} that were not there at the target ({fk.name} ON DELETE {action} {effect})",
                             hint=f"recover {fk.table} in the same command (--table {fk.table}), or use --mode "
                                  "missing-rows, which deletes nothing")


def _key_missing(p: TablePlan, stage: str, alias: str) -> str:
    return f"NOT EXISTS (SELECT 1 FROM {stage} s WHERE {_key_match(p, 's', alias)})"


def _upsert(cur: Any, p: TablePlan, stage: str, rep: TableReport) -> None:
    name = p.table
    cols = _cols(p.columns)
    if p.key is None:  # no key and nothing references it: the contents, swapped whole
        cur.execute(f"DELETE FROM {name}")
        rep.deleted = int(cur.rowcount)
        cur.execute(f"INSERT INTO {name} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {stage}")
        rep.inserted = int(cur.rowcount)
        return
    settable = [c for c in p.columns if c not in p.key.columns]
    if settable:
        sets = ", ".join(f"{ident(c)} = s.{ident(c)}" for c in settable)
        cur.execute(f"UPDATE {name} t SET {sets} FROM {stage} s WHERE {_key_match(p, 't', 's')} AND "
                    f"ROW({_cols(p.columns, 't.')})::text IS DISTINCT FROM ROW({_cols(p.columns, 's.')})::text")
        rep.updated = int(cur.rowcount)
    cur.execute(f"INSERT INTO {name} ({cols}) OVERRIDING SYSTEM VALUE SELECT {_cols(p.columns, 's.')} FROM {stage} s "
                f"WHERE NOT EXISTS (SELECT 1 FROM {name} t WHERE {_key_match(p, 't', 's')})")
    rep.inserted = int(cur.rowcount)


def _delete_gone(cur: Any, p: TablePlan, stage: str, rep: TableReport) -> None:
    if p.key is None:
        return
    cur.execute(f"DELETE FROM {p.table} t WHERE {_key_missing(p, stage, 't')}")
    rep.deleted = int(cur.rowcount)


def _verify(cur: Any, p: TablePlan, stage: str, rep: TableReport) -> None:
    """Before the commit: the table holds what the mode promised."""
    name = p.table
    rep.rows_after = exact_count(cur, name)
    assert rep.rows_before is not None
    if p.mode == "missing-rows":
        absent = _one(cur, f"SELECT count(*) FROM {stage} s WHERE NOT EXISTS "
                           f"(SELECT 1 FROM {name} t WHERE {_key_match(p, 't', 's')})")
        if rep.rows_after != rep.rows_before + rep.inserted or absent:
            raise VerificationError(f"{name}: after inserting {rep.inserted} rows into {rep.rows_before} it holds "
                                    f"{rep.rows_after}, and {absent} rows of the target are still missing; rolled back")
        return
    cols = f"ROW({_cols(p.columns)})::text"
    extra = _one(cur, f"SELECT count(*) FROM (SELECT {cols} FROM {name} EXCEPT ALL SELECT {cols} FROM {stage}) x")
    missing = _one(cur, f"SELECT count(*) FROM (SELECT {cols} FROM {stage} EXCEPT ALL SELECT {cols} FROM {name}) x")
    if rep.rows_after != rep.rows_at_target or extra or missing:
        raise VerificationError(f"{name}: after the replace it holds {rep.rows_after} rows ({extra} not at the target, "
                                f"{missing} of the target missing), the target had {rep.rows_at_target}; rolled back")
