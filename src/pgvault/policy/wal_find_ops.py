"""The operations ``wal find`` looks for: apart from :mod:`pgvault.policy.wal_find` because the CLI
names them in every ``wal`` parser, and ``wal push`` (once per WAL segment) must not import the parser
and tracker to print a help text."""

OPS = ("delete", "update", "truncate", "drop", "rewrite")
DEFAULT_OPS = ("delete", "truncate", "drop")
