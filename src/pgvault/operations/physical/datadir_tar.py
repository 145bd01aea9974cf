"""The data directory (or a tablespace) as tar streams: what a base backup copies and how.

PostgreSQL's runtime files are left out as pg_basebackup does; every regular file is read whole
and padded if it shrank under us (WAL replay restores the truth); the files are shared between
the parallel parts, largest first.  Each part is a complete PAX tar that ``tar -x`` unpacks on
its own.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pgvault.operations.context import Context
from pgvault.operations.physical.reading import Cancelled as Cancelled  # re-exported: the parts' stop signal
from pgvault.operations.physical.reading import Padded as Padded  # re-exported
from pgvault.operations.physical.reading import Reading
from pgvault.pipeline import PipelineSpec, PipelineWriter, open_writer
from pgvault.repository.manifest import StoredObject

# What pg_basebackup leaves out (src/backend/backup/basebackup.c: excludeDirContents,
# excludeFiles): runtime state that is rebuilt at start-up or must not be restored.
_EXCLUDE_DIR_CONTENTS = {
    "pg_wal", "pg_wal/archive_status", "pg_wal/summaries", "pg_dynshmem", "pg_notify", "pg_replslot", "pg_serial", "pg_snapshots", "pg_stat_tmp", "pg_subtrans",
}
_EXCLUDE_FILES = {
    "postmaster.pid", "postmaster.opts", "pg_internal.init", "backup_label", "backup_label.old",
    "tablespace_map", "backup_manifest", "standby.signal", "recovery.signal", "current_logfiles",
    "postgresql.auto.conf.tmp",
}
# Per part: tarfile's copy buffer, its stream buffer and the pipeline's chunks (and the age batches
# made of them) are each about this size, and several of each are alive at once in every part.
# 128 KiB keeps a part's buffers to about a MiB (1 MiB made them ~20 MiB of the peak for two
# parts); the CPU cost of the extra hand-overs was below what could be measured here.
_COPY_BUF = 128 << 10


def walk(root: Path, *, exclude_contents: bool) -> Iterator[Path]:
    """Every path below ``root`` in a stable order, minus PostgreSQL's runtime files."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel = Path(dirpath).relative_to(root)
        dirnames.sort()
        if exclude_contents and str(rel) in _EXCLUDE_DIR_CONTENTS:
            dirnames[:] = [d for d in dirnames if d in ("archive_status", "summaries")] if str(rel) == "pg_wal" else []
            filenames = []
        if exclude_contents and str(rel) == "pg_tblspc":
            filenames = sorted(dirnames + filenames)  # tablespace links are recorded as symlinks
            dirnames[:] = []
        dirnames[:] = [d for d in dirnames if not d.startswith("pgsql_tmp")]
        for d in dirnames:
            yield Path(dirpath) / d
        for name in sorted(filenames):
            if name in _EXCLUDE_FILES or name.startswith("pgsql_tmp"):
                continue
            yield Path(dirpath) / name


def split_parts(root: Path, paths: Iterator[Path]) -> tuple[list[Path], SharedFiles]:
    """The entries of the first part (directories and links, in walk order) and the regular files,
    which every part takes from as it goes (:class:`SharedFiles`).

    Each part is a tar of its own, written and restored in parallel.  Every part is a complete tar
    that ``tar -x`` unpacks on its own (it creates missing parent directories), in any order."""
    first: list[Path] = []
    files: list[tuple[int, Path]] = []
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            files.append((st.st_size, path))
        else:
            first.append(path)
    return first, SharedFiles(files)


