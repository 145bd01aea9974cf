"""Planning ``recover-table``, purely: names, foreign-key order, what each mode may do, and
whether recovery stopped where it was asked to.

The operation layer reads the catalogs (of the scratch server at the target and of production
now) into :class:`TableFacts` and asks this module what to do; nothing here talks to a server.

* **Names** (new-table mode): the copy is ``<table>__recovered_<target>`` beside the original
  (``<target>`` says what it holds: ``20261204T143512Z``, ``xid745``, ``lsn0_3000148``, or the
  restore point's name), or ``--into NAME``.  Index and constraint names are unique per schema
  (``organizations_pkey`` would collide with the original's), so every one the copy gets is renamed
  after the copy (``organizations__recovered_xid745_pkey``), within PostgreSQL's 63 bytes and
  never equal to a name already taken in the schema.
* **Order**: rows are inserted parents before children (a child row needs its parent under an
  immediate foreign key) and deleted children before parents.
* **Cascades**: a foreign key ``ON DELETE CASCADE`` that references a recovered table from a
  table *not* being recovered means the mistake very likely deleted rows there too; the command
  names every such table (transitively), so the operator can recover them in the same command.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pgvault.errors import TargetExistsError, UsageError

MODES = ("new-table", "missing-rows", "replace")
MAX_IDENT = 63  # NAMEDATALEN - 1, in bytes
ON_DELETE = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(), schema-qualified
    not_null: bool = False
    generated: bool = False  # GENERATED ALWAYS AS (...) STORED: computed, never inserted
    identity: bool = False


@dataclass(frozen=True)
class Constraint:
    """A primary key (p), unique (u), check (c) or exclusion (x) constraint of a table."""

    name: str
    kind: str
    columns: tuple[str, ...] = ()
    definition: str = ""  # pg_get_constraintdef()


@dataclass(frozen=True)
class ForeignKey:
    name: str
    table: str  # the referencing table, qualified
    columns: tuple[str, ...]
    ref_table: str  # the referenced table, qualified
    ref_columns: tuple[str, ...]
    on_delete: str = "a"  # confdeltype

    def describe(self) -> str:
        return (f"{self.table}.{self.name} ({', '.join(self.columns)}) → {self.ref_table} "
                f"ON DELETE {ON_DELETE.get(self.on_delete, self.on_delete)}")


@dataclass(frozen=True)
class TableFacts:
    """One table as a catalog describes it."""

    name: str  # schema.table, quoted where needed (format('%I.%I'))
    schema: str
    relname: str
    kind: str = "r"  # r: ordinary, p: partitioned
    columns: tuple[Column, ...] = ()
    constraints: tuple[Constraint, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()  # this table's, pointing at others
    referenced_by: tuple[ForeignKey, ...] = ()  # other tables' (and its own), pointing at it
    user_triggers: tuple[str, ...] = ()  # enabled, not internal (foreign keys' are internal)
    indexes: tuple[str, ...] = ()  # indexes that belong to no constraint
    partitions: tuple[str, ...] = ()

    def column_types(self) -> dict[str, str]:
        return {c.name: c.type for c in self.columns}


@dataclass(frozen=True)
class TablePlan:
    """What recover-table does with one table."""

    table: str
    mode: str
    key: Constraint | None = None  # missing-rows / replace: rows are matched on it
    new_name: str = ""  # new-table: qualified name of the copy
    new_relname: str = ""
    new_sql: str = ""  # new-table: the copy's name, quoted for SQL
    renames: tuple[tuple[str, str], ...] = ()  # new-table: (constraint, its name on the copy)
    not_copied: tuple[str, ...] = ()  # new-table: what the copy does not get, and why
    columns: tuple[str, ...] = ()  # the columns written (generated ones are computed)
    column_defs: tuple[tuple[str, str, bool], ...] = ()  # new-table: (name, type, NOT NULL)
    constraint_defs: tuple[str, ...] = ()  # new-table: the definition of each of ``renames``

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "mode": self.mode, "key": self.key.name if self.key else None,
                "key_columns": list(self.key.columns) if self.key else [], "new_table": self.new_name or None,
                "renamed": [{"from": a, "to": b} for a, b in self.renames], "not_copied": list(self.not_copied)}


@dataclass(frozen=True)
class Advice:
    """A table not being recovered that a recovered table's deletion very likely reached."""

    table: str
    via: ForeignKey

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "foreign_key": self.via.name, "references": self.via.ref_table,
                "on_delete": ON_DELETE.get(self.via.on_delete, self.via.on_delete)}


