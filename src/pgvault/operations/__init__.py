"""What pgvault does, one package per capability; each command is one entry point in one of them.

Shared by all: ``context`` (settings + storage + connection, what every entry point receives),
``progress``, ``workers`` (pool processes that die with their parent) and ``server_probe``
(what a running server says about its archiving).  The capabilities:

* ``logical``     — logical backups and restores (pg_dump / pg_restore), scratch copies, properties;
* ``physical``    — base backups, restoring a cluster, following recovery, restore points;
* ``archive``     — WAL push and fetch (archive_command / restore_command) and their background helpers;
* ``maintenance`` — drills, expire, verify, status, metrics, unfinished writes.

The decisions they take that need no I/O live in :mod:`pgvault.policy`, which imports none of this.
A module here never imports the CLI or a storage backend (only the ``Storage`` contract).
"""
