"""recover-table's pure planning (policy/recover.py): names, foreign-key order, cascade advice,
what each mode accepts, and the check of where recovery stopped."""

from __future__ import annotations

import pytest

from pgvault.errors import TargetExistsError, UsageError
from pgvault.policy import recover as p
from pgvault.policy.recover import Column, Constraint, ForeignKey, TableFacts


def _fk(child: str, parent: str, on_delete: str = "c", col: str = "parent_id") -> ForeignKey:
    return ForeignKey(f"{child.split('.')[1]}_{col}_fkey", child, (col,), parent, ("id",), on_delete)


ORGS, PROJECTS, CONFIGS, HISTORY = "public.organizations", "public.projects", "public.configs", "public.config_history"
FK_PROJ, FK_CONF, FK_HIST = _fk(PROJECTS, ORGS), _fk(CONFIGS, PROJECTS), _fk(HISTORY, CONFIGS)


def _table(name: str, *, pk: tuple[str, ...] | None = ("id",), fks: tuple[ForeignKey, ...] = (),
           refs: tuple[ForeignKey, ...] = (), cols: tuple[Column, ...] | None = None, kind: str = "r",
           uniques: tuple[Constraint, ...] = (), triggers: tuple[str, ...] = ()) -> TableFacts:
    schema, rel = name.split(".")
    columns = cols or (Column("id", "bigint", True, identity=True), Column("name", "text", True),
                       Column("note", "text"))
    cons = ((Constraint(f"{rel}_pkey", "p", pk, f"PRIMARY KEY ({', '.join(pk)})"),) if pk else ()) + uniques
    return TableFacts(name, schema, rel, kind, columns, cons, fks, refs, triggers)


SCENE = {
    ORGS: _table(ORGS, refs=(FK_PROJ,), uniques=(Constraint("organizations_slug_key", "u", ("name",), "UNIQUE (name)"),)),
    PROJECTS: _table(PROJECTS, fks=(FK_PROJ,), refs=(FK_CONF,)),
    CONFIGS: _table(CONFIGS, fks=(FK_CONF,), refs=(FK_HIST,), triggers=("configs_audit", "configs_touch")),
    HISTORY: _table(HISTORY, pk=("id", "changed_at"), fks=(FK_HIST,), kind="p"),
}


# --- names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("public.organizations", ("public", "organizations")),
    ("organizations", ("public", "organizations")),
    ("Sales.Orders", ("sales", "orders")),
    ('"Sales"."My.Orders"', ("Sales", "My.Orders")),
    ('app."we""ird"', ("app", 'we"ird')),
])
def test_parse_table(text: str, expected: tuple[str, str]) -> None:
    assert p.parse_table(text) == expected


@pytest.mark.parametrize("bad", ["", "a.b.c", "a..b", '"unterminated', "a b"])
def test_parse_table_refuses(bad: str) -> None:
    with pytest.raises(UsageError):
        p.parse_table(bad)


def test_quote_ident_and_qualified() -> None:
    assert p.qualified("public", "organizations") == "public.organizations"
    assert p.qualified("Sales", "order") == '"Sales"."order"'
    assert p.quote_ident('we"ird') == '"we""ird"'
    assert p.ident("offset") == '"offset"' and p.ident('a"b') == '"a""b"'  # SQL: always quoted, no keyword list


def test_target_tags_say_what_the_copy_holds() -> None:
    assert p.target_tag("time", "2026-12-04T15:35:12+01:00") == "20261204T143512Z"
    assert p.target_tag("xid", "745", exclusive=True) == "xid745x"
    assert p.target_tag("xid", "745") == "xid745"
    assert p.target_tag("lsn", "0/3000148") == "lsn0_3000148"
    assert p.target_tag("name", "Before Mistake!") == "before_mistake"


def test_recovered_name_fits_63_bytes_and_keeps_the_tag() -> None:
    assert p.recovered_name("organizations", "xid745x") == "organizations__recovered_xid745x"
    long = p.recovered_name("o" * 60, "20261204T143512Z")
    assert len(long.encode()) <= 63 and long.endswith("__recovered_20261204T143512Z")
    multibyte = p.recovered_name("ö" * 40, "xid1")  # never cut inside a character
    assert len(multibyte.encode()) <= 63 and multibyte.encode().decode() == multibyte