@dataclass(frozen=True)
class RecoverPlanTables:
    order: tuple[str, ...]  # parents first
    tables: tuple[TablePlan, ...]
    advice: tuple[Advice, ...] = field(default_factory=tuple)


# --- names -------------------------------------------------------------------------------------------


_IDENT = re.compile(r'"((?:[^"]|"")*)"|([^."\s]+)')


def parse_table(text: str) -> tuple[str, str]:
    """``SCHEMA.NAME`` (or ``NAME``: schema public) with SQL's quoting: unquoted parts fold to
    lower case, ``"Mixed.Case"`` keeps its case and its dots."""
    parts: list[str] = []
    pos, s = 0, text.strip()
    while pos < len(s):
        m = _IDENT.match(s, pos)
        if not m:
            raise UsageError(f"--table {text!r}: expected SCHEMA.NAME")
        parts.append(m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2).strip().lower())
        pos = m.end()
        if pos < len(s):
            if s[pos] != ".":
                raise UsageError(f"--table {text!r}: expected SCHEMA.NAME")
            pos += 1
    if not parts or len(parts) > 2 or any(not p for p in parts):
        raise UsageError(f"--table {text!r}: expected SCHEMA.NAME")
    return ("public", parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def quote_ident(name: str) -> str:
    """As PostgreSQL's quote_ident: bare when it is a plain lower-case identifier."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) and name not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


_RESERVED = {"all", "analyse", "analyze", "and", "any", "array", "as", "asc", "both", "case", "cast", "check", "collate",
             "column", "constraint", "create", "default", "desc", "distinct", "do", "else", "end", "except", "false",
             "for", "foreign", "from", "grant", "group", "having", "in", "into", "is", "join", "limit", "not", "null",
             "of", "on", "only", "or", "order", "primary", "references", "select", "table", "then", "to", "true",
             "union", "unique", "user", "using", "when", "where", "with"}


def ident(name: str) -> str:
    """Always quoted, for SQL this module's callers build: no keyword list to keep up to date
    (``quote_ident`` above is for showing names)."""
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, relname: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(relname)}"


def _fit(text: str, limit: int = MAX_IDENT) -> str:
    """``text`` cut to ``limit`` bytes of UTF-8 (never inside a character)."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")


def target_tag(kind: str, value: str, exclusive: bool = False) -> str:
    """What a recovered copy holds, for its name: the target, compactly."""
    if kind == "time":
        t = dt.datetime.fromisoformat(value).astimezone(dt.UTC)
        return t.strftime("%Y%m%dT%H%M%SZ")
    if kind == "xid":
        return f"xid{value}" + ("x" if exclusive else "")
    if kind == "lsn":
        return "lsn" + value.replace("/", "_").lower()
    return re.sub(r"[^a-z0-9_]+", "_", value.lower()).strip("_") or "point"


def recovered_name(relname: str, tag: str) -> str:
    """``<relname>__recovered_<tag>`` within 63 bytes (the table's own name is shortened, never the tag)."""
    suffix = f"__recovered_{tag}"
    return _fit(relname, MAX_IDENT - len(suffix.encode("utf-8"))) + suffix


def renamed(conname: str, old_rel: str, new_rel: str, taken: set[str]) -> str:
    """The name constraint/index ``conname`` of ``old_rel`` gets on the copy ``new_rel``: its
    ``old_rel`` prefix replaced (``organizations_pkey`` → ``<new_rel>_pkey``), else ``new_rel``
    prefixed; shortened to 63 bytes and made unique against ``taken`` (which it joins)."""
    rest = conname[len(old_rel):] if conname.startswith(old_rel) else "_" + conname
    base = _fit(new_rel, MAX_IDENT - len(rest.encode("utf-8"))) + rest if len(rest.encode("utf-8")) < 40 \
        else _fit(new_rel + rest)
    name, n = _fit(base), 1
    while name in taken:
        n += 1
        tail = f"_{n}"
        name = _fit(base, MAX_IDENT - len(tail)) + tail
    taken.add(name)
    return name


# --- keys, order, cascades ----------------------------------------------------------------------------


def usable_key(facts: TableFacts) -> Constraint | None:
    """The key rows are matched on: the primary key, else a unique constraint whose columns are
    all NOT NULL (NULLs never match, so a nullable unique key cannot say "this row is missing")."""
    not_null = {c.name for c in facts.columns if c.not_null}
    pk = [c for c in facts.constraints if c.kind == "p"]
    if pk:
        return pk[0]
    for c in sorted((c for c in facts.constraints if c.kind == "u"), key=lambda c: (len(c.columns), c.name)):
        if c.columns and all(col in not_null for col in c.columns):
            return c
    return None


