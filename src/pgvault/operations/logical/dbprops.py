"""Database-level properties: read in the dump's snapshot, reapplied to the restored copy, compared.

Owner, privileges (``GRANT``/``REVOKE ... ON DATABASE``), comment, connection limit, template
flag, tablespace, ``ALTER DATABASE ... SET`` and ``ALTER ROLE ... IN DATABASE ... SET`` belong to
the database, not to its contents: pg_restore applies them only with ``--create``, and then to
the database's *original* name.  pgvault always restores under another name first (the scratch
copy), so it records them in the manifest (:class:`DatabaseProperties`) and reapplies them itself.

Privileges are recorded and compared as the effective list (``aclexplode`` of the ACL, or of the
default ACL when it is NULL) without the grantor: a superuser's GRANT is recorded as made by the
owner, so a grantor other than the owner cannot be reproduced and is not what access depends on.

A role that does not exist on the target server is not fatal: what needs it is skipped and the
restore says so; everything skipped is left out of the comparison a drill makes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgvault import log
from pgvault.errors import NotFoundError
from pgvault.repository.manifest import DatabaseProperties, Grant

_PROPS_SQL = """
SELECT pg_get_userbyid(d.datdba), d.datconnlimit, d.datistemplate, t.spcname,
       shobj_description(d.oid, 'pg_database'),
       coalesce((SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setdatabase = d.oid AND s.setrole = 0), '{}')
FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace
WHERE d.datname = %s
"""
_ACL_SQL = """
SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, a.is_grantable
FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
WHERE d.datname = %s
"""
_ROLE_SETTINGS_SQL = """
SELECT r.rolname, s.setconfig
FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase JOIN pg_roles r ON r.oid = s.setrole
WHERE d.datname = %s ORDER BY 1
"""

# Settings whose values PostgreSQL stores as a list of double-quoted names (GUC_LIST_QUOTE); like
# pg_dump (variable_is_guc_list_quote) they are split and passed as one literal per element.
_LIST_QUOTE = frozenset({"local_preload_libraries", "search_path", "session_preload_libraries",
                         "shared_preload_libraries", "temp_tablespaces", "unix_socket_directories"})

# SQLSTATE classes that mean the connection or the server is in trouble: those end the restore.
# Anything else (permission denied, unknown setting, a role that vanished) skips one property.
_FATAL_CLASSES = ("08", "53", "57", "58", "XX")


def _grant_key(g: Grant) -> tuple[str, str, bool]:
    return (g.grantee or "", g.privilege, g.grantable)


def read(conn: psycopg.Connection[Any], name: str) -> DatabaseProperties:
    """The properties of database ``name`` as the server has them now (or in the snapshot)."""
    row = conn.execute(_PROPS_SQL, (name,)).fetchone()
    if row is None:
        raise NotFoundError(f"database {name!r} does not exist")
    acl = [Grant(None if r[0] is None else str(r[0]), str(r[1]), bool(r[2])) for r in conn.execute(_ACL_SQL, (name,))]
    role_settings = tuple((str(r[0]), tuple(r[1] or ())) for r in conn.execute(_ROLE_SETTINGS_SQL, (name,)))
    return DatabaseProperties(
        owner=str(row[0]), acl=tuple(sorted(acl, key=_grant_key)), comment=row[4], connection_limit=int(row[1]),
        is_template=bool(row[2]), tablespace=str(row[3]), settings=tuple(row[5] or ()), role_settings=role_settings,
    )


@dataclass
class Outcome:
    """What a restore did with the recorded properties (rendered by the CLI, compared by drills)."""

    recorded: bool = True  # False: the manifest predates database properties
    applied: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # key -> why
    asked: set[str] = field(default_factory=set)  # skipped because an option said so (--no-owner)

    def skip(self, key: str, why: str, *, asked: bool = False) -> None:
        self.skipped[key] = why
        if asked:
            self.asked.add(key)
        else:
            log.get().warning("database property %s not restored: %s", key, why)

    @property
    def warnings(self) -> list[str]:
        if not self.recorded:
            return ["this backup does not record database properties (written by an older pgvault): owner, "
                    "privileges, comment and settings of the restored database are the defaults"]
        return [f"{key} not restored: {why}" for key, why in self.skipped.items() if key not in self.asked]

    def to_json(self) -> dict[str, Any]:
        return {"recorded": self.recorded, "applied": list(self.applied), "skipped": dict(self.skipped)}


def split_guc_list(value: str) -> list[str] | None:
    """Elements of a GUC_LIST_QUOTE value as stored (``"$user", public``); None if malformed.

    The rules of PostgreSQL's SplitGUCList: double-quoted elements with ``""`` for a quote,
    unquoted ones up to a comma or white space, not case-folded.
    """
    out: list[str] = []
    i, n = 0, len(value)
    while i < n and value[i].isspace():
        i += 1
    if i == n:
        return out
    while True:
        if value[i] == '"':
            j, buf = i + 1, []
            while True:
                k = value.find('"', j)
                if k < 0:
                    return None
                buf.append(value[j:k])
                if k + 1 < n and value[k + 1] == '"':
                    buf.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            out.append("".join(buf))
        else:
            j = i
            while j < n and value[j] != "," and not value[j].isspace():
                j += 1
            if j == i:
                return None
            out.append(value[i:j])
            i = j
        while i < n and value[i].isspace():
            i += 1
        if i == n:
            return out
        if value[i] != ",":
            return None
        i += 1
        while i < n and value[i].isspace():
            i += 1


def set_clause(item: str) -> sql.Composed:
    """``SET name TO value`` for one ``name=value`` item of pg_db_role_setting."""
    name, _, value = item.partition("=")
    parts = split_guc_list(value) if name.lower() in _LIST_QUOTE else None
    if parts:
        values = sql.SQL(", ").join(sql.Literal(p) for p in parts)
    else:
        values = sql.SQL("{}").format(sql.Literal(value))
    return sql.SQL("SET {} TO {}").format(sql.Identifier(name), values)


def _fatal(e: psycopg.Error) -> bool:
    state = getattr(e, "sqlstate", None)
    return state is None or state.startswith(_FATAL_CLASSES)


def tablespace_for(conn: psycopg.Connection[Any], props: DatabaseProperties | None, outcome: Outcome) -> str | None:
    """The tablespace to create the copy in: the recorded one when it exists here, else the default."""
    if props is None or props.tablespace == "pg_default":
        return None
    if conn.execute("SELECT 1 FROM pg_tablespace WHERE spcname = %s", (props.tablespace,)).fetchone() is None:
        outcome.skip("tablespace", f"tablespace {props.tablespace!r} does not exist here; the default tablespace is used")
        return None
    outcome.applied.append("tablespace")
    return props.tablespace


def apply(conn: psycopg.Connection[Any], name: str, props: DatabaseProperties, outcome: Outcome, *, no_owner: bool) -> None:
    """Apply everything but the comment and the template flag to database ``name`` (the copy).

    Those two go in with the final rename (:func:`final_statements`): the comment marks the copy
    as a scratch database until then, and a template cannot be dropped if the restore fails.
    """
    db = sql.Identifier(name)
    roles = {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles")}

    def run(key: str, *statements: sql.Composed) -> None:
        try:
            with conn.transaction():
                for stmt in statements:
                    conn.execute(stmt)
        except psycopg.Error as e:
            if _fatal(e):
                raise
            outcome.skip(key, str(e).strip().splitlines()[0])
            return
        outcome.applied.append(key)

    if no_owner:
        outcome.skip("owner", "--no-owner", asked=True)
    elif props.owner not in roles:
        outcome.skip("owner", f"role {props.owner!r} does not exist here; the database is owned by the restoring user")
    else:
        run("owner", sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, sql.Identifier(props.owner)))
    if props.connection_limit != -1:
        run("connection_limit", sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(db, sql.Literal(props.connection_limit)))
    for item in props.settings:
        run(f"setting {item.partition('=')[0]}", sql.SQL("ALTER DATABASE {} {}").format(db, set_clause(item)))
    for role, items in props.role_settings:
        if role not in roles:
            outcome.skip(f"settings of role {role}", f"role {role!r} does not exist here")
            continue
        for item in items:
            run(f"setting {item.partition('=')[0]} of role {role}",
                sql.SQL("ALTER ROLE {} IN DATABASE {} {}").format(sql.Identifier(role), db, set_clause(item)))
    if no_owner:
        outcome.skip("privileges", "--no-owner", asked=True)
        return
    # Spelled out from scratch like pg_dump does: revoke the defaults, grant what was recorded.
    # One transaction: a failure leaves the default privileges, and says so, never a mix.
    row = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (name,)).fetchone()
    owner_now = str(row[0]) if row else ""
    statements: list[sql.Composed] = [sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db)]
    if "owner" not in outcome.skipped:
        statements.append(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(db, sql.Identifier(owner_now)))
    grouped: dict[tuple[str | None, bool], list[str]] = {}
    for g in props.acl:
        if g.grantee is not None and g.grantee not in roles:
            outcome.skip(f"privileges of role {g.grantee}", f"role {g.grantee!r} does not exist here")
            continue
        grouped.setdefault((g.grantee, g.grantable), []).append(g.privilege)
    for (grantee, grantable), privileges in grouped.items():
        statements.append(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
            sql.SQL(", ").join(sql.SQL(p) for p in sorted(set(privileges)) if p in ("CREATE", "CONNECT", "TEMPORARY")),
            db, sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
            sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")))
    run("privileges", *statements)


def final_statements(props: DatabaseProperties | None, name: str, outcome: Outcome) -> list[sql.Composed]:
    """Run in the transaction that gives the copy its final ``name``: the real comment replaces
    the scratch mark, and the template flag is set.  ``outcome`` lists them as applied (they are
    if that transaction commits; if it does not, the restore fails)."""
    db = sql.Identifier(name)
    comment = None if props is None else props.comment
    out = [sql.SQL("COMMENT ON DATABASE {} IS {}").format(db, sql.Literal(comment))]
    if comment is not None:
        outcome.applied.append("comment")
    if props is not None and props.is_template:
        out.append(sql.SQL("ALTER DATABASE {} IS_TEMPLATE true").format(db))
        outcome.applied.append("is_template")
    return out


def compare(expected: DatabaseProperties, actual: DatabaseProperties, skipped: Mapping[str, str]) -> list[str]:
    """Differences between the manifest and a restored database, leaving out what was skipped."""
    problems = []
    if "owner" not in skipped and expected.owner != actual.owner:
        problems.append(f"owner: manifest {expected.owner}, restored {actual.owner}")
    if "privileges" not in skipped:
        ignore = {r for r in {g.grantee for g in expected.acl} if f"privileges of role {r}" in skipped}
        if "owner" in skipped:  # the recorded owner's privileges went to whoever owns it here
            ignore |= {expected.owner, actual.owner}
        want = sorted(_grant_key(g) for g in expected.acl if g.grantee not in ignore)
        have = sorted(_grant_key(g) for g in actual.acl if g.grantee not in ignore)
        if want != have:
            problems.append(f"privileges: manifest {_acl_text(want)}, restored {_acl_text(have)}")
    for key, a, b in (("comment", expected.comment, actual.comment),
                      ("connection_limit", expected.connection_limit, actual.connection_limit),
                      ("is_template", expected.is_template, actual.is_template),
                      ("tablespace", expected.tablespace, actual.tablespace)):
        if key not in skipped and a != b:
            problems.append(f"{key}: manifest {a!r}, restored {b!r}")
    want_settings = sorted(s for s in expected.settings if f"setting {s.partition('=')[0]}" not in skipped)
    have_settings = sorted(s for s in actual.settings if f"setting {s.partition('=')[0]}" not in skipped)
    if want_settings != have_settings:
        problems.append(f"settings: manifest {want_settings}, restored {have_settings}")
    have_roles = dict(actual.role_settings)
    for role, items in expected.role_settings:
        if f"settings of role {role}" in skipped:
            continue
        want_role = sorted(s for s in items if f"setting {s.partition('=')[0]} of role {role}" not in skipped)
        have_role = sorted(s for s in have_roles.pop(role, ()) if f"setting {s.partition('=')[0]} of role {role}" not in skipped)
        if want_role != have_role:
            problems.append(f"settings of role {role}: manifest {want_role}, restored {have_role}")
    extra = {r: list(v) for r, v in have_roles.items() if f"settings of role {r}" not in skipped}
    if extra:
        problems.append(f"role settings not in the manifest: {extra}")
    return problems


def _acl_text(items: list[tuple[str, str, bool]]) -> str:
    return ", ".join(f"{g or 'PUBLIC'}:{p}{'*' if w else ''}" for g, p, w in items) or "none"


def check(conn: psycopg.Connection[Any], name: str, expected: DatabaseProperties | None,
          outcome: Outcome | None) -> tuple[bool, str]:
    """A drill check: the restored database ``name`` has the properties the manifest records."""
    if expected is None:
        return True, "not recorded in this backup (written by an older pgvault): nothing to compare"
    skipped = outcome.skipped if outcome is not None else {}
    problems = compare(expected, read(conn, name), skipped)
    if problems:
        return False, "; ".join(problems[:5])
    detail = (f"owner, {len(expected.acl)} privileges, comment, connection limit, {len(expected.settings)} settings and "
              f"{sum(len(i) for _, i in expected.role_settings)} role settings match the manifest")
    if skipped:
        detail += "; not restored: " + "; ".join(f"{k} ({why})" for k, why in skipped.items())
    return True, detail
