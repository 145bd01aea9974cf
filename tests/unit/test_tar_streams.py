"""The base backup's tar streams without a server: datadir_tar.stream_tar writes a directory as a
tar straight into the pipeline (no pipe, no producer thread), unpack.extract unpacks it
reading from the pipeline; cancellation, damage and a missing object are reported as before."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyrage
import pytest

from pgvault.errors import IntegrityError
from pgvault.operations.physical import datadir_tar, unpack
from pgvault.pipeline import PipelineSpec, write_stream
from pgvault.repository import layout
from pgvault.repository.manifest import StoredObject
from pgvault.storage.memory import MemoryStorage

IDENTITY = pyrage.x25519.Identity.generate()
BACKUP_ID = "20260101T000000Z"
PREFIX = layout.base_prefix("c", BACKUP_ID)
SPECS = [PipelineSpec("zstd", None, "age", (str(IDENTITY.to_public()),)), PipelineSpec("none", None, "none", ())]


def make_tree(root: Path) -> dict[str, bytes]:
    files = {f"base/1/{16384 + i}": os.urandom(200_000 * i) + b"x" * 3_000_000 for i in range(4)}
    files |= {f"base/1/small{i}": os.urandom(100) for i in range(50)}
    files["PG_VERSION"] = b"18\n"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def context(storage: MemoryStorage) -> Any:
    return SimpleNamespace(storage=storage, settings=SimpleNamespace(compression_threads=1),
                           identities=lambda: [str(IDENTITY)])


def back_up(ctx: Any, root: Path, spec: PipelineSpec, cancel: threading.Event | None = None) -> StoredObject:
    paths = list(datadir_tar.walk(root, exclude_contents=True))
    obj, files = datadir_tar.stream_tar(ctx, PREFIX + "base.tar" + spec.suffix(), "base", root, spec, base=True,
                                        paths=paths, cancel=cancel)
    assert files == sum(1 for p in paths if p.is_file())
    return obj


def restore(ctx: Any, obj: StoredObject, spec: PipelineSpec, into: Path) -> int:
    backup = SimpleNamespace(cluster="c", backup_id=BACKUP_ID, pipeline=spec)
    return unpack.extract(ctx, backup, obj, into, base=True)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.compression}-{s.encryption}")
def test_a_tree_goes_through_tar_and_the_pipeline_and_back(tmp_path: Path, spec: PipelineSpec) -> None:
    files = make_tree(tmp_path / "data")
    ctx = context(MemoryStorage("tar"))
    before = {t.name for t in threading.enumerate()}
    obj = back_up(ctx, tmp_path / "data", spec)
    assert {t.name for t in threading.enumerate()} <= before  # nothing left running
    stored = ctx.storage.read_bytes(PREFIX + obj.key)
    assert (obj.result.stored_size, len(stored)) == (len(stored), obj.result.stored_size)
    assert restore(ctx, obj, spec, tmp_path / "out") == len(files)
    assert {t.name for t in threading.enumerate()} <= before
    for name, data in files.items():
        assert (tmp_path / "out" / name).read_bytes() == data


def reading_with(monkeypatch: pytest.MonkeyPatch, on_read: Any) -> list[int]:
    """Make every 1 MiB read of a file call ``on_read(count)`` after reading; the count so far."""
    count = [0]
    real_read = datadir_tar.Padded.read

    def read(self: datadir_tar.Padded, n: int = -1) -> bytes:
        data = real_read(self, n)
        count[0] += 1
        on_read(count[0])
        return data

    monkeypatch.setattr(datadir_tar.Padded, "read", read)
    return count


def test_a_cancelled_part_stops_at_the_next_chunk_and_publishes_nothing(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path / "data")
    storage = MemoryStorage("cancel")
    cancel = threading.Event()
    reads = reading_with(monkeypatch, lambda n: n == 3 and cancel.set())  # another part failed meanwhile
    with pytest.raises(datadir_tar.Cancelled):
        back_up(context(storage), tmp_path / "data", SPECS[0], cancel)
    assert reads == [3]  # the next read stopped it
    assert list(storage.list()) == [] and list(storage.unfinished_writes()) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("age-")]


def test_a_failing_part_sets_cancel_for_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path / "data")
    storage = MemoryStorage("fail")
    cancel = threading.Event()

    def fail(n: int) -> None:
        if n == 2:
            raise OSError(5, "Input/output error")

    reading_with(monkeypatch, fail)
    with pytest.raises(OSError, match="Input/output error"):
        back_up(context(storage), tmp_path / "data", SPECS[0], cancel)
    assert cancel.is_set()
    assert list(storage.list()) == [] and list(storage.unfinished_writes()) == []


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.compression}-{s.encryption}")
def test_damage_and_absence_are_reported_as_before(tmp_path: Path, spec: PipelineSpec) -> None:
    make_tree(tmp_path / "data")
    ctx = context(MemoryStorage("damage"))
    obj = back_up(ctx, tmp_path / "data", spec)
    key = PREFIX + obj.key
    stored = ctx.storage.read_bytes(key)
    ctx.storage.put_if_absent(PREFIX + "cut", stored[: len(stored) // 2])
    with pytest.raises(IntegrityError, match="^truncated: the stored object has"):
        restore(ctx, StoredObject(name="base", key="cut", result=obj.result), spec, tmp_path / "cut")
    flipped = bytearray(stored)
    flipped[len(stored) // 3] ^= 1
    ctx.storage.put_if_absent(PREFIX + "flipped", bytes(flipped))
    with pytest.raises(IntegrityError):
        restore(ctx, StoredObject(name="base", key="flipped", result=obj.result), spec, tmp_path / "flipped")
    with pytest.raises(IntegrityError, match="is damaged: object .* is missing"):
        restore(ctx, StoredObject(name="base", key="gone", result=obj.result), spec, tmp_path / "gone")


def test_unpacking_failures_are_named_and_source_failures_pass_unchanged(tmp_path: Path) -> None:
    spec = SPECS[1]
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    storage = MemoryStorage("unsafe")
    with storage.open_write(PREFIX + "unsafe.tar") as w:
        result = write_stream(io.BytesIO(tar_bytes.getvalue()), w, spec)
    ctx = context(storage)
    with pytest.raises(IntegrityError, match="unsafe path"):
        restore(ctx, StoredObject(name="base", key="unsafe.tar", result=result), spec, tmp_path / "a")

    class Broken(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise OSError(5, "Input/output error")

    ctx.storage.open_read = lambda key: Broken()
    with pytest.raises(OSError, match="Input/output error") as raised:
        restore(ctx, StoredObject(name="base", key="unsafe.tar", result=result), spec, tmp_path / "b")
    assert not isinstance(raised.value, IntegrityError)  # the repository's error, not "cannot unpack"


def test_long_names_links_empty_files_and_modes_survive_the_forward_only_reader(tmp_path: Path) -> None:
    # restore_cluster reads the tar through _ForwardOnly (tarfile's seekable mode, forward only):
    # extended headers (a name past ustar's 100 bytes), an empty file, a symlink, a file that ends
    # exactly on a 512-byte block and mode bits come out as tarfile's stream mode gave them.
    spec = SPECS[0]
    root = tmp_path / "data"
    long_dir = root / "pg_tblspc_free" / ("d" * 120)
    long_dir.mkdir(parents=True)
    files = {f"pg_tblspc_free/{'d' * 120}/{'f' * 150}": os.urandom(70_000), "empty": b"", "block": b"b" * 1024,
             "PG_VERSION": b"18\n"}
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "block").chmod(0o640)
    (root / "link").symlink_to("../elsewhere")  # dangling, like a tablespace link seen from here
    ctx = context(MemoryStorage("tar"))
    obj = back_up(ctx, root, spec)
    assert restore(ctx, obj, spec, tmp_path / "out") == len(files)
    for name, data in files.items():
        assert (tmp_path / "out" / name).read_bytes() == data
    assert os.readlink(tmp_path / "out" / "link") == "../elsewhere"
    assert (tmp_path / "out" / "block").stat().st_mode & 0o777 == 0o640


def test_the_forward_only_reader_fills_reads_and_refuses_to_seek_back() -> None:
    class Chunky(io.RawIOBase):  # returns at most 7 bytes a read, like a pipeline between chunks
        def __init__(self, data: bytes) -> None:
            self.data, self.pos = data, 0

        def read(self, n: int = -1) -> bytes:
            out = self.data[self.pos : self.pos + min(7, n)]
            self.pos += len(out)
            return out

    f = unpack._ForwardOnly(Chunky(bytes(range(100))))
    assert f.read(20) == bytes(range(20)) and f.tell() == 20
    assert f.read_some(50) == bytes(range(20, 27))  # what the stream has, no joining
    assert f.seek(40) == 40 and f.read(3) == bytes(range(40, 43))
    assert f.seek(2, os.SEEK_CUR) == 45
    with pytest.raises(OSError, match="cannot seek back"):
        f.seek(10)
    assert f.seek(500) == 100 and f.read(10) == b""  # past the end: at the end, tarfile sees a short read