def fk_order(tables: Sequence[str], fks: Iterable[ForeignKey]) -> list[str]:
    """``tables`` parents first (a table after every table it references among them); ties and
    cycles keep the order given (a cycle cannot be ordered: its tables come in the given order)."""
    chosen = list(dict.fromkeys(tables))
    parents: dict[str, set[str]] = {t: set() for t in chosen}
    for fk in fks:
        if fk.table in parents and fk.ref_table in parents and fk.table != fk.ref_table:
            parents[fk.table].add(fk.ref_table)
    out: list[str] = []
    placed: set[str] = set()
    while len(out) < len(chosen):
        ready = [t for t in chosen if t not in placed and parents[t] <= placed]
        if not ready:  # a cycle: the rest in the given order
            ready = [t for t in chosen if t not in placed][:1]
        out.append(ready[0])
        placed.add(ready[0])
    return out


def cascade_advice(chosen: Sequence[str], facts: Mapping[str, TableFacts]) -> list[Advice]:
    """Tables outside ``chosen`` that reference a chosen table (or such a table, transitively)
    with ON DELETE CASCADE: a DELETE of the chosen table's rows deleted theirs too."""
    seen = set(chosen)
    out: list[Advice] = []
    queue = list(chosen)
    while queue:
        t = queue.pop(0)
        f = facts.get(t)
        for fk in (f.referenced_by if f else ()):
            if fk.on_delete == "c" and fk.table not in seen:
                seen.add(fk.table)
                out.append(Advice(fk.table, fk))
                queue.append(fk.table)
    return out


# --- the plan per mode ------------------------------------------------------------------------------


def plan_tables(mode: str, at_target: Sequence[TableFacts], now: Mapping[str, TableFacts | None], *, tag: str,
                into: str | None = None, taken: Mapping[str, set[str]] | None = None) -> RecoverPlanTables:
    """What to do with each table, or :class:`UsageError` listing every reason it cannot be done.

    ``at_target``: the tables as the scratch server has them; ``now``: the same tables in
    production (None: not there now); ``taken``: per schema, the relation names production has
    (indexes share that namespace with tables)."""
    if mode not in MODES:
        raise UsageError(f"--mode must be one of {', '.join(MODES)}")
    if into and len(at_target) != 1:
        raise UsageError("--into names one table: give exactly one --table with it")
    if into and mode != "new-table":
        raise UsageError("--into is for --mode new-table")
    problems: list[str] = []
    plans: list[TablePlan] = []
    by_name = {f.name: f for f in at_target}
    all_fks = [fk for f in at_target for fk in f.foreign_keys]
    order = fk_order([f.name for f in at_target], all_fks)
    names = {s: set(v) for s, v in (taken or {}).items()}
    for name in order:
        f = by_name[name]
        cur = now.get(name)
        writable = tuple(c.name for c in f.columns if not c.generated)
        if mode == "new-table":
            plans.append(_new_table_plan(f, tag, into, names.setdefault(f.schema, set()), problems))
            continue
        if cur is None:
            problems.append(f"{name} does not exist now: nothing to add rows to or replace; recover it beside the "
                            "others with --mode new-table (--into NAME for its old name)")
            continue
        mismatch = _column_mismatch(f, cur)
        if mismatch:
            problems.append(f"{name} changed since the target ({mismatch}); use --mode new-table and compare")
            continue
        key = usable_key(cur)
        if key is None and (mode == "missing-rows" or cur.referenced_by):
            why = ("rows can only be told missing by a primary key or a unique key on NOT NULL columns"
                   if mode == "missing-rows" else "it is referenced by foreign keys, so rows must be matched by a key")
            problems.append(f"{name} has no primary key or NOT NULL unique key: --mode {mode} refused ({why}); "
                            "use --mode new-table and copy the rows you need by hand")
            continue
        plans.append(TablePlan(name, mode, key=key, columns=writable))
    if problems:
        taken_only = all(x.endswith("already exists; choose another name with --into") for x in problems)
        raise (TargetExistsError if taken_only else UsageError)("recover-table cannot do this: " + "; ".join(problems))
    return RecoverPlanTables(tuple(order), tuple(plans), tuple(cascade_advice(order, by_name)))


