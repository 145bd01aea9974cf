"""Selecting the archive entries that belong to chosen tables (pure: text in, list-file out).

``pg_restore -t`` restores a table's definition and data but none of its indexes, constraints,
triggers or sequences, which is not what an operator restoring a dropped table wants.  We read the
archive's table of contents (``pg_restore -l``) and its schema script (``pg_restore -s``), work out
which entries belong to the selected tables, and hand pg_restore a ``-L`` list in archive order
(which is pg_dump's dependency order).

TOC lines look like ``3399; 2606 16607 CONSTRAINT public actor actor_pkey postgres``: id, catalog
oid, object oid, type (may contain spaces), schema, tag (may contain spaces), owner.  The schema
script introduces each entry with ``-- Name: <tag>; Type: <type>; Schema: <schema>; Owner: ...``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Longest first, so "TABLE DATA" wins over "TABLE".
_TYPES = sorted(
    [
        "TABLE", "TABLE DATA", "TABLE ATTACH", "CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT", "INDEX",
        "INDEX ATTACH", "TRIGGER", "DEFAULT", "POLICY", "ROW SECURITY", "RULE", "SEQUENCE", "SEQUENCE SET",
        "SEQUENCE OWNED BY", "COMMENT", "ACL", "STATISTICS", "VIEW", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA",
        "FUNCTION", "PROCEDURE", "AGGREGATE", "TYPE", "DOMAIN", "SCHEMA", "EXTENSION", "DEFAULT ACL",
        "PUBLICATION TABLE", "SECURITY LABEL", "FOREIGN TABLE", "COLLATION", "CONVERSION", "OPERATOR",
        "EVENT TRIGGER", "BLOB", "BLOBS", "LARGE OBJECT",
    ],
    key=len,
    reverse=True,
)
_LINE_RE = re.compile(r"^\s*(\d+);\s+\d+\s+\d+\s+(.*)$")
_HEADER_RE = re.compile(r"^-- Name: (.*); Type: (.*); Schema: (.*); Owner: .*$")
_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QUALIFIED_RE = re.compile(rf"({_IDENT})\.({_IDENT})")
_NEXTVAL_RE = re.compile(r"nextval\('([^']+)'")

# Entries whose tag starts with the table's name ("actor actor_pkey", "actor last_updated").
_PER_TABLE_TYPES = {"CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT", "TRIGGER", "DEFAULT", "POLICY", "RULE", "ROW SECURITY"}


@dataclass(frozen=True)
class TocEntry:
    """One line of ``pg_restore -l``."""

    line: str
    dump_id: int
    type: str
    schema: str
    tag: str


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def parse_toc(text: str) -> list[TocEntry]:
    """The entries of a ``pg_restore -l`` listing, in archive order (comments skipped)."""
    entries = []
    for line in text.splitlines():
        if line.startswith(";"):
            continue
        m = _LINE_RE.match(line)
        if not m:
            continue
        rest = m.group(2)
        for t in _TYPES:
            if rest.startswith(t + " "):
                fields = rest[len(t) + 1 :].split(" ")
                if len(fields) >= 3:
                    entries.append(TocEntry(line, int(m.group(1)), t, fields[0], " ".join(fields[1:-1])))
                break
    return entries


def parse_schema_script(text: str) -> dict[tuple[str, str, str], str]:
    """``(type, schema, tag) -> SQL body`` from a ``pg_restore -s`` script."""
    bodies: dict[tuple[str, str, str], str] = {}
    key: tuple[str, str, str] | None = None
    lines: list[str] = []
    for line in text.splitlines():
        m = _HEADER_RE.match(line)
        if m:
            if key is not None:
                bodies[key] = "\n".join(lines)
            key = (m.group(2), m.group(3), m.group(1))
            lines = []
        elif key is not None:
            lines.append(line)
    if key is not None:
        bodies[key] = "\n".join(lines)
    return bodies


def _qualified_names(sql: str) -> set[tuple[str, str]]:
    return {(_unquote(a), _unquote(b)) for a, b in _QUALIFIED_RE.findall(sql)}


def data_entries(entries: Iterable[TocEntry], tables: set[tuple[str, str]]) -> list[TocEntry]:
    """Only the TABLE DATA entries of ``tables``."""
    return [e for e in entries if e.type == "TABLE DATA" and (e.schema, e.tag) in tables]


def full_entries(
    entries: list[TocEntry],
    bodies: Mapping[tuple[str, str, str], str],
    tables: set[tuple[str, str]],
    *,
    existing_sequences: Iterable[tuple[str, str]] = (),
    missing_schemas: Iterable[str] = (),
) -> list[TocEntry]:
    """Everything needed to re-create ``tables`` from scratch: definition, data, indexes,
    constraints, triggers, defaults, policies, partition attachment, comments and grants, and the
    sequences they use unless those still exist (``existing_sequences``)."""
    names = {t for _, t in tables}
    indexes: set[tuple[str, str]] = set()
    for (typ, schema, tag), body in bodies.items():
        if typ == "INDEX":
            m = re.search(rf"\bON\s+(?:ONLY\s+)?({_IDENT})\.({_IDENT})", body)
            if m and (_unquote(m.group(1)), _unquote(m.group(2))) in tables:
                indexes.add((schema, tag))
    constraints = {(e.schema, e.tag.split(" ", 1)[1]) for e in entries
                   if e.type in _PER_TABLE_TYPES and " " in e.tag and (e.schema, e.tag.split(" ", 1)[0]) in tables}
    sequences: set[tuple[str, str]] = set()
    for (typ, schema, tag), body in bodies.items():
        if typ == "SEQUENCE OWNED BY" or typ == "SEQUENCE":
            for qs, qn in _qualified_names(body):
                if (qs, qn) in tables and ("OWNED BY" in body or "ALTER TABLE" in body):
                    sequences.add((schema, tag))
        if (typ == "TABLE" and (schema, tag) in tables) or (typ == "DEFAULT" and (schema, tag.split(" ", 1)[0]) in tables):
            for ref in _NEXTVAL_RE.findall(body):
                q = _QUALIFIED_RE.fullmatch(ref)
                if q:
                    sequences.add((_unquote(q.group(1)), _unquote(q.group(2))))
    sequences -= set(existing_sequences)

    chosen = []
    for e in entries:
        key = (e.schema, e.tag)
        first = (e.schema, e.tag.split(" ", 1)[0])
        if e.type == "SCHEMA" and e.tag in set(missing_schemas):
            chosen.append(e)
        elif e.type in ("TABLE", "TABLE DATA", "TABLE ATTACH") and key in tables:
            chosen.append(e)
        elif e.type in _PER_TABLE_TYPES and first in tables:
            chosen.append(e)
        elif e.type == "INDEX" and key in indexes:
            chosen.append(e)
        elif e.type == "INDEX ATTACH" and (key in indexes or key in constraints):
            chosen.append(e)
        elif e.type in ("SEQUENCE", "SEQUENCE SET", "SEQUENCE OWNED BY") and key in sequences:
            chosen.append(e)
        elif e.type in ("COMMENT", "ACL") and e.tag.startswith("TABLE ") and e.tag[6:] in names and (e.schema, e.tag[6:]) in tables:
            chosen.append(e)
    return chosen


def list_file(entries: Iterable[TocEntry]) -> str:
    """A ``pg_restore -L`` list; pg_restore follows the order given, so keep the archive's."""
    return "".join(e.line + "\n" for e in entries)


