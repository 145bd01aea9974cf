"""Reading tables' definitions from a catalog into :class:`~pgvault.policy.recover.TableFacts`.

The same queries read the scratch server (the tables as they were at the target) and production
(as they are now).  They run with ``search_path = pg_catalog`` so that every type and expression
comes back schema-qualified (``public.plan``, not ``plan``) and means the same on the other server.
"""

from __future__ import annotations

from typing import Any

from pgvault.policy.recover import Column, Constraint, ForeignKey, TableFacts

_REL = """
SELECT c.oid, format('%%I.%%I', n.nspname, c.relname), n.nspname, c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
"""
_COLUMNS = """
SELECT attname, format_type(atttypid, atttypmod), attnotnull, attgenerated <> '', attidentity <> ''
FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum
"""
_CONSTRAINTS = """
SELECT conname, contype, coalesce((SELECT array_agg(a.attname ORDER BY k.i) FROM unnest(conkey) WITH ORDINALITY k(n, i)
         JOIN pg_attribute a ON a.attrelid = conrelid AND a.attnum = k.n), '{}'),
       pg_get_constraintdef(oid)
FROM pg_constraint WHERE conrelid = %s AND contype IN ('p', 'u', 'c', 'x') AND coninhcount = 0 ORDER BY conname
"""
_FKS = """
SELECT conname, format('%%I.%%I', cn.nspname, cc.relname),
       (SELECT array_agg(a.attname ORDER BY k.i) FROM unnest(conkey) WITH ORDINALITY k(n, i)
         JOIN pg_attribute a ON a.attrelid = conrelid AND a.attnum = k.n),
       format('%%I.%%I', rn.nspname, rc.relname),
       (SELECT array_agg(a.attname ORDER BY k.i) FROM unnest(confkey) WITH ORDINALITY k(n, i)
         JOIN pg_attribute a ON a.attrelid = confrelid AND a.attnum = k.n),
       confdeltype
FROM pg_constraint f
JOIN pg_class cc ON cc.oid = f.conrelid JOIN pg_namespace cn ON cn.oid = cc.relnamespace
JOIN pg_class rc ON rc.oid = f.confrelid JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE contype = 'f' AND conparentid = 0 AND {side} = %s AND cc.relispartition IS NOT TRUE
ORDER BY conname
"""
_TRIGGERS = "SELECT tgname FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal AND tgenabled <> 'D' AND tgparentid = 0 ORDER BY tgname"
_TRIGGERS_14 = "SELECT tgname FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal AND tgenabled <> 'D' ORDER BY tgname"
_INDEXES = """
SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
WHERE x.indrelid = %s AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conindid = x.indexrelid AND conrelid = %s)
ORDER BY 1
"""
_PARTITIONS = """
SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_partition_tree(%s::regclass) t
JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE t.isleaf ORDER BY 1
"""


def read_facts(conn: Any, schema: str, relname: str) -> TableFacts | None:
    """``schema.relname`` as ``conn``'s database has it, or None when there is no such table."""
    conn.execute("SET search_path = pg_catalog")
    row = conn.execute(_REL, (schema, relname)).fetchone()
    if row is None:
        return None
    oid, name, nsp, rel, kind = int(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4])
    columns = tuple(Column(str(r[0]), str(r[1]), bool(r[2]), bool(r[3]), bool(r[4]))
                    for r in conn.execute(_COLUMNS, (oid,)).fetchall())
    constraints = tuple(Constraint(str(r[0]), str(r[1]), tuple(r[2] or ()), str(r[3]))
                        for r in conn.execute(_CONSTRAINTS, (oid,)).fetchall())

    def fks(side: str) -> tuple[ForeignKey, ...]:
        return tuple(ForeignKey(str(r[0]), str(r[1]), tuple(r[2] or ()), str(r[3]), tuple(r[4] or ()), str(r[5]))
                     for r in conn.execute(_FKS.format(side=side), (oid,)).fetchall())

    version = int(conn.execute("SELECT current_setting('server_version_num')::int").fetchone()[0])
    triggers = tuple(str(r[0]) for r in conn.execute(_TRIGGERS if version >= 130000 else _TRIGGERS_14, (oid,)).fetchall())
    indexes = tuple(str(r[0]) for r in conn.execute(_INDEXES, (oid, oid)).fetchall())
    parts = tuple(str(r[0]) for r in conn.execute(_PARTITIONS, (oid,)).fetchall()) if kind == "p" else ()
    return TableFacts(name=name, schema=nsp, relname=rel, kind=kind, columns=columns, constraints=constraints,
                      foreign_keys=fks("f.conrelid"), referenced_by=fks("f.confrelid"), user_triggers=triggers,
                      indexes=indexes, partitions=parts)


def relation_names(conn: Any, schemas: set[str]) -> dict[str, set[str]]:
    """Per schema, every relation name (tables, indexes, sequences, views share one namespace)."""
    rows = conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE n.nspname = ANY(%s)", (sorted(schemas),)).fetchall()
    out: dict[str, set[str]] = {s: set() for s in schemas}
    for nsp, rel in rows:
        out[str(nsp)].add(str(rel))
    return out


def exact_count(conn: Any, table: str) -> int:
    """Rows of ``table`` (a partitioned table counts its partitions' rows)."""
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 - a name from format('%I.%I')
    return int(row[0])


__all__ = ["read_facts", "relation_names", "exact_count"]