def test_renamed_constraints_never_collide() -> None:
    taken = {"organizations_pkey", "organizations__recovered_xid1_pkey"}
    assert p.renamed("organizations_pkey", "organizations", "organizations__recovered_xid1", taken) == \
        "organizations__recovered_xid1_pkey_2"
    assert p.renamed("slug_unique", "organizations", "orgs_copy", taken) == "orgs_copy_slug_unique"
    long = p.renamed("t_" + "x" * 60, "t", "n" * 63, set())
    assert len(long.encode()) <= 63
    again = set()
    a = p.renamed("organizations_pkey", "organizations", "n" * 63, again)
    b = p.renamed("organizations_pkey", "organizations", "n" * 63, again)
    assert a != b and len(b.encode()) <= 63


# --- keys, order, cascades ----------------------------------------------------------------------------


def test_usable_key_prefers_the_primary_key_then_a_not_null_unique() -> None:
    assert p.usable_key(SCENE[ORGS]).name == "organizations_pkey"  # type: ignore[union-attr]
    cols = (Column("a", "int", True), Column("b", "int", False))
    nullable = Constraint("t_b_key", "u", ("b",))
    strict = Constraint("t_a_key", "u", ("a",))
    t = TableFacts("public.t", "public", "t", columns=cols, constraints=(nullable,))
    assert p.usable_key(t) is None  # NULLs never match
    t2 = TableFacts("public.t", "public", "t", columns=cols, constraints=(nullable, strict))
    assert p.usable_key(t2) == strict


def test_fk_order_puts_parents_first_whatever_the_order_given() -> None:
    fks = [FK_PROJ, FK_CONF, FK_HIST]
    assert p.fk_order([HISTORY, CONFIGS, ORGS, PROJECTS], fks) == [ORGS, PROJECTS, CONFIGS, HISTORY]
    assert p.fk_order([CONFIGS, ORGS], fks) == [CONFIGS, ORGS]  # not related among the chosen: as given
    self_ref = _fk(ORGS, ORGS, col="parent_org")
    assert p.fk_order([PROJECTS, ORGS], [*fks, self_ref]) == [ORGS, PROJECTS]
    a, b = "public.a", "public.b"
    cycle = [_fk(a, b), _fk(b, a)]
    assert p.fk_order([b, a], cycle) == [b, a]  # a cycle keeps the given order


def test_cascade_advice_follows_cascades_transitively_and_only_cascades() -> None:
    advice = p.cascade_advice([ORGS], SCENE)
    assert [a.table for a in advice] == [PROJECTS, CONFIGS, HISTORY]
    assert advice[0].via == FK_PROJ
    assert p.cascade_advice([ORGS, PROJECTS, CONFIGS, HISTORY], SCENE) == []
    restrict = {**SCENE, ORGS: _table(ORGS, refs=(_fk(PROJECTS, ORGS, "r"),))}
    assert p.cascade_advice([ORGS], restrict) == []
    assert advice[0].to_json() == {"table": PROJECTS, "foreign_key": FK_PROJ.name, "references": ORGS,
                                   "on_delete": "CASCADE"}


# --- plans per mode -----------------------------------------------------------------------------------


def test_missing_rows_plan_orders_parents_first_and_matches_on_the_key() -> None:
    at = [SCENE[HISTORY], SCENE[CONFIGS], SCENE[ORGS], SCENE[PROJECTS]]
    plan = p.plan_tables("missing-rows", at, SCENE, tag="xid9x")
    assert plan.order == (ORGS, PROJECTS, CONFIGS, HISTORY)
    assert [t.key.columns for t in plan.tables] == [("id",), ("id",), ("id",), ("id", "changed_at")]  # type: ignore[union-attr]
    assert plan.advice == ()


def test_missing_rows_refuses_without_a_key_or_when_the_table_is_gone_or_changed() -> None:
    nokey = _table("public.log", pk=None)
    with pytest.raises(UsageError, match="no primary key"):
        p.plan_tables("missing-rows", [nokey], {"public.log": nokey}, tag="t")
    with pytest.raises(UsageError, match="does not exist now"):
        p.plan_tables("missing-rows", [SCENE[ORGS]], {ORGS: None}, tag="t")
    retyped = _table(ORGS, cols=(Column("id", "bigint", True), Column("name", "integer", True), Column("note", "text")))
    with pytest.raises(UsageError, match=r"types changed: name text → integer"):
        p.plan_tables("missing-rows", [SCENE[ORGS]], {ORGS: retyped}, tag="t")
    widened = _table(ORGS, cols=(*SCENE[ORGS].columns, Column("extra", "text")))  # a nullable column added: fine
    assert p.plan_tables("missing-rows", [SCENE[ORGS]], {ORGS: widened}, tag="t").tables[0].key is not None
    required = _table(ORGS, cols=(*SCENE[ORGS].columns, Column("extra", "text", True)))
    with pytest.raises(UsageError, match="NOT NULL columns added since: extra"):
        p.plan_tables("missing-rows", [SCENE[ORGS]], {ORGS: required}, tag="t")


