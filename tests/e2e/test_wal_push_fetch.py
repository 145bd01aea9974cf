"""The archive_command / restore_command contracts of ``pgvault wal push`` / ``wal fetch``, on real
WAL files of real servers (driven from the test here; the server-driven archiving test with
archive_command comes with base backups)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from support.cli import clean_env, pgvault

from .conftest import AgeKey, make_age_key


def _finished_segment(cluster) -> str:  # type: ignore[no-untyped-def]
    """Name of a WAL segment the server has just finished writing."""
    cluster.psql("CREATE TABLE IF NOT EXISTS walgen(i int); INSERT INTO walgen SELECT generate_series(1, 1000)")
    return str(cluster.psql("SELECT pg_walfile_name(pg_switch_wal())"))


@pytest.fixture
def wal_env(pg_cluster, tmp_path: Path, age_key: AgeKey) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return clean_env(
        PGVAULT_REPOSITORY_URL=str(tmp_path / "repo"),
        PGVAULT_CLUSTER=f"wal{pg_cluster.major}-{uuid.uuid4().hex[:6]}",
        PGVAULT_ENCRYPTION_AGE_RECIPIENTS=age_key.recipient,
        PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=str(age_key.identity_file),
    )


def test_push_is_idempotent_and_never_overwrites(pg_cluster, wal_env, tmp_path: Path) -> None:
    seg = _finished_segment(pg_cluster)
    datadir = str(pg_cluster.datadir)
    first = pgvault(["wal", "push", f"pg_wal/{seg}", "--pgdata", datadir, "--json"], wal_env).json()
    assert first["already_archived"] is False and first["key"].endswith(f"/{seg}.zst.age")
    again = pgvault(["wal", "push", f"pg_wal/{seg}", "--pgdata", datadir, "--json"], wal_env).json()
    assert again["already_archived"] is True
    # Same name, different bytes (a second server archiving into the same place): refused.
    fake_dir = tmp_path / "other" / "pg_wal"
    fake_dir.mkdir(parents=True)
    data = bytearray((pg_cluster.datadir / "pg_wal" / seg).read_bytes())
    data[-1] ^= 0xFF
    (fake_dir / seg).write_bytes(bytes(data))
    refused = pgvault(["wal", "push", str(fake_dir / seg), "--pgdata", datadir], wal_env, check=False)
    assert refused.returncode == 6 and "refusing to overwrite" in refused.stderr
    # What is stored is still the original: fetch gives back the server's bytes.
    out = tmp_path / "RECOVERYXLOG"
    pgvault(["wal", "fetch", seg, str(out), "--pgdata", datadir], wal_env)
    assert out.read_bytes() == (pg_cluster.datadir / "pg_wal" / seg).read_bytes()
    assert [p.name for p in tmp_path.glob(".*")] == []  # written atomically, no temp file left


def test_fetch_exit_codes(pg_cluster, wal_env, tmp_path: Path) -> None:
    seg = _finished_segment(pg_cluster)
    datadir = str(pg_cluster.datadir)
    dest = str(tmp_path / "RECOVERYXLOG")
    # An archive that does not exist at all is an error, not "file not found".
    empty = pgvault(["wal", "fetch", seg, dest, "--pgdata", datadir], wal_env, check=False)
    assert empty.returncode == 126, empty
    pgvault(["wal", "push", f"pg_wal/{seg}", "--pgdata", datadir], wal_env)
    # The next segment and a future timeline's history: confirmed absent, exit 1.
    tli, log, num = seg[:8], seg[8:16], seg[16:]
    nxt = f"{tli}{log}{int(num, 16) + 1:08X}"
    assert pgvault(["wal", "fetch", nxt, dest, "--pgdata", datadir], wal_env, check=False).returncode == 1
    assert pgvault(["wal", "fetch", "00000009.history", dest, "--pgdata", datadir], wal_env, check=False).returncode == 1
    # A .partial is archived under its own name and never served as the complete segment.
    partial_dir = tmp_path / "p" / "pg_wal"
    partial_dir.mkdir(parents=True)
    shutil.copy(pg_cluster.datadir / "pg_wal" / seg, partial_dir / f"{nxt}.partial")
    pgvault(["wal", "push", str(partial_dir / f"{nxt}.partial"), "--pgdata", datadir], wal_env)
    assert pgvault(["wal", "fetch", nxt, dest, "--pgdata", datadir], wal_env, check=False).returncode == 1
    pgvault(["wal", "fetch", f"{nxt}.partial", dest, "--pgdata", datadir], wal_env)
    # Wrong identity, unreachable repository, corrupt object: all >= 126, so recovery stops.
    other = make_age_key(tmp_path)
    bad_key = {**wal_env, "PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE": str(other.identity_file)}
    assert pgvault(["wal", "fetch", seg, dest, "--pgdata", datadir], bad_key, check=False).returncode == 126
    gone = {**wal_env, "PGVAULT_REPOSITORY_URL": "s3://pgvault-nowhere/x", "PGVAULT_REPOSITORY_S3_ENDPOINT_URL": "http://127.0.0.1:1",
            "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}
    assert pgvault(["wal", "fetch", seg, dest, "--pgdata", datadir], gone, check=False).returncode == 126
    repo = Path(wal_env["PGVAULT_REPOSITORY_URL"])
    [obj] = list(repo.glob(f"**/{seg}.zst.age"))
    raw = bytearray(obj.read_bytes())
    raw[len(raw) // 2] ^= 1
    obj.write_bytes(bytes(raw))
    res = pgvault(["wal", "fetch", seg, dest, "--pgdata", datadir], wal_env, check=False)
    assert res.returncode == 126 and ("checksum" in res.stderr or "decrypt" in res.stderr or "corrupt" in res.stderr)


def test_history_files_round_trip(pg_cluster, wal_env, tmp_path: Path) -> None:
    hist_dir = tmp_path / "h" / "pg_wal"
    hist_dir.mkdir(parents=True)
    text = "1\t0/3000000\tno recovery target specified\n"
    (hist_dir / "00000002.history").write_text(text)
    datadir = str(pg_cluster.datadir)
    pgvault(["wal", "push", str(hist_dir / "00000002.history"), "--pgdata", datadir], wal_env)
    out = tmp_path / "RECOVERYHISTORY"
    pgvault(["wal", "fetch", "00000002.history", str(out), "--pgdata", datadir], wal_env)
    assert out.read_text() == text
    repo = Path(wal_env["PGVAULT_REPOSITORY_URL"])
    assert (repo / wal_env["PGVAULT_CLUSTER"] / "wal" / "00000002.history.zst.age").exists()


def test_another_clusters_wal_is_refused(pg15, pg_latest, tmp_path: Path, age_key: AgeKey) -> None:
    if pg15.major == pg_latest.major:
        pytest.skip("needs two clusters")
    env = clean_env(PGVAULT_REPOSITORY_URL=str(tmp_path / "repo"), PGVAULT_CLUSTER="shared-name",
                    PGVAULT_ENCRYPTION_AGE_RECIPIENTS=age_key.recipient)
    seg = _finished_segment(pg15)
    pgvault(["wal", "push", f"pg_wal/{seg}", "--pgdata", str(pg15.datadir)], env)
    seg18 = _finished_segment(pg_latest)
    res = pgvault(["wal", "push", f"pg_wal/{seg18}", "--pgdata", str(pg_latest.datadir)], env, check=False)
    assert res.returncode == 2 and "refusing to archive" in res.stderr
    # And fetching for the other cluster's data directory is refused too (not "not found").
    res = pgvault(["wal", "fetch", seg, str(tmp_path / "x"), "--pgdata", str(pg_latest.datadir)], env, check=False)
    assert res.returncode == 126 and "refusing to restore" in res.stderr


def test_push_and_fetch_on_s3(pg_cluster, s3_env, s3_bucket, age_key: AgeKey, tmp_path: Path) -> None:
    env = clean_env(
        **{k: v for k, v in s3_env.items() if k.startswith("AWS_")},
        PGVAULT_REPOSITORY_URL=f"s3://{s3_bucket}/archive",
        PGVAULT_REPOSITORY_S3_ENDPOINT_URL=s3_env["PGVAULT_S3_ENDPOINT_URL"],
        PGVAULT_REPOSITORY_S3_FORCE_PATH_STYLE="true",
        PGVAULT_CLUSTER="s3wal",
        PGVAULT_ENCRYPTION_AGE_RECIPIENTS=age_key.recipient,
        PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE=str(age_key.identity_file),
    )
    seg = _finished_segment(pg_cluster)
    datadir = str(pg_cluster.datadir)
    pgvault(["wal", "push", f"pg_wal/{seg}", "--pgdata", datadir], env)
    out = tmp_path / "seg"
    pgvault(["wal", "fetch", seg, str(out), "--pgdata", datadir], env)
    assert out.read_bytes() == (pg_cluster.datadir / "pg_wal" / seg).read_bytes()
    nxt = seg[:16] + f"{int(seg[16:], 16) + 1:08X}"
    assert pgvault(["wal", "fetch", nxt, str(out), "--pgdata", datadir], env, check=False).returncode == 1


def _wait_for(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_async_push_uploads_the_backlog_and_confirms_only_stored_bytes(pg_cluster, wal_env, tmp_path: Path) -> None:
    """The default archive mode: the foreground returns 0 only for the exact bytes the background
    pusher stored; the pusher works through every .ready file without waiting to be asked."""
    segs = [_finished_segment(pg_cluster) for _ in range(3)]
    data = {s: (pg_cluster.datadir / "pg_wal" / s).read_bytes() for s in segs}
    fake = tmp_path / "pgdata"
    status = fake / "pg_wal" / "archive_status"
    status.mkdir(parents=True)
    for s in segs:
        (fake / "pg_wal" / s).write_bytes(data[s])
        (status / f"{s}.ready").touch()
    first = pgvault(["wal", "push", f"pg_wal/{segs[0]}", "--pgdata", str(fake), "--json"], wal_env).json()
    assert first["name"] == segs[0]
    # One spool per repository and cluster, so a record can only confirm a push to this repository
    # (next to "fast": where the full command remembers it for wal push's fast path).
    [spool] = [p for p in (fake / "pg_wal" / "pgvault").iterdir() if p.name != "fast"]
    # Nobody asked for the other two yet, but the pusher has stored and recorded them.
    _wait_for(lambda: all((spool / "archive" / f"{s}.ok").exists() for s in segs[1:]))
    for s in segs[1:]:
        pgvault(["wal", "push", f"pg_wal/{s}", "--pgdata", str(fake)], wal_env)
        (status / f"{s}.ready").rename(status / f"{s}.done")
    assert (spool / "pusher.log").exists()
    # archive_command pointed at another repository while that pusher may still run: the new
    # repository gets the segment too (a record made for one repository never confirms another).
    other = {**wal_env, "PGVAULT_REPOSITORY_URL": str(tmp_path / "repo-b")}
    (status / f"{segs[1]}.done").rename(status / f"{segs[1]}.ready") if (status / f"{segs[1]}.done").exists() else None
    pgvault(["wal", "push", f"pg_wal/{segs[1]}", "--pgdata", str(fake)], other)
    assert list((tmp_path / "repo-b").glob(f"**/{segs[1]}.zst.age"))
    out = tmp_path / "back"
    for s in segs:
        pgvault(["wal", "fetch", s, str(out), "--pgdata", str(tmp_path)], {**wal_env, "PGVAULT_RESTORE_PREFETCH": "0"})
        assert out.read_bytes() == data[s]

    # Different bytes under an archived name, marked ready: refused loudly, the stored copy kept.
    changed = bytearray(data[segs[0]])
    changed[-1] ^= 0xFF
    (fake / "pg_wal" / segs[0]).write_bytes(bytes(changed))
    (spool / "archive" / f"{segs[0]}.ok").unlink(missing_ok=True)
    refused = pgvault(["wal", "push", f"pg_wal/{segs[0]}", "--pgdata", str(fake)], wal_env, check=False)
    assert refused.returncode == 6 and "refusing to overwrite" in refused.stderr, refused
    pgvault(["wal", "fetch", segs[0], str(out), "--pgdata", str(tmp_path)], {**wal_env, "PGVAULT_RESTORE_PREFETCH": "0"})
    assert out.read_bytes() == data[segs[0]]


def test_fetch_prefetches_ahead_and_keeps_the_exit_code_contract(pg_cluster, wal_env, tmp_path: Path) -> None:
    segs = [_finished_segment(pg_cluster) for _ in range(3)]
    data = {s: (pg_cluster.datadir / "pg_wal" / s).read_bytes() for s in segs}
    for s in segs:
        pgvault(["wal", "push", f"pg_wal/{s}", "--pgdata", str(pg_cluster.datadir)], wal_env)
    restoring = tmp_path / "restoring"
    (restoring / "pg_wal").mkdir(parents=True)
    (restoring / "postmaster.pid").write_text(f"{os.getpid()}\n")  # the prefetcher serves a live server only
    pgvault(["wal", "fetch", segs[0], "pg_wal/RECOVERYXLOG", "--pgdata", str(restoring)], wal_env)
    [spool_root] = [p for p in (restoring / "pg_wal" / "pgvault").iterdir() if p.name != "fast"]
    spool = spool_root / "fetch"
    [fast] = list((restoring / "pg_wal" / "pgvault" / "fast").iterdir())  # remembered for the fast path
    assert fast.read_text().split("\n")[0] == str(spool.resolve())
    # Downloaded, verified and recorded (the record is what lets wal fetch hand a file over).
    _wait_for(lambda: all((spool / f"{s}.ok").exists() for s in segs[1:]))
    r = pgvault(["wal", "fetch", segs[1], "pg_wal/RECOVERYXLOG", "--pgdata", str(restoring), "--json"], wal_env).json()
    assert r["prefetched"] is True  # the full command (--json) serves it from the spool too
    assert (restoring / "pg_wal" / "RECOVERYXLOG").read_bytes() == data[segs[1]]
    # restore_command's form goes through pgvault.entry's fast path: moved, byte for byte, consumed.
    out = pgvault(["wal", "fetch", segs[2], "pg_wal/RECOVERYXLOG", "--pgdata", str(restoring)], wal_env)
    assert out.stdout == "" and out.stderr == ""
    assert (restoring / "pg_wal" / "RECOVERYXLOG").read_bytes() == data[segs[2]]
    assert not (spool / segs[2]).exists() and not (spool / f"{segs[2]}.ok").exists()
    assert (spool / ".want").read_text() == segs[2]
    # Past the end of the archive: still exit 1 ("not found"), prefetcher or not.
    nxt = f"{segs[-1][:16]}{int(segs[-1][16:], 16) + 1:08X}"
    assert pgvault(["wal", "fetch", nxt, "pg_wal/RECOVERYXLOG", "--pgdata", str(restoring)], wal_env,
                   check=False).returncode == 1


def test_async_push_fast_path_confirms_only_the_recorded_bytes(pg_cluster, wal_env, tmp_path: Path) -> None:
    """wal push's fast path (pgvault.entry, before the CLI is loaded) confirms from the pusher's
    record only the bytes the record describes: a segment rewritten after its record is refused
    by the full command (the repository holds other bytes), never confirmed."""
    segs = [_finished_segment(pg_cluster) for _ in range(3)]
    fake = tmp_path / "pgdata"
    status = fake / "pg_wal" / "archive_status"
    status.mkdir(parents=True)
    for s in segs:
        shutil.copyfile(pg_cluster.datadir / "pg_wal" / s, fake / "pg_wal" / s)
        (status / f"{s}.ready").touch()
    pgvault(["wal", "push", f"pg_wal/{segs[0]}", "--pgdata", str(fake)], wal_env)  # full command: remembers
    [fast] = list((fake / "pg_wal" / "pgvault" / "fast").iterdir())
    [spool] = [p for p in (fake / "pg_wal" / "pgvault").iterdir() if p.name != "fast"]
    assert fast.read_text().split("\n")[0] == str(spool.resolve())
    (status / f"{segs[0]}.ready").rename(status / f"{segs[0]}.done")
    _wait_for(lambda: all((spool / "archive" / f"{s}.ok").exists() for s in segs[1:]))
    # Confirmed by the fast path: the record is consumed, the output is the full command's.
    out = pgvault(["wal", "push", f"pg_wal/{segs[1]}", "--pgdata", str(fake)], wal_env)
    assert out.stdout.startswith(f"{segs[1]}: archived as ") and not (spool / "archive" / f"{segs[1]}.ok").exists()
    (status / f"{segs[1]}.ready").rename(status / f"{segs[1]}.done")
    # Rewritten after the pusher recorded it: not confirmed; the full command compares with the
    # repository and refuses to overwrite (exit 6).
    changed = bytearray((fake / "pg_wal" / segs[2]).read_bytes())
    changed[-1] ^= 0xFF
    with open(fake / "pg_wal" / segs[2], "r+b") as f:
        f.write(changed)
    refused = pgvault(["wal", "push", f"pg_wal/{segs[2]}", "--pgdata", str(fake)], wal_env, check=False)
    assert refused.returncode == 6 and "refusing to overwrite" in refused.stderr, refused
