"""s3_read without a server: a store that ignores If-Match (answers a ranged GET with another
object's bytes) is caught by the ETag and size checks, and parts arrive in order."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from pgvault.errors import StorageError
from pgvault.storage.s3 import S3Settings
from pgvault.storage.s3_read import RangedBody, open_body

KiB = 1024


class _Body(io.BytesIO):
    def readinto(self, b: Any) -> int:  # like botocore's StreamingBody
        return super().readinto(b)


class _Client:
    """get_object over a dict of objects; ``swap`` replaces one and ignores If-Match, as a store
    without conditional GETs would."""

    def __init__(self, data: bytes, etag: str = '"v1"') -> None:
        self.data, self.etag, self.calls = data, etag, []

    def get_object(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(kw)
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", kw.get("Range", ""))
        if m is None:
            return {"Body": _Body(self.data), "ETag": self.etag, "ContentLength": len(self.data)}
        lo, hi = int(m.group(1)), int(m.group(2))
        return {"Body": _Body(self.data[lo : hi + 1]), "ETag": self.etag, "ContentLength": hi + 1 - lo,
                "ContentRange": f"bytes {lo}-{hi}/{len(self.data)}"}


class _Storage:
    bucket = "b"
    endpoint = "http://s3.test"

    def __init__(self, client: _Client) -> None:
        self._client = client
        self.settings = S3Settings(read_part_size=64 * KiB, read_concurrency=2)

    def _where(self, key: str) -> str:
        return f"s3://b/{key}"

    def _translate(self, exc: Exception, action: str, key: str) -> StorageError:
        return StorageError(f"cannot {action} {key}: {exc}")


def _open(client: _Client) -> io.BufferedReader:
    st = _Storage(client)
    return io.BufferedReader(open_body(st, "k", "k", client.get_object(Bucket="b", Key="k")))  # type: ignore[arg-type]


def test_parts_arrive_in_order_each_asking_for_the_pinned_etag() -> None:
    data = bytes(range(256)) * 1000  # 256,000 bytes: four 64 KiB parts
    client = _Client(data)
    with _open(client) as f:
        assert isinstance(f.raw, RangedBody)
        assert f.read() == data
    ranged = [c for c in client.calls if "Range" in c]
    assert len(ranged) == 3 and all(c["IfMatch"] == '"v1"' for c in ranged)


def test_a_store_ignoring_if_match_is_caught_by_the_etag() -> None:
    data = b"a" * 200_000
    client = _Client(data)
    with _open(client) as f:
        assert f.read(10) == b"a" * 10
        client.data, client.etag = b"b" * 200_000, '"v2"'  # replaced; the store still answers ranges
        with pytest.raises(StorageError, match="replaced or deleted while it was being read"):
            f.read()


def test_a_store_ignoring_if_match_is_caught_by_the_size() -> None:
    client = _Client(b"a" * 200_000, etag='"same"')
    with _open(client) as f:
        f.read(10)
        client.data = b"b" * 300_000  # another object under an equal ETag, another size
        with pytest.raises(StorageError, match="replaced or deleted"):
            f.read()


def test_one_part_objects_are_one_get() -> None:
    client = _Client(b"x" * (64 * KiB))
    with _open(client) as f:
        assert not isinstance(f.raw, RangedBody) and f.read() == b"x" * (64 * KiB)
    assert len(client.calls) == 1
