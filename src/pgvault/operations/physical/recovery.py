"""Starting a restored server, following its recovery, and checking where it really stopped.

``restore-cluster --start`` and physical drills promise "recovered to the target" only when the
server itself says so and the stop point matches the plan:

* **Each run reads only its own server's output.**  The log is a new file per run
  (``<data dir>-recovery-<UTC time>-<pid>.log`` beside the data directory; inside it, a base
  backup of the restored copy would carry it along), and the server followed is the postmaster
  whose pid this run's ``pg_ctl start`` put into ``postmaster.pid``.  Reading an older run's log,
  or taking an older server's exit for ours, once reported a previous restore as this one.
* **"Promoted" is confirmed by the server**: a connection answering ``pg_is_in_recovery() =
  false`` (or, when no role of the restored cluster lets us in, ``pg_control``'s own state "in
  production" written at the end of recovery), not only a log line.
* **The stop point is compared with the plan.**  For a named target PostgreSQL (13+) refuses to
  promote when the WAL ran out before the target ("recovery ended before configured recovery
  target was reached"), so a "recovery stopping" line must be in this run's log.  Recovery to the
  end of the archive has no such check in PostgreSQL: it promotes wherever ``restore_command``
  first said "not found".  We compare the last segment restored with the last one the plan says
  the archive holds; short of it, the promoted server is stopped and the restore fails (exit 12).
* **A standby** (``restore-cluster --standby``) has no stop point: it is followed until it is
  consistent and, with a primary, until its WAL receiver streams ("started streaming WAL from
  primary"); the server must then say it is in recovery.  A WAL receiver that keeps failing
  (:data:`STREAM_ATTEMPTS` times: a wrong password, no ``replication`` line in the primary's
  pg_hba.conf, a missing slot) fails the command with its message; the server is left running
  and retrying, as PostgreSQL does.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgvault.errors import PgvaultError, RecoveryError
from pgvault.pg import wal
from pgvault.pg.bindir import bindir_for_major
from pgvault.pg.runner import Runner, owner_of
from pgvault.policy.pitr import Plan

# catalog/pg_control.h: system_identifier u64, pg_control_version u32, catalog_version_no u32,
# state (enum DBState) at offset 16; stable since PostgreSQL 9.x.
_CONTROL_STATE = struct.Struct("=QIIi")
_DB_STATES = {0: "starting up", 1: "shut down", 2: "shut down in recovery", 3: "shutting down",
              4: "in crash recovery", 5: "in archive recovery", 6: "in production"}
LOG_TAIL_LINES = 12
STREAM_ATTEMPTS = 3  # failed WAL receiver connections before --start --standby gives up (5 s apart by default)


@dataclass
class RecoveryOutcome:
    """What the started server did, read from its log and confirmed by the server."""

    state: str = "starting"  # paused | promoted | shutdown | standby
    stop_detail: str = ""
    consistent_at: str = ""
    redo_done_at: str = ""
    last_transaction_time: str = ""
    new_timeline: int | None = None
    segments_restored: int = 0
    last_segment: str = ""
    seconds: float = 0.0
    log_file: str = ""
    confirmed_by: str = ""  # how the server confirmed its state
    replay_lsn: str = ""  # pg_last_wal_replay_lsn(), when a connection was possible
    expected_wal: str = ""  # the last segment the plan says recovery must restore (end of archive)
    streaming_from: str = ""  # a standby's WAL receiver: "LSN on timeline N" where streaming started
    stream_failures: int = 0  # a standby's failed WAL receiver connections
    stream_error: str = ""  # the last one's message

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


_EVENTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r'restored log file "([0-9A-F]{24})" from archive'), "restored"),
    (re.compile(r"consistent recovery state reached at ([0-9A-F]+/[0-9A-F]+)"), "consistent"),
    (re.compile(r"recovery stopping (.*)"), "stopping"),
    (re.compile(r"(pausing at the end of recovery|recovery has paused)"), "paused"),
    (re.compile(r"selected new timeline ID: (\d+)"), "timeline"),
    (re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)"), "redo_done"),
    (re.compile(r"last completed transaction was at log time (.*)"), "last_tx"),
    (re.compile(r"database system is ready to accept connections"), "ready"),
    (re.compile(r"shutdown at recovery target"), "shutdown_target"),
    (re.compile(r"started streaming WAL from primary at ([0-9A-F]+/[0-9A-F]+ on timeline \d+)"), "streaming"),
    # PostgreSQL 18 prefixes the first: 'streaming replication receiver "walreceiver" could not connect ...'
    (re.compile(r"(?:FATAL|ERROR):\s+(.*could not (?:connect to the primary server|start WAL streaming|receive data from "
                r"WAL stream).*)"), "stream_failed"),
    (re.compile(r"(?:FATAL|PANIC):\s+(.*)"), "fatal"),
]


def apply_line(outcome: RecoveryOutcome, line: str, fatals: list[str]) -> None:
    """Update ``outcome`` from one server log line."""
    for pattern, event in _EVENTS:
        m = pattern.search(line)
        if not m:
            continue
        if event == "restored":
            outcome.segments_restored += 1
            outcome.last_segment = max(outcome.last_segment, m.group(1), key=lambda n: (n[8:], n[:8]))
        elif event == "consistent":
            outcome.consistent_at = m.group(1)
        elif event == "stopping":
            outcome.stop_detail = m.group(1)
        elif event == "paused":
            outcome.state = "paused"
        elif event == "timeline":
            outcome.new_timeline = int(m.group(1))
        elif event == "redo_done":
            outcome.redo_done_at = m.group(1)
        elif event == "last_tx":
            outcome.last_transaction_time = m.group(1)
        elif event == "ready":
            outcome.state = "promoted"
        elif event == "shutdown_target":
            outcome.state = "shutdown"
        elif event == "streaming":
            outcome.streaming_from = m.group(1)
        elif event == "stream_failed":
            outcome.stream_failures += 1
            outcome.stream_error = m.group(1)
            fatals.append(m.group(1))  # still a FATAL line, should the server exit
        elif event == "fatal":
            fatals.append(m.group(1))
        return


def server_running(data_dir: Path) -> bool:
    """A postmaster whose pid ``postmaster.pid`` names is alive."""
    return _postmaster_pid(data_dir) is not None


def _pid_lines(data_dir: Path) -> list[str]:
    try:
        return (data_dir / "postmaster.pid").read_text().split("\n")
    except OSError:
        return []


def _postmaster_pid(data_dir: Path) -> int | None:
    lines = _pid_lines(data_dir)
    try:
        pid = int(lines[0])
        os.kill(pid, 0)
    except (IndexError, ValueError, OSError):
        return None
    return pid


def new_log_file(data_dir: Path) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return data_dir.parent / f"{data_dir.name}-recovery-{stamp}-{os.getpid()}.log"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a server log (kept in error messages and drill reports: the log itself may
    be deleted with a scratch directory)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def control_state(data_dir: Path) -> str:
    """``pg_control``'s cluster state ("in production", "in archive recovery", ...)."""
    try:
        with open(data_dir / "global" / "pg_control", "rb") as f:
            raw = f.read(_CONTROL_STATE.size)
        return _DB_STATES.get(_CONTROL_STATE.unpack(raw)[3], "unknown")
    except (OSError, struct.error):
        return "unreadable"


