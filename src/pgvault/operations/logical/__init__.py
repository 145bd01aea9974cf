"""Logical backups and restores: ``backup`` (pg_dump of every database + globals, row counts in a
snapshot), ``restore`` (pg_restore of a database or selected tables, always through a scratch
copy), ``scratch`` (scratch databases, the all-or-nothing swap, sweeping leftovers) and
``dbprops`` (database properties: owner, settings, grants, recorded and re-applied)."""
