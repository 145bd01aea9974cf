"""Keeping a repository trustworthy: ``drill`` (restore drills that prove backups restore and
time them), ``expire`` (apply the retention plan), ``verify`` (read back and check everything),
``status`` (one snapshot of repository and server; the verdict on it is
:mod:`pgvault.policy.verdict`), ``metrics`` (that snapshot for Prometheus) and ``unfinished``
(writes a dead run left behind)."""
