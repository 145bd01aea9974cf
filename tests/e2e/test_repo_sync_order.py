"""``repo sync`` against a live archive (issue 11 part 3, tried from the outside): a base backup
that finishes while the copy is busy with WAL must not reach the target without its WAL.

The copy lists the source's WAL, copies it (minutes, for a day of WAL), then listed the source's
backups: a base backup finished meanwhile -- its last WAL archived after the WAL listing, then its
manifest -- was copied without that WAL, and the run said it completed.  ``status`` of the copy
then showed the newest base backup "in step" although it could not be restored from there.
"""

from __future__ import annotations

from typing import Any

from pgvault.config import PRIMARY_REPOSITORY, NamedRepository, Settings
from pgvault.operations.context import Context
from pgvault.operations.maintenance.repo_sync import sync_repository
from pgvault.pg import wal
from pgvault.pg.conn import ConnInfo
from pgvault.repository import layout
from pgvault.repository.physical import PhysicalManifest
from pgvault.storage import ObjectNotFound, Storage, open_storage


class FinishesDuringTheWalCopy:
    """The source repository, in which ``late`` keys (a base backup's last WAL and its manifest)
    appear only once the copy has listed the WAL: what a backup finishing meanwhile looks like."""

    def __init__(self, inner: Storage, late: set[str], wal_root: str) -> None:
        self.inner, self.late, self.wal_root, self.listed_wal = inner, late, wal_root, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _hidden(self, key: str) -> bool:
        return not self.listed_wal and key in self.late

    def list(self, prefix: str = "") -> Any:
        out = [i for i in self.inner.list(prefix) if not self._hidden(i.key)]
        if prefix == self.wal_root:
            self.listed_wal = True
        return iter(out)

    def read_bytes(self, key: str) -> bytes:
        if self._hidden(key):
            raise ObjectNotFound(key)
        return self.inner.read_bytes(key)


def test_a_base_backup_finished_during_the_wal_copy_is_never_copied_without_its_wal(archiving, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = archiving(None)
    cluster = "pitr"
    pg = a.cluster
    pg.psql("CREATE TABLE ticks (i int PRIMARY KEY); INSERT INTO ticks SELECT generate_series(1, 1000)")
    a.switch_and_wait()
    a.basebackup()
    second = a.basebackup()["backup_id"]
    src = open_storage(a.repo_url)
    manifest_key = layout.base_prefix(cluster, second) + layout.MANIFEST_NAME
    m = PhysicalManifest.loads(src.read_bytes(manifest_key), where=manifest_key)
    # The second backup's last WAL file and its manifest arrive after the copy listed the WAL.
    late = {manifest_key} | {i.key for i in src.list(layout.wal_root(cluster))
                             if i.key.rsplit("/", 1)[-1].startswith(m.last_wal)}
    assert len(late) >= 3, late  # the manifest, the WAL file's record and object
    (tmp_path / "b").mkdir()
    dst = open_storage(str(tmp_path / "b"))
    settings = Settings(cluster=cluster, repository_url=a.repo_url, repositories=(
        NamedRepository(PRIMARY_REPOSITORY, a.repo_url), NamedRepository("b", str(tmp_path / "b"))))
    ctx = Context(settings=settings, storage=FinishesDuringTheWalCopy(src, late, layout.wal_root(cluster)),  # type: ignore[arg-type]
                  conn=ConnInfo.from_dsn("", {}))
    sync_repository(ctx, "b", open_target=lambda _: dst)

    def restorable_from_the_copy() -> list[str]:
        """Base backups on the copy with every WAL file from first_wal to last_wal complete there."""
        names = {i.key.rsplit("/", 1)[-1] for i in dst.list(layout.wal_root(cluster))}
        out = []
        for info in dst.list(layout.base_root(cluster)):
            if info.key.endswith("/" + layout.MANIFEST_NAME):
                bm = PhysicalManifest.loads(dst.read_bytes(info.key), where=info.key)
                tli, first = wal.parse_segment_name(bm.first_wal, bm.wal_segment_size)
                _, last = wal.parse_segment_name(bm.last_wal, bm.wal_segment_size)
                need = [wal.segment_name(tli, n, bm.wal_segment_size) for n in range(first, last + 1)]
                missing = [n for n in need if f"{n}.json" not in names or not any(
                    x.startswith(n) and not x.endswith(".json") for x in names)]
                assert not missing, f"{bm.backup_id} is on the copy without its WAL {missing}"
                out.append(bm.backup_id)
        return out

    assert second not in restorable_from_the_copy()  # left for the next run, not copied half
    again = sync_repository(Context(settings=settings, storage=src, conn=ConnInfo.from_dsn("", {})), "b",
                            open_target=lambda _: dst)
    assert again.stats.backups_copied == 1 and second in restorable_from_the_copy()
