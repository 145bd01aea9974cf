"""Is the process that left something behind still alive?  A pid alone cannot say: pids are
reused, so what pgvault leaves behind (scratch databases, spool files, drill scratch servers)
records the pid *and* its start time, and a process only counts as the same one when both match."""

from __future__ import annotations

import os
import re
from pathlib import Path


def process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot; None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return 0
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return 0


def hostname() -> str:
    """This host's name: what ``hostname()`` returns on Linux (glibc reads it from
    uname), without importing ``socket`` — ``wal push`` runs once per WAL segment and every import
    is start-up time PostgreSQL waits for."""
    return os.uname().nodename


def random_id() -> str:
    """128 random bits as 32 hex digits (what ``uuid.uuid4().hex`` gave, without importing uuid)."""
    return os.urandom(16).hex()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_alive(pid: int, started: int) -> bool:
    """True if ``pid`` runs and is the process that started at ``started`` (0: unknown, any)."""
    now = process_start(pid)
    if now is None:
        # no procfs: ask the kernel whether the pid exists
        return pid_alive(pid) if not Path("/proc").is_dir() else False
    return started == 0 or now == 0 or now == started


def host_tag() -> str:
    """This host's name as a file-name component (``[A-Za-z0-9-]``): pids mean nothing elsewhere."""
    return re.sub(r"[^A-Za-z0-9-]", "-", hostname()) or "host"
