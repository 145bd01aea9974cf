"""Pure decisions: given what the repository holds (manifests, the WAL archive index, listings)
and what the user asked, compute a plan or a verdict.  No module here performs I/O or imports a
module that does (no storage, server, pipeline, CLI or ``operations`` import; ``config`` only for
type names) — the rule is checked by ``tests/unit/test_layers.py``.  Each is tested exhaustively
on its own.

``pitr`` (choose the base backup and WAL for a recovery target), ``wal_check`` (continuity and
timeline checks), ``retention`` + ``retention_wal`` (what expire keeps), ``toc`` (which pg_restore
list entries a table selection needs), ``verdict`` (the status snapshot and its OK / WARNING /
CRITICAL judgement)."""
