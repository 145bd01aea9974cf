"""The package map (docs/design.md §2) as rules the imports must keep (issue 9).

* ``policy/`` is pure: it imports only the standard library, errors, WAL math, the repository's
  data models and the storage contract's value types (``config`` only for type names).
* Nothing in ``operations/`` or ``policy/`` imports the CLI or a storage backend.
* A verb (a module a CLI command calls as its entry point) never imports another verb; they share
  engines, repository readers and policy instead.  ``PENDING`` lists the edges still to be cut,
  with the reason; it may only shrink.
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
    "pgvault.operations.logical.restore",
    "pgvault.operations.physical.basebackup",
    "pgvault.operations.physical.restore_cluster",
    "pgvault.operations.physical.restore_point",
    "pgvault.operations.archive.push_fetch",
    "pgvault.operations.archive.background",
    "pgvault.operations.maintenance.drill",
    "pgvault.operations.maintenance.expire",
    "pgvault.operations.maintenance.verify",
    "pgvault.operations.maintenance.status",
    "pgvault.operations.maintenance.metrics",
}
# Verb -> verb edges not yet cut (issue 9 continues): each must be removed, never added to.
PENDING = {
    ("pgvault.operations.maintenance.drill", "pgvault.operations.logical.restore"): "a drill runs the logical restore",
    ("pgvault.operations.maintenance.drill", "pgvault.operations.physical.restore_cluster"):
        "a drill runs the cluster restore",
    ("pgvault.operations.archive.background", "pgvault.operations.archive.push_fetch"):
        "the background pusher/prefetcher run push/fetch per segment",
}


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


def test_no_verb_imports_another_verb() -> None:
    mods = _modules("operations")
    assert VERBS <= set(mods), VERBS - set(mods)
    edges = {(m, i) for m in VERBS for i in mods[m] if i in VERBS and i != m}
    assert edges - set(PENDING) == set(), f"new verb -> verb imports: {sorted(edges - set(PENDING))}"
    assert set(PENDING) - edges == set(), f"cut, remove from PENDING: {sorted(set(PENDING) - edges)}"


def test_the_rules_see_imports_inside_functions() -> None:
    # drill imports the logical restore inside a function: the scan must find it
    assert "pgvault.operations.logical.restore" in _modules("operations")["pgvault.operations.maintenance.drill"]
