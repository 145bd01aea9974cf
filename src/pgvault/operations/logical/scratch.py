"""What a logical restore leaves on disk and on the server while it runs, and how it ends.

* **Scratch databases.**  A whole database is always restored under a scratch name
  (``<target>_pgvault_<hex>``) and renamed to its target only once it is complete and verified,
  so a killed restore never leaves a half-restored database under the name applications use.
  Each scratch database carries a comment (``pgvault restore scratch {...}``) naming the process
  that made it (host, pid, process start) and that process's control session (backend pid and
  start).  The next restore sweeps scratch databases whose maker is gone: on the same host the
  process itself is the evidence (pid and start time, so a reused pid does not count); from
  another host its control session, which lives as long as the process.
* **Spool files** (``--jobs N``, ``--table``) are named ``pgvault-restore.<host>.<pid>.<start>.*``
  in the scratch directory and swept the same way, on the same host only.
* **The swap.**  Moving the old database aside and the copy in is one transaction
  (``ALTER DATABASE ... RENAME`` may run in a transaction block): either both renames happen or
  neither.  Connections to the copy are refused before it (``ALLOW_CONNECTIONS false``) and the
  sessions still there are ended; the target's sessions are refused or, with ``--force``, ended.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pgvault import log
from pgvault.errors import DatabaseError, PgvaultError, StorageError, TargetBusyError, TargetExistsError
from pgvault.pg.conn import database_sessions
from pgvault.procs import host_tag, process_alive, process_start  # tests still import the process_* from here

MARK = "pgvault restore scratch "
# What the sweep looks at: names we generate (the comment must match too).
_NAME_PATTERN = r"_pgvault_(old_)?[0-9a-f]{8}$"
_SPOOL_RE = re.compile(r"^pgvault-(?:restore|toc)\.([A-Za-z0-9-]+)\.(\d+)\.(\d+)\.")
_SWAP_ATTEMPTS = 3  # a session can sneak in between ending sessions and the rename; retry that


@dataclass(frozen=True)
class Identity:
    """The restore process and its control session, as recorded on what it leaves behind."""

    host: str
    pid: int
    started: int
    backend_pid: int
    backend_start: str

    @classmethod
    def current(cls, conn: psycopg.Connection[Any]) -> Identity:
        row = conn.execute("SELECT pg_backend_pid(), extract(epoch FROM backend_start)::text FROM pg_stat_activity"
                           " WHERE pid = pg_backend_pid()").fetchone()
        pid = os.getpid()
        host = host_tag()
        return cls(host, pid, process_start(pid) or 0, int(row[0]) if row else 0, str(row[1]) if row else "")

    def mark(self, role: str, target: str) -> str:
        """The comment put on a scratch (``role`` copy) or moved-aside (``old``) database."""
        return MARK + json.dumps({
            "role": role, "target": target, "host": self.host, "pid": self.pid, "started": self.started,
            "backend_pid": self.backend_pid, "backend_start": self.backend_start,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        })

    def spool_prefix(self, kind: str) -> str:
        return f"pgvault-{kind}.{self.host}.{self.pid}.{self.started}."


def scratch_name(target: str, *, old: bool = False) -> str:
    """``<target>_pgvault_<hex>`` (``_pgvault_old_`` for the database moved aside), < 64 bytes."""
    head = target.encode("utf-8")[:40].decode("utf-8", "ignore")
    return f"{head}_pgvault_{'old_' if old else ''}{uuid.uuid4().hex[:8]}"


def end_sessions(conn: psycopg.Connection[Any], name: str) -> int:
    rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                        " AND pid <> pg_backend_pid()", (name,)).fetchall()
    return len(rows)


def drop_database(conn: psycopg.Connection[Any], name: str) -> None:
    """Drop ``name`` whoever is connected to it (the caller made or swept it)."""
    end_sessions(conn, name)
    # A template cannot be dropped; a restored template copy is still ours to drop.
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s AND datistemplate", (name,)).fetchone():
        conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(name)))
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def drop_quietly(conn: psycopg.Connection[Any], name: str) -> str:
    """Drop a scratch database on the way out of a failure; say where it is if that fails too."""
    try:
        drop_database(conn, name)
    except psycopg.Error as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.get().warning("could not drop scratch database %s: %s", name, why)
        return (f"the restore's copy {name!r} could not be dropped ({why}): drop it by hand, or the next "
                "pgvault restore on this server drops it once this process is gone")
    return f"the restore's copy {name!r} was dropped"


def _mark_of(comment: str | None) -> dict[str, Any] | None:
    if not comment or not comment.startswith(MARK):
        return None
    try:
        info = json.loads(comment[len(MARK):])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _maker_alive(conn: psycopg.Connection[Any], info: dict[str, Any], me: Identity) -> bool:
    try:
        pid, started, backend_pid = int(info["pid"]), int(info.get("started", 0)), int(info["backend_pid"])
    except (KeyError, TypeError, ValueError):
        return True  # cannot judge: leave it alone
    if info.get("host") == me.host:
        return process_alive(pid, started)
    # Another host: its control session lives exactly as long as the process (backend_start is
    # NULL for other users' sessions without pg_read_all_stats: the pid alone then counts).
    return conn.execute(
        "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND (backend_start IS NULL"
        " OR extract(epoch FROM backend_start)::text = %s)", (backend_pid, str(info.get("backend_start", "")))
    ).fetchone() is not None


def sweep_databases(conn: psycopg.Connection[Any], me: Identity) -> list[str]:
    """Drop scratch databases of restores whose process is gone; describe each one dropped."""
    rows = conn.execute("SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname ~ %s",
                        (_NAME_PATTERN,)).fetchall()
    swept = []
    for name, comment in rows:
        info = _mark_of(comment)
        if info is None or _maker_alive(conn, info, me):
            continue
        what = "moved-aside previous copy" if info.get("role") == "old" else "partial copy"
        try:
            drop_database(conn, str(name))
        except psycopg.Error as e:
            # Not ours to drop (another role's restore) or busy: the restore at hand goes on.
            log.get().warning("could not sweep %s, left by a restore that is gone: %s", name, _first_line(e))
            continue
        swept.append(f"database {name} ({what} of {info.get('target')!r} left by pid {info.get('pid')} on "
                     f"{info.get('host')} at {info.get('created')})")
    return swept


def sweep_files(directory: str | None, me: Identity) -> list[str]:
    """Delete spool files (decrypted dumps) of restores on this host whose process is gone."""
    where = directory or tempfile.gettempdir()
    swept = []
    try:
        entries = list(os.scandir(where))
    except OSError:
        return []
    for entry in entries:
        m = _SPOOL_RE.match(entry.name)
        if not m or m.group(1) != me.host or not entry.is_file(follow_symlinks=False):
            continue
        if process_alive(int(m.group(2)), int(m.group(3))):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        swept.append(f"file {entry.path}")
    return swept


class SpoolFile:
    """A private temporary file for decrypted dump bytes (mode 0600, deleted by its user).

    Writes are unbuffered: a buffered file would fail again with ENOSPC when closed on the way
    out of the first failure, replacing the clear error with a bare OSError.
    """

    def __init__(self, me: Identity, kind: str, directory: str | None, suffix: str, *, needed: int = 0) -> None:
        self.directory = directory or tempfile.gettempdir()
        self.needed = needed
        self.written = 0
        try:
            self.fd, self.path = tempfile.mkstemp(prefix=me.spool_prefix(kind), suffix=suffix, dir=self.directory)
        except OSError as e:
            raise self._error(e) from None

    def _error(self, e: OSError) -> PgvaultError:
        need = f" (the uncompressed dump is {self.needed} bytes)" if self.needed else ""
        hint = f"free space in {self.directory}, or point --scratch-dir at a filesystem with room{need}"
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return StorageError(f"disk full in {self.directory} after writing {self.written} bytes of the decrypted "
                                f"archive; the backup itself is intact", hint=hint)
        return StorageError(f"cannot write a temporary file in {self.directory}: {e.strerror or e}", hint=hint)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self.written += n
        except OSError as e:
            raise self._error(e) from None
        return len(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def check_sessions(conn: psycopg.Connection[Any], target: str, force: bool) -> None:
    """Refuse (or with ``force`` end) other sessions on ``target``; prepared transactions always refuse."""
    prepared = [str(r[0]) for r in conn.execute("SELECT gid FROM pg_prepared_xacts WHERE database = %s", (target,))]
    if prepared:
        raise TargetBusyError(
            f"database {target!r} has {len(prepared)} prepared transaction(s): {', '.join(prepared)}",
            hint="COMMIT PREPARED or ROLLBACK PREPARED them first: they keep the database in use",
        )
    sessions = database_sessions(conn, target)
    if not sessions:
        return
    desc = ", ".join(f"pid {p} ({u or '?'}{'/' + a if a else ''}, {s or '?'})" for p, u, a, s in sessions)
    if not force:
        raise TargetBusyError(
            f"database {target!r} has {len(sessions)} connected session(s): {desc}",
            hint="stop the application first, or pass --force to terminate these sessions",
        )
    log.get().warning("terminating %d session(s) on %s: %s", len(sessions), target, desc)
    end_sessions(conn, target)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def put_in_place(conn: psycopg.Connection[Any], build: str, target: str, me: Identity, *, replace: bool, force: bool,
                 final: list[sql.Composed]) -> str | None:
    """Rename the verified copy ``build`` to ``target``, moving an existing ``target`` aside first,
    in one transaction that also runs ``final``.  Returns the moved-aside name (to be dropped).

    On failure nothing has changed (the transaction rolled back) and the error says so; the
    caller still owns ``build``.
    """
    ident = sql.Identifier
    unchanged = f"nothing changed: {target!r} is " + ("still the previous database" if replace else "not there")
    # Nobody has business in the copy; refuse new connections (superusers too) and end the rest.
    conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident(build)))
    last: psycopg.Error | None = None
    for _ in range(_SWAP_ATTEMPTS):
        ended = end_sessions(conn, build)
        if ended:
            log.get().warning("ended %d session(s) connected to the restore's scratch copy %s", ended, build)
        if replace:
            try:
                check_sessions(conn, target, force)
            except TargetBusyError as e:
                e.message += f"; {unchanged}"
                raise
        old = scratch_name(target, old=True) if replace else None
        try:
            with conn.transaction():
                if old is not None:
                    conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(target), ident(old)))
                    # Marked, closed and no template: if this process dies before dropping it,
                    # the next restore does (the swap it belonged to has committed).
                    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident(old), sql.Literal(me.mark("old", target))))
                    conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false IS_TEMPLATE false").format(ident(old)))
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(build), ident(target)))
                conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(ident(target)))
                for stmt in final:
                    conn.execute(stmt)
            return old
        except psycopg.errors.ObjectInUse as e:
            last = e  # rolled back: a session got in between; end it and try again
            held = conn.execute("SELECT database, string_agg(gid, ', ') FROM pg_prepared_xacts WHERE database IN (%s, %s)"
                                " GROUP BY 1", (build, target)).fetchall()
            if held:  # prepared transactions cannot be ended: retrying is pointless
                # Ending them takes a connection to their database (the copy too, then).
                conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(ident(build)))
                raise TargetBusyError(
                    f"cannot put the restored copy in place of {target!r} ({_first_line(e)}): prepared transaction(s) "
                    + "; ".join(f"{r[1]} in {r[0]!r}" for r in held) + f"; {unchanged}",
                    hint="connect to their database and COMMIT PREPARED or ROLLBACK PREPARED them, then restore "
                         "again (it drops a copy left over)") from None
        except psycopg.errors.DuplicateDatabase:
            raise TargetExistsError(f"database {target!r} was created by someone else while restoring; it was left "
                                    "alone", hint="restore again under another --target-database, or with --clean") from None
        except psycopg.Error as e:
            if conn.broken or conn.closed:  # the COMMIT may or may not have happened
                raise DatabaseError(
                    f"lost the connection while renaming the restored copy to {target!r} ({_first_line(e)}): either "
                    f"{target!r} is the restored copy{f' and the previous database is {old!r}' if old else ''}, or "
                    f"nothing changed and the copy is {build!r}",
                    hint="check with `psql -l`; the next pgvault restore drops what is left over",
                ) from None
            raise DatabaseError(f"cannot rename the restored copy {build!r} to {target!r}: {_first_line(e)}; "
                                f"{unchanged}") from None
    raise TargetBusyError(
        f"cannot put the restored copy in place of {target!r}: {_first_line(last or Exception())}; {unchanged}",
        hint="stop what keeps connecting (or pass --force) and restore again",
    )