class SharedFiles:
    """The regular files of one tar stream set, handed out one at a time to whichever part asks
    next, largest first.

    A fixed split by size left one part compressing for seconds after the other had finished: the
    same number of bytes costs very different CPU (incompressible TOAST or index pages against
    empty heap pages).  Taking files as they go, and the large ones first, keeps every part busy
    until the last small files, whatever the data."""

    def __init__(self, files: list[tuple[int, Path]]) -> None:
        self._files = [p for _, p in sorted(files, key=lambda f: -f[0])]  # stable: walk order among equals
        self._next = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._files)

    def take(self) -> Path | None:
        with self._lock:
            if self._next >= len(self._files):
                return None
            self._next += 1
            return self._files[self._next - 1]

    def paths(self, first: Iterable[Path] = ()) -> Iterator[Path]:
        """``first``, then files taken one at a time until none is left."""
        yield from first
        while (path := self.take()) is not None:
            yield path


def write_tar(out: PipelineWriter, root: Path, paths: Iterable[Path], *, base: bool, extra: Callable[[], dict[str, bytes]],
              cancel: threading.Event, reading: Reading | None = None, name_prefix: str = "", tar_key: str = "") -> int:
    """Stream ``paths`` (below ``root``) as a tar into ``out``; ``extra()`` supplies files appended at the end.
    ``reading``: how the backup reads its files (page checks, the file list, incremental files);
    files are named ``name_prefix`` + their path in the tar, the tar is ``tar_key``."""
    count = 0
    # bufsize: tarfile's stream mode slices its buffer into bufsize writes, copying what is left
    # each time; with the default 10 KiB every copy buffer was copied ~25 times over.
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=_COPY_BUF) as tar:
        tar.copybufsize = _COPY_BUF  # type: ignore[attr-defined]
        for path in paths:
            arcname = str(path.relative_to(root))
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # dropped while we walked: WAL replay knows
            info = tarfile.TarInfo(arcname)
            info.mode = stat.S_IMODE(st.st_mode)
            info.mtime = int(st.st_mtime)
            info.uid, info.gid = st.st_uid, st.st_gid
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode) and base and arcname == "pg_wal":
                # initdb --waldir: the restored cluster gets a plain pg_wal directory, as with pg_basebackup.
                info.type = tarfile.DIRTYPE
                info.mode = 0o700
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                try:
                    f = open(path, "rb")
                except FileNotFoundError:
                    continue
                with f:
                    info.size = st.st_size
                    if reading is None:
                        tar.addfile(info, Padded(f, st.st_size, cancel))
                    else:
                        reading.add_file(tar, info, f, name=name_prefix + arcname, relpath=arcname, tar_key=tar_key)
                count += 1
        owner = os.stat(root)
        for name, data in extra().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            info.uid, info.gid = owner.st_uid, owner.st_gid
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
            count += 1
    return count


def stream_tar(
    ctx: Context, key: str, label: str, root: Path, spec: PipelineSpec, *, base: bool,
    extra: Callable[[], dict[str, bytes]] = dict, paths: Iterable[Path] | None = None, cancel: threading.Event | None = None,
    threads: int | None = None, reading: Reading | None = None, name_prefix: str = "",
) -> tuple[StoredObject, int]:
    """Tar ``root`` into ``key``, in this thread: tarfile writes into the pipeline's file object,
    which pushes the stored form into the storage writer.  ``threads``: zstd workers of this stream
    (default: the configured ``compression.threads``).

    ``cancel`` is shared by every part of one backup: set when any of them fails (or the run is
    interrupted), so the others stop too and abort their objects.  On any failure the pipeline
    stream is dropped unfinished and the object aborted (S3: AbortMultipartUpload)."""
    cancel = cancel or (reading.cancel if reading is not None else threading.Event())
    threads = ctx.settings.compression_threads if threads is None else threads
    try:
        with ctx.storage.open_write(key) as writer:
            with open_writer(writer, spec, threads=threads, chunk_size=_COPY_BUF) as out:
                members = paths if paths is not None else list(walk(root, exclude_contents=base))
                files = write_tar(out, root, members, base=base, extra=extra, cancel=cancel, reading=reading,
                                  name_prefix=name_prefix, tar_key=key.rsplit("/", 1)[-1])
    except BaseException:
        cancel.set()
        raise
    return StoredObject(name=label, key=key.rsplit("/", 1)[-1], result=out.result), files
