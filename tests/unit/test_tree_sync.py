"""fs.TreeSync: what restore-cluster calls once at the end to make a restored layout durable."""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from pathlib import Path

import pytest

from pgvault import fs


def make_tree(root: Path) -> list[Path]:
    (root / "base" / "1").mkdir(parents=True)
    files = [root / "PG_VERSION", root / "base" / "1" / "16384"]
    for f in files:
        f.write_bytes(b"data")
    (root / "link").symlink_to("/nonexistent")  # a dangling link must not be followed
    return files


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs(2) is Linux's")
def test_linux_uses_one_syncfs_of_the_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert fs._syncfs() is not None
    make_tree(tmp_path)
    called: list[int] = []
    monkeypatch.setattr(fs, "fsync_path", lambda p: called.append(-1))
    with fs.TreeSync(tmp_path) as tree:
        tree.sync()  # the real syncfs
    assert called == []  # no per-file fsync


def test_a_failing_syncfs_raises_with_its_errno(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(fd: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(fs, "_syncfs", lambda: failing)
    with fs.TreeSync(tmp_path) as tree, pytest.raises(OSError) as raised:
        tree.sync()
    assert raised.value.errno == errno.EIO and str(tmp_path) in str(raised.value)


def test_without_syncfs_every_file_and_directory_and_the_parent_are_fsynced(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    root.mkdir()
    files = make_tree(root)
    synced: list[Path] = []
    monkeypatch.setattr(fs, "_syncfs", lambda: None)
    monkeypatch.setattr(fs, "fsync_path", synced.append)
    with fs.TreeSync(root) as tree:
        tree.sync()
    assert set(synced) == {*files, root / "base" / "1", root / "base", root, tmp_path}
    assert synced[-1] == tmp_path  # the parent last: the root's own entry


def test_the_descriptor_is_opened_at_creation_and_closed_once(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    tree = fs.TreeSync(tmp_path)
    tree.close()
    tree.close()
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before
    with pytest.raises(FileNotFoundError):
        fs.TreeSync(tmp_path / "missing")