def _new_table_plan(f: TableFacts, tag: str, into: str | None, taken: set[str], problems: list[str]) -> TablePlan:
    new_rel = into or recovered_name(f.relname, tag)
    if len(new_rel.encode("utf-8")) > MAX_IDENT:
        problems.append(f"--into {new_rel!r} is longer than {MAX_IDENT} bytes")
    if new_rel in taken:
        problems.append(f"{qualified(f.schema, new_rel)} already exists; choose another name with --into")
    taken.add(new_rel)
    renames = tuple((c.name, renamed(c.name, f.relname, new_rel, taken))
                    for c in f.constraints if c.kind in ("p", "u", "c"))  # the order of constraint_defs
    not_copied = [f"foreign key {fk.name} → {fk.ref_table} (it would tie the copy to live rows; add it by hand if "
                  "you keep the copy)" for fk in f.foreign_keys]
    not_copied += [f"constraint {c.name} (exclusion)" for c in f.constraints if c.kind == "x"]
    not_copied += [f"index {i}" for i in f.indexes]
    not_copied += [f"trigger {t}" for t in f.user_triggers]
    not_copied += [f"defaults and identity of {', '.join(c.name for c in f.columns if c.identity)}"] \
        if any(c.identity for c in f.columns) else []
    if f.kind == "p":
        not_copied.append(f"partitioning ({len(f.partitions)} partitions): the copy is one plain table holding every "
                          "partition's rows")
    kept = [c for c in f.constraints if c.kind in ("p", "u", "c")]
    return TablePlan(f.name, "new-table", new_name=qualified(f.schema, new_rel), new_relname=new_rel,
                     new_sql=f"{ident(f.schema)}.{ident(new_rel)}", renames=renames,
                     not_copied=tuple(not_copied), columns=tuple(c.name for c in f.columns),
                     column_defs=tuple((c.name, c.type, c.not_null) for c in f.columns),
                     constraint_defs=tuple(c.definition for c in kept))


def _column_mismatch(at_target: TableFacts, now: TableFacts) -> str:
    then_types, now_types = at_target.column_types(), now.column_types()
    gone = [c for c in then_types if c not in now_types]
    retyped = [f"{c} {then_types[c]} → {now_types[c]}" for c in then_types if c in now_types and now_types[c] != then_types[c]]
    added = [c for c in now_types if c not in then_types and not next(x for x in now.columns if x.name == c).not_null]
    required = [c for c in now_types if c not in then_types and c not in added]
    parts = []
    if gone:
        parts.append(f"columns gone now: {', '.join(gone)}")
    if retyped:
        parts.append(f"types changed: {', '.join(retyped)}")
    if required:
        parts.append(f"NOT NULL columns added since: {', '.join(required)}")
    return "; ".join(parts)


# --- where recovery stopped --------------------------------------------------------------------------

_STOP = re.compile(r"^(before|after) (commit|abort) of transaction (\d+), time (.+)$")
_STOP_LSN = re.compile(r'^(before|after) WAL location \(LSN\) "([0-9A-Fa-f]+/[0-9A-Fa-f]+)"$')
_STOP_POINT = re.compile(r'^at restore point "(.*)", time (.+)$')


def _lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def _stamp(text: str) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return t if t.tzinfo else None


def check_stop(kind: str, value: str, exclusive: bool, stop_detail: str) -> str | None:
    """None when the server's "recovery stopping ..." line (``stop_detail``) is where the target
    says recovery must stop; else what is wrong (the copy must not be used)."""
    d = stop_detail.strip()
    if kind == "xid":
        m = _STOP.match(d)
        want = "before" if exclusive else "after"
        if not m or m.group(3) != value or m.group(1) != want:
            return f"asked to stop {want} transaction {value}, but recovery stopped {d or 'nowhere'}"
        return None
    if kind == "time":
        m = _STOP.match(d)
        target = dt.datetime.fromisoformat(value)
        if not m:
            return f"asked to stop at time {value}, but recovery stopped {d or 'nowhere'}"
        at = _stamp(m.group(4))
        if at is None:
            return None  # a time the server printed in a form we do not read: the direction was checked
        if m.group(1) == "before":
            ok = at >= target if exclusive else at > target
        else:
            ok = at <= target and not exclusive
        return None if ok else f"asked to stop at time {value}, but recovery stopped {d}"
    if kind == "lsn":
        m = _STOP_LSN.match(d)
        want = "before" if exclusive else "after"
        if not m or m.group(1) != want or _lsn(m.group(2)) < _lsn(value):
            return f"asked to stop {want} LSN {value}, but recovery stopped {d or 'nowhere'}"
        return None
    if kind == "name":
        m = _STOP_POINT.match(d)
        if not m or m.group(1) != value:
            return f"asked to stop at restore point {value!r}, but recovery stopped {d or 'nowhere'}"
        return None
    return f"recover-table needs a target (time, LSN, xid or restore point), not {kind}"
