"""The package map (docs/design.md §2) as rules the imports must keep (issue 9).

* ``policy/`` is pure: it imports only the standard library, errors, WAL math, the repository's
  data models and the storage contract's value types (``config`` only for type names).
* Nothing in ``operations/`` or ``policy/`` imports the CLI or a storage backend.
* A verb — a module that is one command's entry point and nothing else — is imported only by the
  CLI: no verb imports another verb.  What several commands run is an engine (``logical.restore``:
  the restore command and every logical drill; ``physical.restore_cluster`` and ``recovery``:
  restore-cluster and physical drills; ``archive.push_fetch``: one segment, run by ``wal push`` /
  ``wal fetch`` and by the background pusher and prefetcher), shared with repository readers and
  policy.
* Capability packages depend in one direction: ``maintenance`` (drills, verify, ...) may use the
  engines of ``logical``, ``physical`` and ``archive``; those three use none of each other's (and
  never ``maintenance``).  The shared modules (``operations.context``, ...) serve all.
* ``runbook/`` is pure rendering (settings in, text out): the standard library without I/O, the
  settings, the repository's key layout and libpq's conninfo parser; no operation, storage or CLI,
  so the runbook can be made anywhere and can only say what the configuration says.
* No import cycles.

Imports are read from the source (every ``import`` statement, also inside functions), except
those under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "pgvault"

POLICY_MAY_IMPORT = {
    "pgvault.errors",
    "pgvault.pg.wal",
    "pgvault.repository.layout",
    "pgvault.repository.archive_index",
    "pgvault.repository.manifest",
    "pgvault.repository.physical",
    "pgvault.storage.base",
}
STDLIB_IO = {"subprocess", "socket", "shutil", "tempfile", "urllib", "http", "select", "signal", "multiprocessing",
             "threading", "concurrent", "psycopg", "boto3", "botocore"}
BACKENDS = {"pgvault.storage.local", "pgvault.storage.s3", "pgvault.storage.s3_read", "pgvault.storage.s3_uploads",
            "pgvault.storage.memory"}
VERBS = {
    "pgvault.operations.logical.backup",
    "pgvault.operations.physical.basebackup",
    "pgvault.operations.physical.restore_point",
    "pgvault.operations.physical.recover_table",
    "pgvault.operations.maintenance.drill",
    "pgvault.operations.maintenance.expire",
    "pgvault.operations.maintenance.verify",
    "pgvault.operations.maintenance.status",
    "pgvault.operations.maintenance.metrics",
    "pgvault.operations.maintenance.repo_sync",
    "pgvault.operations.archive.wal_find",
}
CAPABILITIES = ("logical", "physical", "archive", "maintenance")
MAY_USE = {"maintenance": {"logical", "physical", "archive"}, "logical": set(), "physical": set(), "archive": set()}


def _module(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for b in node.body for n in ast.walk(b)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from pgvault.policy import toc" imports the module pgvault.policy.toc (and only
            # the package's __init__, which these rules do not judge)
            base = PKG.parent / node.module.replace(".", "/")
            subs = {f"{node.module}.{a.name}" for a in node.names if (base / f"{a.name}.py").exists()}
            found |= subs if len(subs) == len(node.names) else subs | {node.module}
    return found


def _modules(*packages: str) -> dict[str, set[str]]:
    out = {}
    for package in packages:
        for path in sorted((PKG / package).rglob("*.py")):
            out[_module(path)] = _imports(path)
    return out


def test_policy_is_pure() -> None:
    bad = []
    for mod, imports in _modules("policy").items():
        for imp in imports:
            top = imp.split(".")[0]
            if imp.startswith("pgvault"):
                if not (imp in POLICY_MAY_IMPORT or imp.startswith("pgvault.policy") or imp == "pgvault"):
                    bad.append(f"{mod} imports {imp}")
            elif top in STDLIB_IO or top not in sys.stdlib_module_names:
                bad.append(f"{mod} imports {imp}")
    assert not bad, bad


def test_operations_and_policy_import_no_cli_and_no_storage_backend() -> None:
    bad = [f"{mod} imports {imp}" for mod, imports in _modules("operations", "policy").items() for imp in imports
           if imp.startswith("pgvault.cli") or imp in BACKENDS]
    assert not bad, bad


def test_verbs_are_imported_only_by_the_cli() -> None:
    mods = _modules("operations", "policy")
    assert VERBS <= set(mods), VERBS - set(mods)
    bad = sorted(f"{m} imports the verb {i}" for m, imports in mods.items() for i in imports if i in VERBS and i != m)
    assert not bad, bad


def _capability(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 3 and parts[1] == "operations" and parts[2] in CAPABILITIES else None


def test_capability_packages_depend_in_one_direction() -> None:
    bad = []
    for m, imports in _modules("operations").items():
        mine = _capability(m)
        for i in imports:
            theirs = _capability(i)
            if mine and theirs and theirs != mine and theirs not in MAY_USE[mine]:
                bad.append(f"{m} imports {i}")
            if mine is None and theirs is not None:  # a shared module serves all, depends on none
                bad.append(f"{m} (shared) imports {i}")
    assert not bad, bad


def test_the_rules_see_imports_inside_functions() -> None:
    # drill imports the logical restore inside a function: the scan must find it
    assert "pgvault.operations.logical.restore" in _modules("operations")["pgvault.operations.maintenance.drill"]


RUNBOOK_MAY_IMPORT = {"pgvault.config", "pgvault.repository.layout", "psycopg.conninfo"}


def test_runbook_is_pure_rendering() -> None:
    bad = []
    for mod, imports in _modules("runbook").items():
        for imp in imports:
            if imp.startswith("pgvault.runbook") or imp in RUNBOOK_MAY_IMPORT:
                continue
            top = imp.split(".")[0]
            if top == "pgvault" or top in STDLIB_IO or top not in sys.stdlib_module_names:
                bad.append(f"{mod} imports {imp}")
    assert not bad, bad