def test_replace_without_a_key_only_when_nothing_references_the_table() -> None:
    nokey = _table("public.log", pk=None)
    plan = p.plan_tables("replace", [nokey], {"public.log": nokey}, tag="t")
    assert plan.tables[0].key is None
    referenced = _table("public.log", pk=None, refs=(_fk("public.x", "public.log"),))
    with pytest.raises(UsageError, match="referenced by foreign keys"):
        p.plan_tables("replace", [referenced], {"public.log": referenced}, tag="t")


def test_generated_columns_are_not_written() -> None:
    cols = (Column("id", "bigint", True), Column("total", "numeric", generated=True), Column("n", "int"))
    t = _table("public.g", cols=cols)
    assert p.plan_tables("missing-rows", [t], {"public.g": t}, tag="t").tables[0].columns == ("id", "n")
    assert p.plan_tables("new-table", [t], {"public.g": t}, tag="t").tables[0].columns == ("id", "total", "n")


def test_new_table_plan_names_the_copy_renames_constraints_and_says_what_is_not_copied() -> None:
    taken = {"public": {"organizations", "organizations_pkey", "organizations_slug_key"}}
    plan = p.plan_tables("new-table", [SCENE[ORGS], SCENE[HISTORY], SCENE[CONFIGS]], {}, tag="xid9x", taken=taken)
    orgs = next(t for t in plan.tables if t.table == ORGS)
    assert orgs.new_name == "public.organizations__recovered_xid9x"
    assert orgs.new_sql == '"public"."organizations__recovered_xid9x"'  # SQL: always quoted
    assert orgs.renames == (("organizations_pkey", "organizations__recovered_xid9x_pkey"),
                            ("organizations_slug_key", "organizations__recovered_xid9x_slug_key"))
    assert orgs.constraint_defs == ("PRIMARY KEY (id)", "UNIQUE (name)")
    assert orgs.column_defs[0] == ("id", "bigint", True)
    assert any("defaults and identity of id" in n for n in orgs.not_copied)
    hist = next(t for t in plan.tables if t.table == HISTORY)
    assert any(n.startswith("foreign key config_history_parent_id_fkey") for n in hist.not_copied)
    assert any(n.startswith("partitioning") for n in hist.not_copied)
    conf = next(t for t in plan.tables if t.table == CONFIGS)
    assert "trigger configs_audit" in conf.not_copied
    # A taken name is refused, --into names it, and --into takes one table in new-table mode only.
    taken["public"].add("organizations__recovered_xid9x")
    with pytest.raises(TargetExistsError, match="already exists"):
        p.plan_tables("new-table", [SCENE[ORGS]], {}, tag="xid9x", taken=taken)
    assert p.plan_tables("new-table", [SCENE[ORGS]], {}, tag="xid9x", into="orgs_then", taken=taken).tables[0].new_name \
        == "public.orgs_then"
    with pytest.raises(UsageError, match="exactly one --table"):
        p.plan_tables("new-table", [SCENE[ORGS], SCENE[PROJECTS]], {}, tag="t", into="x")
    with pytest.raises(UsageError, match="--into is for --mode new-table"):
        p.plan_tables("replace", [SCENE[ORGS]], SCENE, tag="t", into="x")
    with pytest.raises(UsageError, match="--mode must be"):
        p.plan_tables("merge", [SCENE[ORGS]], SCENE, tag="t")


