"""The prefetcher's record of a segment it downloaded and verified, and ``wal fetch``'s fast path
that hands such a segment to PostgreSQL.

Recovery runs ``restore_command`` once per file, serially, and waits for each.  The prefetcher
(:func:`pgvault.operations.archive.background.run_prefetcher`) downloads the next segments ahead
into the fetch spool, each through the ordinary fetch (checksums compared with the repository's
record before the file gets its name), so serving one is a rename; it used to sit behind
~150 ms of imports (argparse, the config loader and YAML, the storage and pipeline modules).
:func:`serve` is that rename with nothing but the standard library (as
:mod:`~pgvault.operations.archive.confirm` for ``wal push``), run by ``pgvault.entry`` before the
CLI is imported; anything it cannot decide goes to the full command, unchanged.

**What it hands over.** Only a file the prefetcher vouches for: after a verified download it
writes ``<spool>/<name>.ok`` with the SHA-256 and size the fetch verified and the downloaded
file's identity (device, inode, size, mtime, ctime).  Served only if the file at ``<spool>/<name>``
has exactly that identity (nothing was written to it, or put in its place, since), and only
while a prefetcher holds the spool's lock: each prefetcher removes what it finds in the spool
when it starts, so a file left by one that was killed (of an earlier recovery, perhaps from
another repository state) is never served.  A partial download never has the segment's name
(``fs.atomic_file`` renames it only after the checksums matched).  The file is moved to ``%p``
with ``rename`` (same file system: the spool is under ``pg_wal`` by default; otherwise the full
command), checked again after the move, the directory fsynced, the record consumed.  Exit 0 then
means what it always meant: the exact verified bytes are at ``%p``.

**What it never answers.** "Not found" (exit 1 ends recovery: it needs the repository's answer and
its look-ahead for holes, see ``push_fetch.fetch``), errors, and history or other non-segment
files: all go to the full command.
"""

from __future__ import annotations

import os

from pgvault.operations.archive import confirm

_HEX = frozenset("0123456789ABCDEF")


def is_segment_name(name: str) -> bool:
    """A WAL segment's file name (what the prefetcher fetches ahead); cheap, without pg.wal's regexes."""
    return len(name) == 24 and set(name) <= _HEX


def record_path(spool: str, name: str) -> str:
    return os.path.join(spool, f"{name}.ok")


def write_record(spool: str, name: str, *, raw_sha256: str, raw_size: int) -> None:
    """The prefetcher's record of ``<spool>/<name>``, just downloaded and verified to have these
    raw bytes; refuses a file whose size is not the verified one."""
    st = os.stat(os.path.join(spool, name))
    if st.st_size != raw_size:
        raise ValueError(f"{name}: {st.st_size} bytes in the spool, {raw_size} verified")
    body = f"raw_sha256 {raw_sha256}\nraw_size {raw_size}\nfile_id {' '.join(map(str, confirm.identity(st)))}\n"
    from pathlib import Path  # the prefetcher's side: not on the fast path's imports

    from pgvault.fs import write_atomic

    # Not fsynced, like the pusher's records: one lost in a crash only costs a download.
    write_atomic(Path(record_path(spool, name)), body.encode(), durable=False, adopt=True)


def read_record(spool: str, name: str) -> tuple[int, tuple[int, ...]] | None:
    """(raw size, file identity) of the record of ``name``; None if absent or unreadable."""
    try:
        with open(record_path(spool, name), "rb") as f:
            fields = dict(line.split(" ", 1) for line in f.read(4096).decode("ascii").splitlines())
        size, fid = int(fields["raw_size"]), tuple(int(x) for x in fields["file_id"].split(" "))
    except (OSError, UnicodeDecodeError, KeyError, ValueError):
        return None
    return (size, fid) if len(fid) == 5 and fid[2] == size and len(fields["raw_sha256"]) == 64 else None


def take(spool: str, name: str, dest: str) -> bool:
    """Move the prefetched segment ``name`` to ``dest`` if its record vouches for it (the record is
    consumed); False when it does not (nothing is left at ``dest``).  OSError: it could not be
    moved (e.g. another file system)."""
    record = read_record(spool, name)
    if record is None:
        return False
    size, fid = record
    src = os.path.join(spool, name)
    try:
        st = os.stat(src)
    except FileNotFoundError:
        return False
    if confirm.identity(st) != fid:
        return False
    os.replace(src, dest)
    # Replaced between the stat and the rename?  Rename changes ctime, nothing else of the identity.
    after = os.stat(dest)
    if (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) != fid[:4]:
        os.unlink(dest)
        return False
    fd = os.open(os.path.dirname(dest) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)  # the rename survives a crash, as fs.fsync_path does for the full command
    finally:
        os.close(fd)
    try:
        os.unlink(record_path(spool, name))
    except FileNotFoundError:
        pass
    return True


def want(spool: str, name: str) -> None:
    """Tell the prefetcher recovery has reached ``name`` (as ``background.fetch_prefetching``)."""
    path = os.path.join(spool, ".want")
    tmp = f"{path}.{os.getpid()}.tmp"
    from pgvault import fs_owner  # os only: as root, the spool's owner's

    with open(tmp, "wb") as f:
        fs_owner.adopt(tmp, f.fileno())
        f.write(name.encode())
    os.replace(tmp, path)


def serve(name: str, dest: str, *, data_dir: str, fp: str) -> bool:
    """``wal fetch``'s fast path: True once the prefetched, verified segment ``name`` is at
    ``dest`` (relative to ``data_dir``); False: the full command has to decide."""
    if not is_segment_name(name):
        return False
    remembered = confirm.recall(data_dir, fp)
    if remembered is None:
        return False
    spool = remembered[0]
    if not confirm.lock_held(os.path.join(spool, "prefetch.lock")):
        return False  # no prefetcher: nothing in the spool is vouched for; the full command starts one
    if not os.path.exists(record_path(spool, name)):
        return False
    want(spool, name)
    return take(spool, name, dest if os.path.isabs(dest) else os.path.join(data_dir, dest))
