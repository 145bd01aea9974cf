"""S3 Object Lock at the storage layer, against SeaweedFS (which enforces it: versioning, GOVERNANCE/
COMPLIANCE retention, default retention; docs/design.md "Immutable backups").

What pgvault writes on a lock repository carries ObjectLockMode + RetainUntilDate (single puts and
multipart uploads), lock leases carry none; ``delete`` on a versioned bucket removes every version
(never just a delete marker over bytes that stay), keeps retained versions hidden until their date;
the write check refuses a bucket without Object Lock and leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import botocore.exceptions as bce
import pytest

from pgvault.errors import StorageError
from pgvault.policy.object_lock import LockRule
from pgvault.storage.s3 import S3Settings, S3Storage
from support.seaweed import SeaweedServer, new_bucket_name

MiB = 1 << 20


@pytest.fixture
def lock_bucket(seaweed: SeaweedServer) -> Iterator[str]:
    name = new_bucket_name("pgvault-lock")
    seaweed.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    yield name  # locked versions outlive the test: the session's weed data dir goes with them


def _storage(settings: S3Settings, bucket: str, mode: str = "GOVERNANCE", seconds: float = 3.0) -> S3Storage:
    rule = LockRule(mode, seconds, f"{seconds:g}s")
    return S3Storage(bucket, "repo", dataclasses.replace(settings, object_lock=rule, part_size=5 * MiB))


def _versions(client: Any, bucket: str, prefix: str = "repo/") -> list[tuple[str, bool]]:
    out = client.list_object_versions(Bucket=bucket, Prefix=prefix)
    return sorted([(v["Key"], False) for v in out.get("Versions", [])]
                  + [(m["Key"], True) for m in out.get("DeleteMarkers", [])])


def test_every_put_carries_the_retention_but_lock_leases_do_not(
    seaweed: SeaweedServer, lock_bucket: str, s3_settings: S3Settings,
) -> None:
    s = _storage(s3_settings, lock_bucket, seconds=60)
    before = dt.datetime.now(dt.UTC)
    s.put_if_absent("c/wal/0000000100000000/x.json", b"{}")
    with s.open_write("c/base/1/big.tar") as w:  # multipart: two parts
        w.write(b"x" * (6 * MiB))
    s.put_if_absent("c/locks/backup.lock", b"{}")
    c = seaweed.client()
    for key in ("repo/c/wal/0000000100000000/x.json", "repo/c/base/1/big.tar"):
        r = c.get_object_retention(Bucket=lock_bucket, Key=key)["Retention"]
        assert r["Mode"] == "GOVERNANCE"
        assert before + dt.timedelta(seconds=59) <= r["RetainUntilDate"] <= before + dt.timedelta(seconds=65)
    with pytest.raises(bce.ClientError) as e:
        c.get_object_retention(Bucket=lock_bucket, Key="repo/c/locks/backup.lock")
    assert e.value.response["Error"]["Code"] in ("ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration")
    # The store refuses to delete the locked version (what a ransomware with pgvault's key would try).
    vid = c.head_object(Bucket=lock_bucket, Key="repo/c/base/1/big.tar")["VersionId"]
    with pytest.raises(bce.ClientError) as e:
        c.delete_object(Bucket=lock_bucket, Key="repo/c/base/1/big.tar", VersionId=vid)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_delete_keeps_retained_versions_hidden_then_removes_them_after_their_date(
    seaweed: SeaweedServer, lock_bucket: str, s3_settings: S3Settings,
) -> None:
    s = _storage(s3_settings, lock_bucket, seconds=3)
    s.put_if_absent("c/jobs/a.json", b"1")
    s.delete("c/jobs/a.json")  # retained: hidden, not gone
    assert list(s.list("c/")) == []
    assert _versions(seaweed.client(), lock_bucket) == [("repo/c/jobs/a.json", False), ("repo/c/jobs/a.json", True)]
    s.delete("c/jobs/a.json")  # again: still one marker, no error
    assert _versions(seaweed.client(), lock_bucket) == [("repo/c/jobs/a.json", False), ("repo/c/jobs/a.json", True)]
    time.sleep(4)
    s.delete("c/jobs/a.json")  # the date passed: every version and the marker go
    assert _versions(seaweed.client(), lock_bucket) == []


def test_a_lease_is_rewritten_and_released_without_leaving_versions(
    seaweed: SeaweedServer, lock_bucket: str, s3_settings: S3Settings,
) -> None:
    s = _storage(s3_settings, lock_bucket, seconds=600)
    s.put_if_absent("c/locks/expire.lock", b"one")
    with s.open_write("c/locks/expire.lock") as w:  # a heartbeat
        w.write(b"two")
    assert len(_versions(seaweed.client(), lock_bucket)) == 2
    s.delete("c/locks/expire.lock")
    assert _versions(seaweed.client(), lock_bucket) == []
    s.put_if_absent("c/locks/expire.lock", b"three")  # free again
    assert s.read_bytes("c/locks/expire.lock") == b"three"


def test_delete_on_a_plain_versioned_bucket_leaves_no_bytes(seaweed: SeaweedServer, s3_bucket: str,
                                                            s3_settings: S3Settings) -> None:
    c = seaweed.client()
    c.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    s = S3Storage(s3_bucket, "repo", s3_settings)
    s.put_if_absent("c/x", b"1")
    with s.open_write("c/x") as w:
        w.write(b"2")
    s.delete("c/x")
    assert _versions(c, s3_bucket) == []
    s.check_writable()  # the probe goes with all its versions too
    assert _versions(c, s3_bucket, "") == []


def test_the_write_check_refuses_a_bucket_without_object_lock(s3_bucket: str, s3_settings: S3Settings,
                                                               seaweed: SeaweedServer) -> None:
    s = _storage(s3_settings, s3_bucket)
    with pytest.raises(StorageError, match="has no Object Lock configuration") as e:
        s.check_writable()
    assert e.value.hint is not None and "object-lock-enabled-for-bucket" in e.value.hint
    # What the store itself says to a locked put there: a bare 400.
    with pytest.raises(StorageError, match="refused a locked put.*have Object Lock") as e:
        s.put_if_absent("c/x", b"1")
    assert e.value.hint is not None and "object_lock: off" in e.value.hint
    assert s.lock_configuration()["enabled"] is False


def test_the_write_check_with_a_default_retention_leaves_no_locked_probe(
    seaweed: SeaweedServer, lock_bucket: str, s3_settings: S3Settings,
) -> None:
    c = seaweed.client()
    c.put_object_lock_configuration(Bucket=lock_bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
    s = _storage(s3_settings, lock_bucket)
    s.check_writable()
    assert _versions(c, lock_bucket, "") == []
    assert s.lock_configuration() == {"enabled": True, "default_mode": "GOVERNANCE", "default_days": 1,
                                      "default_years": None}


def test_compliance_objects_are_locked_and_removable_only_after_their_date(
    seaweed: SeaweedServer, lock_bucket: str, s3_settings: S3Settings,
) -> None:
    s = _storage(s3_settings, lock_bucket, mode="COMPLIANCE", seconds=3)
    s.put_if_absent("c/logical/x/manifest.json", b"{}")
    c = seaweed.client()
    key = "repo/c/logical/x/manifest.json"
    assert c.get_object_retention(Bucket=lock_bucket, Key=key)["Retention"]["Mode"] == "COMPLIANCE"
    vid = c.head_object(Bucket=lock_bucket, Key=key)["VersionId"]
    with pytest.raises(bce.ClientError):  # not even the admin with a governance bypass
        c.delete_object(Bucket=lock_bucket, Key=key, VersionId=vid, BypassGovernanceRetention=True)
    assert s.retain_until("c/logical/x/manifest.json", vid) is not None
    time.sleep(4)
    s.delete("c/logical/x/manifest.json")
    assert _versions(c, lock_bucket) == []


def test_locks_still_work_under_a_bucket_default_retention(seaweed: SeaweedServer, lock_bucket: str,
                                                           s3_settings: S3Settings) -> None:
    """The store locks the leases too: a release cannot remove them, but hides them (a delete
    marker), and the next lock is taken over that marker; expire removes the versions later."""
    from pgvault.repository.locks import RepositoryLock

    c = seaweed.client()
    c.put_object_lock_configuration(Bucket=lock_bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
    s = _storage(s3_settings, lock_bucket)
    for _ in range(2):
        with RepositoryLock(s, "c", "expire"):
            assert [i.key for i in s.list("c/locks/")] == ["c/locks/expire.lock"]
        assert list(s.list("c/locks/")) == []
    # Both leases stay (locked) under one marker: the release removes markers that hide nothing more.
    assert _versions(c, lock_bucket) == [("repo/c/locks/expire.lock", False)] * 2 + [("repo/c/locks/expire.lock", True)]