def start_and_follow(
    runner: Runner, data_dir: Path, plan: Plan, *, major: int, bin_dirs: tuple[str, ...] = (), port: int | None = None,
    environ: Mapping[str, str] | None = None, timeout: float | None = None,
    progress: Callable[[RecoveryOutcome], None] | None = None, clock: Callable[[], float] = time.monotonic,
    expected_wal: str | None = None, users: tuple[str, ...] = (), standby: str | None = None,
) -> RecoveryOutcome:
    """Start the restored server and follow its log until recovery ends at the target (or fails);
    then confirm the state with the server and compare the stop point with ``plan``.  ``standby``
    ("stream" or "archive"): follow a standby until it is consistent and (``stream``) streams."""
    bindir = bindir_for_major(major, bin_dirs)
    log_file = new_log_file(data_dir)
    log_file.touch()
    _chown_like_data(log_file, data_dir)
    server_opts = "-c lc_messages=C -c logging_collector=off"
    if port:
        server_opts += f" -p {port}"
    t0 = clock()
    r = runner.using(bindir).run("pg_ctl", ["-D", str(data_dir), "-l", str(log_file), "-W", "-o", server_opts, "start"],
                                 env=environ or os.environ, as_user=owner_of(data_dir), timeout=120)
    if not r.ok:
        raise RecoveryError(f"pg_ctl could not start the restored server: {r.detail()}")
    outcome = RecoveryOutcome(log_file=str(log_file), expected_wal=expected_wal or "")
    action = plan.target.action if plan.target.kind != "end" else "promote"
    fatals: list[str] = []
    pid: int | None = None
    last_report = t0

    def failed(detail: str) -> RecoveryError:
        tail = log_tail(log_file)
        return RecoveryError(f"recovery failed: {detail} (log: {log_file})" + (f"\nlast server log lines:\n{tail}" if tail else ""),
                             hint="nothing was promoted; fix the cause and run restore-cluster again "
                             "(with --force), or start the server by hand to retry")

    with open(log_file, encoding="utf-8", errors="replace") as f:
        while True:
            line = f.readline()
            if line:
                apply_line(outcome, line.rstrip("\n"), fatals)
                if standby is not None:
                    if outcome.consistent_at and (standby == "archive" or outcome.streaming_from):
                        break
                    if outcome.stream_failures >= STREAM_ATTEMPTS and not outcome.streaming_from:
                        raise _not_streaming(outcome, log_file)
                elif (outcome.state == "paused" and action == "pause") or outcome.state == "promoted":
                    break
                continue
            if pid is None:
                pid = _postmaster_pid(data_dir)
            alive = pid is not None and _alive(pid)
            if not alive and (pid is not None or clock() - t0 > 10):
                for ln in f.read().splitlines():
                    apply_line(outcome, ln, fatals)
                if outcome.state == "shutdown" and action == "shutdown":
                    break
                raise failed("; ".join(fatals[-3:]) or "the server exited")
            if timeout is not None and clock() - t0 > timeout:
                goal = "its target" if standby is None else "streaming" if standby == "stream" else "consistency"
                raise RecoveryError(f"recovery did not reach {goal} within {timeout:.0f}s; the server is still "
                                    f"running (log: {log_file})")
            if progress and clock() - last_report >= 5:
                last_report = clock()
                outcome.seconds = clock() - t0
                progress(outcome)
            time.sleep(0.1)
    outcome.seconds = clock() - t0
    if standby is not None:
        in_recovery, replay_lsn, how = _ask_server(data_dir, environ or os.environ, users)
        if not in_recovery:
            raise RecoveryError(f"the standby is not in recovery ({how}): check standby.signal in {data_dir}")
        outcome.state, outcome.confirmed_by, outcome.replay_lsn = "standby", how, replay_lsn or ""
        return outcome
    try:
        _confirm(outcome, data_dir, plan, action, environ or os.environ, users)
    except RecoveryError:
        if outcome.state == "promoted":
            stop_server(runner, data_dir, major, bin_dirs)
        raise
    return outcome


