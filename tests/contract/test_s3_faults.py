"""S3 under network faults: SeaweedFS behind :class:`support.faultproxy.FaultProxy`.

A stalled store must fail every call within the configured timeouts with a message naming the
endpoint; throttling (503 Slow Down) must be retried; a download whose connection breaks must
resume where it stopped and never mix two versions of an object.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pgvault.errors import StorageError
from pgvault.storage import ObjectNotFound
from pgvault.storage.s3 import S3Settings, S3Storage
from support.faultproxy import FaultProxy

pytestmark = pytest.mark.s3

MiB = 1 << 20


@pytest.fixture
def proxy(seaweed: Any) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", seaweed.s3_port) as p:
        yield p


def via(proxy: FaultProxy, settings: S3Settings, bucket: str, **changes: Any) -> S3Storage:
    """A repository in ``bucket`` reached through the proxy."""
    changed = dataclasses.replace(settings, endpoint_url=proxy.endpoint_url, part_size=5 * MiB, **changes)
    return S3Storage(bucket, "faults", changed)


def payload(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def timed(call: Callable[[], object]) -> tuple[StorageError, float]:
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        call()
    return info.value, time.monotonic() - start


def test_stalled_store_fails_every_call_within_the_timeouts(proxy: FaultProxy, s3_bucket: str, s3_settings: S3Settings) -> None:
    st = via(proxy, s3_settings, s3_bucket, connect_timeout=1, read_timeout=1, max_attempts=1)
    st.put_if_absent("present", b"x")
    proxy.stall()
    err, took = timed(lambda: st.stat("present"))
    assert not isinstance(err, ObjectNotFound)
    assert f"S3 endpoint {proxy.endpoint_url} did not answer within 1s (2 attempts)" in str(err), err
    assert "faults/present" in str(err) and err.hint and "read_timeout" in err.hint
    assert err.exit_code == 4
    # Two attempts of 1 s each plus botocore's backoff (< 1 s): bounded, not 6 x 60 s.
    assert 2 <= took < 5, took
    # Right after a confirmed stall, further calls (cleanup, lock release) fail at once.
    for call in (lambda: st.read_bytes("present"), lambda: list(st.list()), lambda: st.put_if_absent("k", b"y")):
        err, took = timed(call)
        assert "did not answer" in str(err) and took < 0.5, (err, took)


def test_breaker_closes_again_and_stalled_writes_are_bounded(proxy: FaultProxy, s3_bucket: str, s3_settings: S3Settings) -> None:
    st = via(proxy, s3_settings, s3_bucket, connect_timeout=1, read_timeout=1, max_attempts=0, max_concurrency=2)
    w = st.open_write("big")
    w.write(payload(5 * MiB))  # the first part is uploading
    proxy.stall()
    err, took = timed(lambda: (w.write(payload(6 * MiB)), w.commit()))
    assert "did not answer within 1s (1 attempt)" in str(err), err
    assert took < 6, took
    proxy.passthrough()
    time.sleep(st.settings.call_bound)  # the breaker only holds for one call's worth of waiting
    st.put_if_absent("after", b"ok")
    assert st.read_bytes("after") == b"ok"
    with pytest.raises(ObjectNotFound):
        st.stat("big")


def test_throttling_503_is_retried_until_it_succeeds(proxy: FaultProxy, s3_bucket: str, s3_settings: S3Settings) -> None:
    st = via(proxy, s3_settings, s3_bucket, max_attempts=3)
    data = payload(6 * MiB)  # a multipart upload: create, two parts, complete
    proxy.http_errors(3)
    with st.open_write("obj") as w:
        w.write(data)
    proxy.http_errors(2)
    assert st.read_bytes("obj") == data
    proxy.http_errors(3)
    st.put_if_absent("small", b"s")
    assert proxy.errors_sent == 8
    # More failures in a row than retries: a clear S3 error, not a hang.
    proxy.http_errors(10)
    err, _ = timed(lambda: st.stat("obj"))
    assert "503" in str(err) and proxy.endpoint_url in str(err)


def test_a_download_resumes_after_connection_resets(proxy: FaultProxy, s3_bucket: str, s3_settings: S3Settings) -> None:
    st = via(proxy, s3_settings, s3_bucket)
    data = payload(7 * MiB + 12345)
    with st.open_write("big") as w:  # multipart: the ETag is of the "md5-N" kind
        w.write(data)
    proxy.reset_after(1 * MiB)  # every connection dies after ~1 MiB of the answer
    out = bytearray()
    with st.open_read("big") as f:
        while chunk := f.read(300_000):
            out += chunk
        resumes = f.raw.resumes  # type: ignore[attr-defined]
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()
    assert resumes >= 7 and proxy.resets >= 7, (resumes, proxy.resets)


def test_a_resumed_download_never_mixes_two_versions(proxy: FaultProxy, s3_bucket: str, s3_settings: S3Settings, seaweed: Any) -> None:
    st = via(proxy, s3_settings, s3_bucket)
    old, new = payload(3 * MiB), payload(3 * MiB + 1)
    with st.open_write("obj") as w:
        w.write(old)
    proxy.reset_after(1 * MiB)
    with st.open_read("obj") as f:
        assert f.read(512 * 1024) == old[: 512 * 1024]
        seaweed.client().put_object(Bucket=s3_bucket, Key="faults/obj", Body=new)  # replaced meanwhile
        with pytest.raises(StorageError, match="replaced or deleted while it was being read") as info:
            f.read()
    assert not isinstance(info.value, ObjectNotFound)


def test_a_download_that_never_progresses_gives_up(proxy: FaultProxy, s3_bucket: str, s3_settings: S3Settings) -> None:
    st = via(proxy, s3_settings, s3_bucket, read_resumes=2, max_attempts=0)
    with st.open_write("obj") as w:
        w.write(payload(2 * MiB))
    proxy.reset_after(256 * 1024)  # the first answer is cut early
    with st.open_read("obj") as f:
        assert len(f.read(64 * 1024)) == 64 * 1024
        proxy.reset_after(0, hard=True)  # from now on every connection is reset before any byte
        with pytest.raises(StorageError) as info:
            f.read()
    assert proxy.endpoint_url in str(info.value) and "faults/obj" in str(info.value)


# -- ranged parallel reads (s3_read.RangedBody) --------------------------------------------------

def ranged(proxy: FaultProxy, settings: S3Settings, bucket: str, **changes: Any) -> S3Storage:
    """Reads in 1 MiB ranged parts, three in flight, through the proxy."""
    return via(proxy, settings, bucket, **{"read_part_size": 1 * MiB, "read_concurrency": 3, **changes})


def read_all(f: Any, size: int = 300_000) -> bytes:
    out = bytearray()
    while chunk := f.read(size):
        out += chunk
    return bytes(out)


def test_parallel_ranges_resume_after_resets_and_return_the_exact_bytes(
    proxy: FaultProxy, s3_bucket: str, s3_settings: S3Settings
) -> None:
    st = ranged(proxy, s3_settings, s3_bucket)
    data = payload(9 * MiB + 4321)  # ten parts, the last one short
    with st.open_write("big") as w:  # multipart: the ETag is of the "md5-N" kind
        w.write(data)
    proxy.reset_after(300 * 1024)  # every connection dies after ~300 KiB of its answer
    with st.open_read("big") as f:
        assert type(f.raw).__name__ == "RangedBody"  # type: ignore[attr-defined]
        out = read_all(f)
        resumes = f.raw.resumes  # type: ignore[attr-defined]
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()
    assert resumes >= 10 and proxy.resets >= 10, (resumes, proxy.resets)


def test_parallel_parts_reuse_their_connections(proxy: FaultProxy, s3_bucket: str, s3_settings: S3Settings) -> None:
    data = payload(10 * MiB)
    with via(proxy, s3_settings, s3_bucket).open_write("big") as w:
        w.write(data)
    before = proxy.connections
    with ranged(proxy, s3_settings, s3_bucket).open_read("big") as f:  # a new client: a new connection pool
        assert read_all(f) == data
    # The first GET (dropped after part 0) plus one connection per part in flight; not one per part.
    assert proxy.connections - before <= 3 + 2, proxy.connections - before


def test_a_stall_mid_read_times_out_and_the_read_resumes(proxy: FaultProxy, s3_bucket: str, s3_settings: S3Settings) -> None:
    st = ranged(proxy, s3_settings, s3_bucket, read_timeout=1, max_attempts=3)
    data = payload(6 * MiB + 17)
    with st.open_write("obj") as w:
        w.write(data)
    with st.open_read("obj") as f:
        head = f.read(100_000)
        proxy.stall()  # parts in flight freeze mid-body: each read times out after 1 s
        time.sleep(1.5)
        proxy.passthrough()
        out = head + read_all(f)
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_read_stalled_for_good_fails_within_bounds_naming_the_key(
    proxy: FaultProxy, s3_bucket: str, s3_settings: S3Settings
) -> None:
    with ranged(proxy, s3_settings, s3_bucket).open_write("obj") as w:
        w.write(payload(6 * MiB))
    st = ranged(proxy, s3_settings, s3_bucket, connect_timeout=1, read_timeout=1, max_attempts=0, read_resumes=1)
    with st.open_read("obj") as f:
        f.read(100_000)
        proxy.stall()
        err, took = timed(f.read)
    assert "faults/obj" in str(err) and proxy.endpoint_url in str(err), err
    assert s3_settings.secret_access_key not in str(err) and s3_settings.secret_access_key not in (err.hint or "")
    assert took < 10, took


def written_in_parts(bucket: str, settings: S3Settings) -> tuple[S3Storage, bytes, bytes]:
    """A direct repository reading in 1 MiB parts, two in flight; an 8 MiB object written as "obj";
    the old bytes and the new ones a test overwrites it with."""
    st = S3Storage(bucket, "faults", dataclasses.replace(settings, part_size=5 * MiB, read_part_size=1 * MiB,
                                                         read_concurrency=2))
    old, new = payload(8 * MiB), payload(8 * MiB + 1)
    with st.open_write("obj") as w:
        w.write(old)
    return st, old, new


def test_an_object_overwritten_between_ranges_is_refused_not_stitched(
    s3_bucket: str, s3_settings: S3Settings, seaweed: Any
) -> None:
    st, old, new = written_in_parts(s3_bucket, s3_settings)
    with st.open_read("obj") as f:
        assert f.read(100_000) == old[:100_000]  # parts 0-2 at most are fetched or in flight
        seaweed.client().put_object(Bucket=s3_bucket, Key="faults/obj", Body=new)  # replaced meanwhile
        with pytest.raises(StorageError, match="replaced or deleted while it was being read") as info:
            f.read()
    assert not isinstance(info.value, ObjectNotFound)
    assert "faults/obj" in str(info.value)


def test_a_versioned_object_overwritten_mid_read_is_read_as_the_version_pinned(
    s3_bucket: str, s3_settings: S3Settings, seaweed: Any
) -> None:
    c = seaweed.client()
    c.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    st, old, new = written_in_parts(s3_bucket, s3_settings)
    with st.open_read("obj") as f:
        head = f.read(100_000)
        c.put_object(Bucket=s3_bucket, Key="faults/obj", Body=new)
        try:
            out = head + read_all(f)
        except StorageError as exc:  # a store that answers If-Match per key, not per version, refuses instead
            assert "replaced or deleted" in str(exc)
        else:
            assert out == old  # every range came from the version the first GET saw
    assert st.read_bytes("obj") == new


def test_closing_a_parallel_read_early_stops_its_workers(s3_bucket: str, s3_settings: S3Settings) -> None:
    import threading

    st = S3Storage(s3_bucket, "faults", dataclasses.replace(
        s3_settings, part_size=5 * MiB, read_part_size=1 * MiB, read_concurrency=3))
    with st.open_write("obj") as w:
        w.write(payload(12 * MiB))
    with st.open_read("obj") as f:
        assert len(f.read(10)) == 10
    deadline = time.monotonic() + 5
    while any(t.name.startswith("s3-read") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name.startswith("s3-read") for t in threading.enumerate())