def schema_with_data_of(
    entries: list[TocEntry], bodies: Mapping[tuple[str, str, str], str], tables: set[tuple[str, str]]
) -> list[TocEntry]:
    """For a new database: the whole schema, but data only for ``tables``.  Foreign keys from a
    selected table to a table left empty would fail to validate, so those are left out."""
    chosen = []
    for e in entries:
        if e.type == "TABLE DATA" and (e.schema, e.tag) not in tables:
            continue
        if e.type == "FK CONSTRAINT":
            body = bodies.get((e.type, e.schema, e.tag), "")
            m = re.search(rf"REFERENCES\s+({_IDENT})\.({_IDENT})", body)
            if m and (_unquote(m.group(1)), _unquote(m.group(2))) not in tables:
                continue
        chosen.append(e)
    return chosen



# pg_restore without --exit-on-error reports each error and the statement that failed:
#   pg_restore: error: could not execute query: ERROR:  extension "adminpack" is not available
#   HINT:  ...
#   Command was: CREATE EXTENSION IF NOT EXISTS adminpack WITH SCHEMA pg_catalog;
# With --verbose it names the archive entry first ("pg_restore: from TOC entry 215; 3079 16385
# EXTENSION adminpack postgres": type, tag, owner; no schema), which is preferred when present.
_FROM_ENTRY_RE = re.compile(r"^pg_restore: from TOC entry (\d+); \d+ \d+ (.*)$")
_ERROR_RE = re.compile(r"^pg_restore: error: (?:could not execute query: )?(?:ERROR:\s+)?(.*)$")
_COMMAND_RE = re.compile(r"^Command was: (.*)$")
_IGNORED_RE = re.compile(r"errors ignored on restore: (\d+)")
IGNORED_ERRORS = "errors ignored on restore:"


def restore_errors(stderr: str) -> list[str]:
    """What a pg_restore that went on after errors failed on, one line per error naming the object
    (``CREATE EXTENSION IF NOT EXISTS adminpack ...: extension "adminpack" is not available``);
    when only the last lines of its output are at hand, a last line says how many are not shown."""
    found: list[list[str]] = []  # [object, error]
    entry = ""
    total = None
    for line in stderr.splitlines():
        if m := _FROM_ENTRY_RE.match(line):
            words = m.group(2).rstrip().split(" ")
            what = " ".join(words[:-1]) if len(words) > 1 and not m.group(2).endswith(" ") else m.group(2).strip()
            entry = f"{what} (TOC entry {m.group(1)})"
        elif m := _ERROR_RE.match(line):
            found.append([entry, m.group(1).strip()])
            entry = ""
        elif (m := _COMMAND_RE.match(line)) and found and not found[-1][0]:
            command = m.group(1).strip()
            found[-1][0] = command if len(command) <= 120 else command[:117] + "..."
        elif m := _IGNORED_RE.search(line):
            total = int(m.group(1))
    out = [f"{what}: {error}" if what else error for what, error in found]
    if total is not None and total > len(out):
        out.append(f"and {total - len(out)} more error(s) not shown")
    return out