def _not_streaming(outcome: RecoveryOutcome, log_file: Path) -> RecoveryError:
    return RecoveryError(
        f"the standby replays the archive ({outcome.segments_restored} WAL files restored) but cannot stream from the "
        f"primary: {outcome.stream_error} ({outcome.stream_failures} attempts; log: {log_file})",
        hint="the server is left running and keeps retrying; check primary_conninfo in postgresql.auto.conf, the "
        "password (PGVAULT_PRIMARY_PASSWORD or a passfile), a 'replication' line in the primary's pg_hba.conf and "
        "the slot, then restart it (or stop it and run restore-cluster again with --force)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _chown_like_data(path: Path, data_dir: Path) -> None:
    if os.geteuid() == 0:
        st = (data_dir / "PG_VERSION").stat()
        os.chown(path, st.st_uid, st.st_gid)


def _confirm(outcome: RecoveryOutcome, data_dir: Path, plan: Plan, action: str, environ: Mapping[str, str],
             users: tuple[str, ...]) -> None:
    """Ask the server what the log claimed, then hold the stop point against the plan."""
    if outcome.state == "shutdown":
        state = control_state(data_dir)
        if state != "shut down in recovery":
            raise RecoveryError(f"the log says the server shut down at the target, but pg_control says {state!r}")
        outcome.confirmed_by = "pg_control: shut down in recovery"
    else:
        in_recovery, replay_lsn, how = _ask_server(data_dir, environ, users)
        outcome.confirmed_by = how
        outcome.replay_lsn = replay_lsn or ""
        if outcome.state == "promoted" and in_recovery:
            raise RecoveryError(f"the log says the server was promoted, but it is still in recovery ({how})")
        if outcome.state == "paused" and not in_recovery:
            raise RecoveryError(f"the log says recovery paused at the target, but the server is not in recovery ({how})")
    if plan.target.kind not in ("end",) and not outcome.stop_detail:
        raise RecoveryError(f"recovery ended without reaching {plan.target.describe()} (no 'recovery stopping' in "
                            f"this run's server log {outcome.log_file})")
    if plan.target.kind == "end" and outcome.expected_wal:
        seg_size = plan.backup.wal_segment_size
        want = wal.parse_segment_name(outcome.expected_wal, seg_size)[1]
        got = wal.parse_segment_name(outcome.last_segment, seg_size)[1] if outcome.last_segment else -1
        if got < want:
            raise RecoveryError(
                f"recovery stopped short: it promoted after restoring {outcome.last_segment or 'no WAL file'}, but the "
                f"archive holds WAL up to {outcome.expected_wal}; committed transactions after the stop are missing "
                "from this copy, so the server was stopped (do not use it)",
                hint="run 'pgvault verify --all' and 'pgvault status' to find the damaged or missing WAL")


def _ask_server(data_dir: Path, environ: Mapping[str, str], users: tuple[str, ...]) -> tuple[bool, str | None, str]:
    """(in recovery?, last replayed LSN, how we know): a connection to this server if any role
    lets us in over its socket, else pg_control's state."""
    from pgvault.pg.conn import ConnInfo, connect

    lines = _pid_lines(data_dir)
    port = lines[3].strip() if len(lines) > 3 else ""
    sockdir = lines[4].strip() if len(lines) > 4 else ""
    listen = lines[5].strip() if len(lines) > 5 else ""
    host = sockdir or ("127.0.0.1" if listen in ("*", "0.0.0.0", "") else listen.split(",")[0].strip())
    last: str = "no port in postmaster.pid"
    if port:
        import pwd

        owner = pwd.getpwuid(data_dir.stat().st_uid).pw_name
        for user in dict.fromkeys(u for u in (*users, environ.get("PGUSER", ""), "postgres", owner) if u):
            params = {"host": host, "port": port, "user": user, "dbname": "postgres", "connect_timeout": "5"}
            if environ.get("PGPASSWORD"):
                params["password"] = environ["PGPASSWORD"]
            try:
                with connect(ConnInfo(params)) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text").fetchone()
                assert row is not None
                return bool(row[0]), row[1], f"connection as {user}: pg_is_in_recovery() = {row[0]}"
            except PgvaultError as e:
                last = e.message
    state = control_state(data_dir)
    if state not in ("in production", "in archive recovery"):
        raise RecoveryError(f"cannot confirm the restored server's state: no connection ({last}) and pg_control says "
                            f"{state!r}")
    return state == "in archive recovery", None, f"pg_control: {state} (no connection: {last})"


def stop_server(runner: Runner, data_dir: Path, major: int, bin_dirs: tuple[str, ...] = ()) -> None:
    """Fast shutdown of a server this module started (drills, tests, a failed check)."""
    bindir = bindir_for_major(major, bin_dirs)
    runner.using(bindir).run("pg_ctl", ["-D", str(data_dir), "-m", "fast", "-w", "stop"], env=None,
                             as_user=owner_of(data_dir), timeout=120)


__all__ = ["RecoveryOutcome", "start_and_follow", "stop_server", "server_running", "control_state", "log_tail"]