# --- where recovery stopped --------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "value", "exclusive", "detail", "ok"), [
    ("xid", "745", True, "before commit of transaction 745, time 2026-12-04 14:35:12.1+00", True),
    ("xid", "745", False, "after commit of transaction 745, time 2026-12-04 14:35:12.1+00", True),
    ("xid", "745", True, "after commit of transaction 745, time 2026-12-04 14:35:12.1+00", False),
    ("xid", "745", True, "before commit of transaction 746, time 2026-12-04 14:35:12.1+00", False),
    ("xid", "745", True, "", False),
    ("time", "2026-12-04T14:35:00+00:00", False, "before commit of transaction 9, time 2026-12-04 14:35:00.5+00", True),
    ("time", "2026-12-04T14:35:00+00:00", False, "before commit of transaction 9, time 2026-12-04 14:34:59+00", False),
    ("time", "2026-12-04T14:35:00+00:00", True, "before commit of transaction 9, time 2026-12-04 14:35:00+00", True),
    ("time", "2026-12-04T14:35:00+00:00", False, "before commit of transaction 9, time 2026-12-04 14:35:00+00", False),
    ("time", "2026-12-04T15:35:00+01:00", False, "before commit of transaction 9, time 2026-12-04 14:35:01+00", True),
    ("time", "2026-12-04T14:35:00+00:00", False, "after commit of transaction 9, time 2026-12-04 14:35:00+00", True),
    ("time", "2026-12-04T14:35:00+00:00", False, "before commit of transaction 9, time yesterday", True),
    ("time", "2026-12-04T14:35:00+00:00", False, "at restore point \"x\", time 2026-12-04 14:35:00+00", False),
    ("lsn", "0/3000148", False, 'after WAL location (LSN) "0/3000148"', True),
    ("lsn", "0/3000148", True, 'before WAL location (LSN) "0/3000150"', True),
    ("lsn", "0/3000148", True, 'after WAL location (LSN) "0/3000150"', False),
    ("lsn", "0/3000148", False, 'after WAL location (LSN) "0/3000100"', False),
    ("name", "before-mistake", False, 'at restore point "before-mistake", time 2026-12-04 14:35:00+00', True),
    ("name", "before-mistake", False, 'at restore point "other", time 2026-12-04 14:35:00+00', False),
    ("end", "", False, "", False),
])
def test_check_stop(kind: str, value: str, exclusive: bool, detail: str, ok: bool) -> None:
    problem = p.check_stop(kind, value, exclusive, detail)
    assert (problem is None) == ok, problem


# --- the human report ----------------------------------------------------------------------------------


def test_the_human_report_says_what_changed_per_mode() -> None:
    from pgvault.cli.recover_table import describe
    from pgvault.operations.physical.recover_load import TableReport

    doc = {
        "plan": {"backup_id": "20261204T020000Z", "first_wal": "000000010000000000000002", "timeline": 1,
                 "last_reachable_wal": "000000010000000000000009", "warnings": [],
                 "target": {"kind": "xid", "value": "745", "exclusive": True}},
        "database": "app", "mode": "missing-rows", "dry_run": False, "target_database": None,
        "recovery": {"stop_detail": "before commit of transaction 745, time 2026-12-04 14:35:12+00",
                     "segments_restored": 7},
        "phases": {"unpack": 1.0, "replay": 2.0, "dump": 0.5, "load": 0.25},
        "results": [
            TableReport("public.organizations", "missing-rows", 25, rows_before=3, rows_after=28, inserted=25,
                        not_at_target=3, notes=["25 of the 25 rows put back have no rows in public.projects now"],
                        triggers_disabled=["audit"]).to_json(),
            TableReport("public.organizations", "new-table", 25, rows_after=25, created="public.o__recovered_xid745x",
                        constraints=["o__recovered_xid745x_pkey (was organizations_pkey): PRIMARY KEY (id)"],
                        not_copied=["foreign key x"]).to_json(),
        ],
        "cascade_advice": [{"table": "public.projects", "references": "public.organizations",
                            "foreign_key": "projects_organization_id_fkey", "on_delete": "CASCADE"}],
    }
    text = describe(doc)
    assert "recovered: database app as of before xid 745" in text
    assert "recovery stopped before commit of transaction 745" in text
    assert "3 rows before, 25 at the target, 25 inserted, 0 updated, 0 deleted, 28 now" in text
    assert "3 rows there now were not at the target (written since): left alone" in text
    assert "not fired for the recovered rows: triggers audit" in text
    assert "created public.o__recovered_xid745x from public.organizations: 25 rows" in text
    assert "not copied: foreign key x" in text
    assert "recover it too (--table public.projects)" in text
    dry = {**doc, "dry_run": True, "tables": [{"table": "public.organizations", "exists_now": True, "rows_now": 3}],
           "would_change": ["insert into public.organizations ..."]}
    text = describe(dry)
    assert "plan: database app" in text and "would: insert into" in text and "nothing was changed" in text
    db = {**doc, "target_database": "app_before", "database_counts": {"public.a": 2, "public.b": 3}}
    assert "new database app_before: 2 tables, 5 rows" in describe(db)
