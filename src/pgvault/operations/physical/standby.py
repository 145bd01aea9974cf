"""``restore-cluster --standby``: the settings that make a restored data directory a replica.

A replica seeded from the repository reads nothing from the primary until it streams: the base
backup and the archived WAL come from the repository (``restore_command`` = ``pgvault wal fetch``),
then the WAL receiver connects with ``primary_conninfo`` and follows.  PostgreSQL 12+ wants:

* ``standby.signal`` (not ``recovery.signal``, which would end recovery at the end of the WAL and
  promote; :func:`pgvault.operations.physical.restore_cluster.write_recovery_settings` writes it);
* ``primary_conninfo``, optionally ``primary_slot_name``, ``recovery_target_timeline = 'latest'``
  (said explicitly: a standby must follow a promoted primary's new timeline), and no
  ``recovery_target*`` at all: a target would stop the replica there.

Lines the backup's ``postgresql.auto.conf`` brings along are replaced, not appended to: a backup of
a standby carries its ``primary_conninfo`` (maybe with a password) and slot, a backup of a restored
copy its ``recovery_target*`` lines (:data:`INHERITED`).

Secrets: a password is never accepted in argv (every user of the host sees it with ``ps``), so a
conninfo carrying one is refused.  The password comes from the environment
(:data:`PASSWORD_ENV`) and is written into ``primary_conninfo`` in ``postgresql.auto.conf`` as
``pg_basebackup -R`` does: that file is 0600 and owned by the server's OS user; or the conninfo
names a ``passfile`` the operator manages, and no password is written anywhere.  Reports show the
conninfo without the password.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pgvault.errors import UsageError

#: The environment variable that carries the primary's password (never argv).
PASSWORD_ENV = "PGVAULT_PRIMARY_PASSWORD"
TARGETS = ("recovery_target", "recovery_target_name", "recovery_target_time", "recovery_target_xid",
           "recovery_target_lsn", "recovery_target_inclusive", "recovery_target_action")
#: Settings of the backup's postgresql.auto.conf a standby must not keep, even when it sets none.
INHERITED = (*TARGETS, "primary_conninfo", "primary_slot_name")
# Settings --option may not give together with --standby: the dedicated options write them.
_NOT_BY_OPTION = {*TARGETS, "primary_conninfo", "primary_slot_name", "recovery_target_timeline"}
_SLOT_RE = re.compile(r"^[a-z0-9_]{1,63}$")  # ReplicationSlotValidateName: NAMEDATALEN - 1
_PASSWORD_HINT = (f"give the password in the environment ({PASSWORD_ENV}), or add passfile=PATH to the conninfo "
                  "(a .pgpass file the server's OS user can read)")


@dataclass(frozen=True)
class StandbyOptions:
    """``--primary-conninfo`` (libpq keyword/value or URI, without a password; empty: the replica
    only replays the archive) and ``--primary-slot-name``."""

    primary_conninfo: str = ""
    slot_name: str | None = None


def parse_conninfo(text: str, what: str = "--primary-conninfo") -> dict[str, str]:
    """The parameters of a libpq conninfo (libpq's own parser); refuses a password."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(text).items() if v is not None}
    except ProgrammingError as e:
        raise UsageError(f"{what} is not a libpq connection string: {e}") from None
    if "password" in params:
        raise UsageError(f"{what} must not carry a password: the command line is visible to every user of the host",
                         hint=_PASSWORD_HINT)
    return params


def check(opts: StandbyOptions, options: Mapping[str, str]) -> None:
    """Usage errors of ``--standby`` (and of its options), before anything is written."""
    if opts.primary_conninfo:
        if not parse_conninfo(opts.primary_conninfo):
            raise UsageError("--primary-conninfo is empty", hint="e.g. 'host=primary.example port=5432 user=replicator'")
    elif opts.slot_name:
        raise UsageError("--primary-slot-name needs --primary-conninfo (a slot is used by streaming)")
    if opts.slot_name is not None and not _SLOT_RE.match(opts.slot_name):
        raise UsageError(f"--primary-slot-name {opts.slot_name!r}: a slot name is 1-63 lower-case letters, digits "
                         "or underscores")
    given = sorted(k for k in options if k.lower() in _NOT_BY_OPTION)
    if given:
        raise UsageError(f"--option {', '.join(given)}: with --standby use --primary-conninfo / --primary-slot-name; "
                         "a standby has no recovery target")


def check_option_conninfo(options: Mapping[str, str]) -> None:
    """``--option primary_conninfo=...`` (without --standby) must not carry a password either."""
    for k, v in options.items():
        if k.lower() == "primary_conninfo":
            parse_conninfo(v, "--option primary_conninfo")


def settings(opts: StandbyOptions, environ: Mapping[str, str]) -> dict[str, str]:
    """The standby's settings for postgresql.auto.conf; the password (if any) from :data:`PASSWORD_ENV`."""
    from psycopg.conninfo import make_conninfo

    out: dict[str, str] = {}
    if opts.primary_conninfo:
        params = parse_conninfo(opts.primary_conninfo)
        if environ.get(PASSWORD_ENV):
            params["password"] = environ[PASSWORD_ENV]
        out["primary_conninfo"] = make_conninfo(**params)  # libpq's quoting of each value
        if opts.slot_name:
            out["primary_slot_name"] = opts.slot_name
    out["recovery_target_timeline"] = "latest"
    return out


def redact(conninfo: str) -> str:
    """``conninfo`` as reports show it: the password replaced."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = {k: str(v) for k, v in conninfo_to_dict(conninfo).items() if v is not None}
    if "password" in params:
        params["password"] = "********"
    return make_conninfo(**params)


def describe(opts: StandbyOptions, environ: Mapping[str, str]) -> dict[str, Any]:
    """What the report says about the replica: the primary (no password) and where its password is."""
    if not opts.primary_conninfo:
        return {"primary": None, "slot": None, "password": None}
    params = parse_conninfo(opts.primary_conninfo)
    if environ.get(PASSWORD_ENV):
        password = f"from {PASSWORD_ENV}, written into primary_conninfo in postgresql.auto.conf (mode 0600)"
    elif params.get("passfile"):
        password = f"passfile {params['passfile']}"
    else:
        password = "none given (libpq's defaults of the server's OS user: ~/.pgpass, certificates, trust)"
    primary = {k: params[k] for k in ("host", "hostaddr", "port", "user", "dbname", "sslmode") if k in params}
    return {"primary": primary, "slot": opts.slot_name, "password": password}


__all__ = ["PASSWORD_ENV", "INHERITED", "TARGETS", "StandbyOptions", "parse_conninfo", "check", "check_option_conninfo", "settings",
           "redact", "describe"]
