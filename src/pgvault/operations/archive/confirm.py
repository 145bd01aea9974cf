"""The background pusher's confirmation of one segment, and ``wal push``'s fast path that checks it.

PostgreSQL runs ``archive_command`` once per segment, serially, and waits for each.  With the
background pusher working ahead, a ``wal push`` usually finds its segment already stored and only
has to check the pusher's record: that check used to sit behind ~150 ms of imports (argparse, the
config loader and YAML, the pipeline) per segment.  This module is that check with nothing but the
standard library (no pathlib, json or re either: each costs milliseconds at start-up), so that
``pgvault.entry`` can run it before importing the CLI, and falls back to the full command on
anything unexpected.

**The record** (``<spool>/archive/<name>.ok``, written by the pusher) holds the SHA-256 and size of
the bytes it stored, and the identity of the file it read them from (device, inode, size, mtime,
ctime), but only when that identity can vouch for the bytes: unchanged across the whole push, and
with mtime and ctime at least :data:`RACY_NS` older than the moment the pusher started reading.
Every write to a file sets its mtime and ctime to the current time, rounded down to the file
system's timestamp granularity; so a write after the pusher started reading gets timestamps no
older than that moment minus one granule, which differ from the recorded ones as long as the
granule is below :data:`RACY_NS` (Linux: one clock tick, ext3/128-byte inodes and HFS+ 1 s, FAT
2 s); ``utime`` can set mtime back, never ctime.  A replaced file has another inode, or newer
times if the inode number is reused.  So: same identity means the same, unmodified bytes, and
confirming needs no read of the segment; any difference (or no identity recorded: a file that
was written moments before the pusher read it, "racily clean" as git calls it) means the segment
is hashed and compared with the record, as before.  A record that does not match is left alone:
the full command then compares with the repository itself.

**The fast path** (:func:`fast_confirm`) needs the spool directory, which the settings decide
(repository URL, cluster, ``archive.spool_dir``); reading them costs the config loader.  So the
full command, whenever it runs in async mode, remembers the spool under a fingerprint of
everything the settings that decide it are read from (the command's options, the working
directory, the config file's path *and* bytes, the ``PGVAULT_*`` variables of those settings;
no secrets: none of them is one) in ``PGDATA/pg_wal/pgvault/fast/<fingerprint>``.  The fast path
computes the same fingerprint; any change of config or environment is another fingerprint, which
nothing remembered, so the full command runs (and remembers it).
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # not ``from typing`` (nor collections.abc below): neither is imported at start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

#: see the module docstring: timestamps at least this much older than the read are trusted
RACY_NS = 3_000_000_000
#: how often the fast path looks for the pusher's record while the pusher works on the segment
POLL = 0.002
#: how often it checks that a pusher still runs
LOCK_CHECK = 0.25

# The settings that decide the spool, whether a push goes async, and how long to wait
# (tests/unit/test_fast_confirm.py holds this list against the config module).
SPOOL_ENV = ("PGVAULT_CONFIG", "PGVAULT_REPOSITORY_URL", "PGVAULT_CLUSTER", "PGVAULT_ARCHIVE_ASYNC",
             "PGVAULT_ARCHIVE_SPOOL_DIR", "PGVAULT_ARCHIVE_WAIT_TIMEOUT")
NAMED_REPOSITORIES_ENV = "PGVAULT_REPOSITORIES_"  # ``--repository NAME`` reads these
# ``wal fetch`` serves from the spool only with restore.prefetch on (operations/archive/prefetched.py)
FETCH_ENV = (*SPOOL_ENV, "PGVAULT_RESTORE_PREFETCH")


def identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def vouched_identity(before: os.stat_result, after: os.stat_result, read_from_ns: int) -> tuple[int, ...] | None:
    """The identity a record may carry for a file stat'ed ``before`` and ``after`` the push, whose
    reading started at wall time ``read_from_ns`` (taken before ``before``); None when it cannot
    vouch for the bytes (see the module docstring)."""
    if identity(before) != identity(after):
        return None
    if max(before.st_mtime_ns, before.st_ctime_ns) > read_from_ns - RACY_NS:
        return None
    return identity(before)


def format_record(*, raw_sha256: str, raw_size: int, key: str, stored_size: int, already_archived: bool,
                  file_id: tuple[int, ...] | None) -> bytes:
    """The ``.ok`` record: ``field value`` lines (read without the json module; see above)."""
    fields = {"raw_sha256": raw_sha256, "raw_size": raw_size, "key": key, "stored_size": stored_size,
              "already_archived": int(already_archived),
              "file_id": " ".join(map(str, file_id)) if file_id else "-"}
    if any("\n" in str(v) for v in fields.values()):
        raise ValueError("a record field holds a newline")
    return "".join(f"{k} {v}\n" for k, v in fields.items()).encode()


class Record:
    """A parsed ``.ok`` record."""

    __slots__ = ("raw_sha256", "raw_size", "key", "stored_size", "already_archived", "file_id")

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.raw_sha256 = fields["raw_sha256"]
        self.raw_size = int(fields["raw_size"])
        self.key = fields["key"]
        self.stored_size = int(fields["stored_size"])
        self.already_archived = fields["already_archived"] == "1"
        fid = fields["file_id"]
        self.file_id = None if fid == "-" else tuple(int(x) for x in fid.split(" "))


def read_record(path: str) -> Record | None:
    """The record at ``path``; None if there is none, or it does not parse (then it confirms nothing)."""
    try:
        with open(path, "rb") as f:
            text = f.read(4096).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        return Record(dict(line.split(" ", 1) for line in text.splitlines()))
    except (KeyError, ValueError):
        return None


def describes(record: Record, src: str) -> bool:
    """True if ``record`` vouches for exactly the bytes now in ``src``."""
    try:
        st = os.stat(src)
    except OSError:
        return False
    if record.file_id is not None and record.file_id == identity(st):
        return True
    if st.st_size != record.raw_size:
        return False
    import hashlib  # only when the identity cannot vouch: most confirmations never hash

    h = hashlib.sha256()
    try:
        with open(src, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return False
    return h.hexdigest() == record.raw_sha256


# --- the fast path ------------------------------------------------------------------------------


def fingerprint(*, config: str | None, cluster: str | None, repository: str | None, pgdata: str | None,
                cwd: str, environ: Mapping[str, str], verb: str = "push") -> str | None:
    """What the spool of ``wal VERB`` (push or fetch) with these options, in this environment, is
    remembered under; None when the config file cannot be read (the full command reports that)."""
    path = config or environ.get("PGVAULT_CONFIG")
    config_bytes = b"-"
    if path:
        try:
            with open(os.path.join(cwd, path), "rb") as f:
                config_bytes = f.read()
        except OSError:
            return None
    names = FETCH_ENV if verb == "fetch" else SPOOL_ENV
    env = sorted((k, v) for k, v in environ.items() if k in names or k.startswith(NAMED_REPOSITORIES_ENV))
    h = _small_sha256(b"pgvault wal push 1\0" if verb == "push" else f"pgvault wal {verb} 1\0".encode())
    for part in (config, cluster, repository, pgdata, cwd, path, *(f"{k}={v}" for k, v in env)):
        h.update(b"-\0" if part is None else part.encode("utf-8", "surrogateescape") + b"\0")
    h.update(config_bytes)
    return str(h.hexdigest())[:32]


def _small_sha256(data: bytes) -> Any:
    """SHA-256 for a few kilobytes: CPython's built-in implementation when it has one (importing
    hashlib loads OpenSSL, ~5 ms of the fast path's ~15); hashlib's, faster on megabytes, otherwise."""
    try:
        from _sha256 import sha256  # CPython <= 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # CPython >= 3.12
        except ImportError:
            from hashlib import sha256
    return sha256(data)


def _index(data_dir: str, fp: str) -> str:
    return os.path.join(data_dir, "pg_wal", "pgvault", "fast", fp)


def remember(data_dir: str, fp: str, spool: str, wait_timeout: float) -> None:
    """Best effort (the fast path is an optimisation): remember the spool for ``fp``."""
    path = _index(data_dir, fp)
    body = f"{os.path.abspath(spool)}\n{wait_timeout!r}\n".encode()
    try:
        with open(path, "rb") as f:
            if f.read() == body:
                return
    except OSError:
        pass
    tmp = f"{path}.{os.getpid()}.tmp"
    from pgvault import fs_owner  # as root: the spool's owner's, like everything in it

    try:
        fs_owner.makedirs(os.path.dirname(path))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fs_owner.adopt(tmp, fd)
            os.write(fd, body)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def recall(data_dir: str, fp: str) -> tuple[str, float] | None:
    try:
        with open(_index(data_dir, fp), "rb") as f:
            spool, timeout = f.read().decode().split("\n")[:2]
        return spool, float(timeout)
    except (OSError, ValueError):
        return None


def lock_held(lock: str) -> bool:
    """True while a daemon (pusher, prefetcher) holds its spool lock ``lock`` (as ``background._is_locked``)."""
    import fcntl

    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also releases it, if we took it
    return False


def fast_confirm(path: str, *, data_dir: str, fp: str, clock: Callable[[], float] = time.monotonic) -> Record | None:
    """The pusher's record of segment ``path`` if it vouches for the bytes there (consumed);
    None when the full command has to decide: nothing remembered for ``fp``, the file is not
    ``.ready``, no pusher runs, it reported an error, its record describes other bytes, or it has
    not confirmed within half of ``archive.wait_timeout``."""
    remembered = recall(data_dir, fp)
    if remembered is None:
        return None
    spool, wait_timeout = remembered
    name = os.path.basename(path)
    src = path if os.path.isabs(path) else os.path.join(data_dir, path)
    if not os.path.exists(os.path.join(data_dir, "pg_wal", "archive_status", f"{name}.ready")):
        return None  # pushed by hand: the full command pushes it in the foreground
    ok = os.path.join(spool, "archive", f"{name}.ok")
    error = os.path.join(spool, "archive", f"{name}.error")
    lock = os.path.join(spool, "pusher.lock")
    start, checked = clock(), float("-inf")
    while True:
        record = read_record(ok)
        if record is not None:
            if not describes(record, src):
                return None  # left for the full command, which compares with the repository
            try:
                os.unlink(ok)
            except FileNotFoundError:
                return None  # another wal push of the same name consumed it: let the full command decide
            return record
        now = clock()
        if os.path.exists(error) or now - start > wait_timeout / 2:
            return None
        if now - checked >= LOCK_CHECK:
            if not lock_held(lock):
                return None
            checked = now
        time.sleep(POLL)
