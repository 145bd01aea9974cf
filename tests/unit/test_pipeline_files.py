"""The pipeline's file objects: open_writer / open_reader.

The pumps (write_stream / read_stream) are built on them and keep their own tests in
test_pipeline.py; here: what a producer writing into the file, or a consumer reading from it,
sees - round trips, digests, the moment damage is reported, close/abort, tar on both ends, and
that the caller's sink and source are only ever called from the caller's thread.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from dataclasses import replace

import pyrage
import pytest

from pgvault.errors import ConfigError, IntegrityError
from pgvault.pipeline import PipelineSpec, StreamResult, open_reader, open_writer, read_stream, write_stream
from pgvault.storage.memory import MemoryStorage

COMBOS = [(c, e) for c in ("zstd", "gzip", "none") for e in ("none", "age")]
DETERMINISTIC = [(c, "none") for c in ("zstd", "gzip", "none")]  # age draws a fresh file key each time
IDENTITY = pyrage.x25519.Identity.generate()
SECRET, PUBLIC = str(IDENTITY), str(IDENTITY.to_public())


def spec_for(compression: str, encryption: str) -> PipelineSpec:
    return PipelineSpec(compression, None, encryption, (PUBLIC,) if encryption == "age" else ())


def payload(size: int, seed: int = 0) -> bytes:
    """Half text, half random: compresses somewhat, crosses age chunks and zstd blocks."""
    text = b"".join(b"%d\trow %d\tstatus %d\n" % (i, i * 7919 % 10007, i % 13) for i in range(size // 40 + 1))
    return (text[: size // 2] + os.urandom(size))[:size] if seed == 0 else text[:size]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_in_pieces(spec: PipelineSpec, data: bytes, piece: int, **kw: int) -> tuple[bytes, StreamResult]:
    sink = io.BytesIO()
    with open_writer(sink, spec, **kw) as f:
        for i in range(0, len(data), piece):
            assert f.write(data[i : i + piece]) == len(data[i : i + piece])
    return sink.getvalue(), f.result


def read_in_pieces(spec: PipelineSpec, stored: bytes, piece: int, **kw: object) -> tuple[bytes, StreamResult]:
    out = []
    with open_reader(io.BytesIO(stored), spec, identities=[SECRET], **kw) as f:  # type: ignore[arg-type]
        while data := f.read(piece):
            assert len(data) <= piece
            out.append(data)
        return b"".join(out), f.result


def threads_named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


# --- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
@pytest.mark.parametrize(("write_piece", "read_piece"), [(1 << 20, 1 << 20), (10240, 10240), (7, 65537), (300_001, 512)])
def test_every_combination_round_trips_through_the_files(compression: str, encryption: str, write_piece: int,
                                                         read_piece: int) -> None:
    spec = spec_for(compression, encryption)
    data = payload(700_000)
    stored, written = write_in_pieces(spec, data, write_piece, chunk_size=1 << 16)
    assert written == StreamResult(len(data), sha(data), len(stored), sha(stored))
    restored, read = read_in_pieces(spec, stored, read_piece, expected=written, chunk_size=1 << 16)
    assert restored == data
    assert read == written


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
def test_the_files_agree_with_the_pumps(compression: str, encryption: str) -> None:
    spec = spec_for(compression, encryption)
    data = payload(200_000, seed=1)
    stored, written = write_in_pieces(spec, data, 4096)
    pumped_sink = io.BytesIO()
    pumped = write_stream(io.BytesIO(data), pumped_sink, spec)
    assert (written.raw_size, written.raw_sha256) == (pumped.raw_size, pumped.raw_sha256)
    if (compression, encryption) in DETERMINISTIC:
        assert written == pumped and stored == pumped_sink.getvalue()
    # Either side reads what the other wrote, with the same verdict.
    assert read_stream(io.BytesIO(stored), io.BytesIO(), spec, identities=[SECRET], expected=written) == written
    assert read_in_pieces(spec, pumped_sink.getvalue(), 1000, expected=pumped) == (data, pumped)


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
def test_empty_stream_and_zero_length_writes(compression: str, encryption: str) -> None:
    spec = spec_for(compression, encryption)
    sink = io.BytesIO()
    with open_writer(sink, spec) as f:
        assert f.write(b"") == 0
    assert f.result.raw_size == 0 and f.result.stored_size == len(sink.getvalue())
    with open_reader(io.BytesIO(sink.getvalue()), spec, identities=[SECRET], expected=f.result) as r:
        assert r.read(0) == b""
        assert r.read() == b""
        assert r.result == f.result


def test_tar_streams_straight_into_the_writer_and_out_of_the_reader() -> None:
    spec = spec_for("zstd", "age")
    files = {f"dir/f{i}": payload(i * 5000, seed=i % 2) for i in range(20)}
    sink = io.BytesIO()
    with open_writer(sink, spec, threads=1) as f:
        with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT, bufsize=1 << 20) as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    seen = {}
    with open_reader(io.BytesIO(sink.getvalue()), spec, identities=[SECRET], expected=f.result) as r:
        with tarfile.open(fileobj=r, mode="r|") as tar:
            for member in tar:
                extracted = tar.extractfile(member)
                assert extracted is not None
                seen[member.name] = extracted.read()
        while r.read(1 << 20):  # the end-of-archive padding tar does not read
            pass
        assert r.result == f.result
    assert seen == files


def test_small_writes_are_collected_into_chunks_and_reads_return_at_most_what_was_asked() -> None:
    class Sink:
        def __init__(self) -> None:
            self.writes: list[int] = []

        def write(self, data: bytes) -> int:
            self.writes.append(len(data))
            return len(data)

    sink = Sink()
    with open_writer(sink, spec_for("none", "none"), chunk_size=1000) as f:
        for _ in range(25):
            f.write(b"x" * 99)
    assert sink.writes == [1089, 1089] + [297]  # whole pieces once a chunk is full, the rest at close
    zeros = io.BytesIO()
    written = write_stream(io.BytesIO(bytes(50 << 20)), zeros, spec_for("zstd", "none"))
    assert len(zeros.getvalue()) < 10_000  # 5000:1 and more: a reader must not expand it all at once
    with open_reader(io.BytesIO(zeros.getvalue()), spec_for("zstd", "none"), expected=written, chunk_size=1 << 16) as r:
        sizes = []
        while data := r.read(100_000):
            sizes.append(len(data))
    assert sum(sizes) == 50 << 20 and max(sizes) <= 1 << 16


# --- damage is reported at the right moment -----------------------------------------------------------


def read_until_failure(spec: PipelineSpec, stored: bytes, **kw: object) -> tuple[int, BaseException | None]:
    """Raw bytes returned before the reader raised, and what it raised (None: it reached the end)."""
    got = 0
    with open_reader(io.BytesIO(stored), spec, identities=[SECRET], chunk_size=1 << 16, **kw) as r:  # type: ignore[arg-type]
        try:
            while data := r.read(10_000):
                got += len(data)
        except IntegrityError as exc:
            with pytest.raises(IntegrityError) as again:  # the stream stays failed
                r.read(10_000)
            assert again.value is exc is r.failure
            with pytest.raises(ValueError):
                _ = r.result
            return got, exc
    return got, None


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
def test_truncation_is_raised_instead_of_the_end(compression: str, encryption: str) -> None:
    spec = spec_for(compression, encryption)
    data = payload(300_000)
    stored, written = write_in_pieces(spec, data, 1 << 20)
    for cut in (len(stored) // 3, len(stored) - 1):
        got, failure = read_until_failure(spec, stored[:cut], expected=written)
        assert failure is not None and str(failure).startswith("truncated: the stored object has")
        assert got <= len(data)  # all of them when only a trailer (zstd's checksum) is missing
        if (compression, encryption) != ("none", "none"):  # the format alone says so too
            got, failure = read_until_failure(spec, stored[:cut])
            assert failure is not None and "truncated" in str(failure)


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
def test_a_corrupt_byte_is_raised_no_later_than_the_end(compression: str, encryption: str) -> None:
    spec = spec_for(compression, encryption)
    data = payload(300_000)
    stored, written = write_in_pieces(spec, data, 1 << 20)
    damaged = bytearray(stored)
    damaged[len(stored) // 2] ^= 0x40
    got, failure = read_until_failure(spec, bytes(damaged), expected=written)
    assert failure is not None and got <= len(data)
    if encryption == "age":  # authenticated 64 KiB chunks: nothing from the damaged chunk on comes out
        assert got < len(data) - 60_000


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
def test_an_extended_object_fails_when_the_extra_byte_arrives(compression: str, encryption: str) -> None:
    spec = spec_for(compression, encryption)
    data = payload(300_000)
    stored, written = write_in_pieces(spec, data, 1 << 20)
    got, failure = read_until_failure(spec, stored + b"\0" * 10, expected=written)
    assert failure is not None and "longer than" in str(failure)
    assert got < len(data)  # stored bytes are read 64 KiB ahead: the end was never returned
    if (compression, encryption) != ("none", "none"):
        _, failure = read_until_failure(spec, stored + b"\0" * 10)
        assert failure is not None


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_a_wrong_key_fails_at_the_first_read_and_a_missing_one_at_open(compression: str) -> None:
    spec = spec_for(compression, "age")
    stored, written = write_in_pieces(spec, payload(100_000), 1 << 20)
    other = pyrage.x25519.Identity.generate()
    with open_reader(io.BytesIO(stored), spec, identities=[str(other)], expected=written) as r:
        with pytest.raises(IntegrityError, match="^cannot decrypt with the given identity") as caught:
            r.read(1)
    rendered = str(caught.value) + repr(caught.value) + str(caught.value.hint)
    assert str(other) not in rendered and SECRET not in rendered and PUBLIC in rendered
    with pytest.raises(ConfigError, match="no identity"):
        open_reader(io.BytesIO(stored), spec)


def test_a_mismatch_with_the_manifest_is_raised_instead_of_the_end() -> None:
    spec = spec_for("zstd", "none")
    data = payload(100_000)
    stored, written = write_in_pieces(spec, data, 1 << 20)
    got, failure = read_until_failure(spec, stored, expected=replace(written, raw_sha256="0" * 64))
    assert got == len(data) and failure is not None and str(failure).startswith("restored bytes do not match")


# --- closing, aborting, failing ---------------------------------------------------------------------


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
def test_close_twice_and_use_after_close(compression: str, encryption: str) -> None:
    spec = spec_for(compression, encryption)
    sink = io.BytesIO()
    f = open_writer(sink, spec)
    with pytest.raises(ValueError, match="after close"):
        _ = f.result
    f.write(b"abc" * 1000)
    f.close()
    stored, result = sink.getvalue(), f.result
    f.close()
    f.abort()
    assert f.closed and f.result == result and sink.getvalue() == stored
    with pytest.raises(ValueError, match="closed"):
        f.write(b"more")

    r = open_reader(io.BytesIO(stored), spec, identities=[SECRET], expected=result)
    assert r.read(1) == b"a"
    with pytest.raises(ValueError, match="read to the end"):
        _ = r.result
    r.close()
    r.close()
    with pytest.raises(ValueError, match="closed"):
        r.read(1)
    assert not threads_named("age-")


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
def test_an_exception_inside_with_aborts_without_publishing(compression: str, encryption: str) -> None:
    spec = spec_for(compression, encryption)
    storage = MemoryStorage("abort")
    with pytest.raises(RuntimeError, match="tar failed"):
        with storage.open_write("obj") as w, open_writer(w, spec, chunk_size=1 << 16) as f:
            f.write(payload(500_000))
            raise RuntimeError("tar failed")
    assert f.closed
    with pytest.raises(ValueError):
        _ = f.result
    assert list(storage.list()) == []
    assert not threads_named("age-")

    class Recording:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, data: bytes) -> int:
            self.data += data
            return len(data)

    sink = Recording()
    with pytest.raises(RuntimeError):
        with open_writer(sink, spec) as f:
            f.write(payload(1000))
            raise RuntimeError("tar failed")
    stored_so_far = bytes(sink.data)
    del f  # nor does the collector finish it
    assert bytes(sink.data) == stored_so_far
    if (compression, encryption) != ("none", "none"):
        with pytest.raises(IntegrityError):  # an unfinished stream, never a complete-looking one
            read_stream(io.BytesIO(stored_so_far), io.BytesIO(), spec, identities=[SECRET])


class FailingSink:
    def __init__(self, fail_on: int, exc: BaseException) -> None:
        self.calls = 0
        self.fail_on = fail_on
        self.exc = exc

    def write(self, data: bytes) -> int:
        self.calls += 1
        if self.calls >= self.fail_on:
            raise self.exc
        return len(data)


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=lambda e: type(e).__name__)
def test_a_failing_sink_breaks_the_writer_with_its_own_exception(compression: str, encryption: str,
                                                                  exc: BaseException) -> None:
    spec = spec_for(compression, encryption)
    data = payload(2_000_000)
    counted = FailingSink(10**9, exc)
    write_in_pieces_into = open_writer(counted, spec, chunk_size=1 << 16)
    write_in_pieces_into.write(data)
    write_in_pieces_into.close()
    for fail_on in (1, counted.calls):  # the first write, and the last one (inside close)
        sink = FailingSink(fail_on, exc)
        f = open_writer(sink, spec, chunk_size=1 << 16)
        with pytest.raises(type(exc)) as raised:
            f.write(data)
            f.close()
        assert raised.value is exc
        calls = sink.calls
        with pytest.raises(type(exc)):
            f.write(b"x")
        with pytest.raises(type(exc)):
            f.close()
        assert sink.calls == calls  # nothing more reached the sink
        assert not threads_named("age-")


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
def test_sink_and_source_are_only_called_from_the_callers_thread(compression: str, encryption: str) -> None:
    spec = spec_for(compression, encryption)
    callers: set[int] = set()

    class Sink(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            callers.add(threading.get_ident())
            return super().write(data)

    class Source(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            callers.add(threading.get_ident())
            return super().read(size)

    sink = Sink()
    stored, written = write_in_pieces(spec, payload(500_000), 100_000, threads=2)
    with open_writer(sink, spec, threads=2) as f:
        f.write(payload(500_000))
    with open_reader(Source(stored), spec, identities=[SECRET], expected=written) as r:
        while r.read(50_000):
            pass
    assert callers == {threading.get_ident()}


def test_an_abandoned_age_reader_leaves_no_thread_behind() -> None:
    spec = spec_for("zstd", "age")
    stored, written = write_in_pieces(spec, payload(1_000_000), 1 << 20)
    r = open_reader(io.BytesIO(stored), spec, identities=[SECRET], expected=written, chunk_size=1 << 16)
    assert len(r.read(1000)) == 1000
    assert threads_named("age-decrypt")
    r.close()
    assert not threads_named("age-")


def test_tuning_and_spec_are_checked_when_opening() -> None:
    with pytest.raises(ConfigError, match="no recipients"):
        open_writer(io.BytesIO(), PipelineSpec("zstd", None, "age", ()))
    with pytest.raises(ValueError, match="threads"):
        open_writer(io.BytesIO(), PipelineSpec(), threads=-1)
    with pytest.raises(ValueError, match="chunk_size"):
        open_reader(io.BytesIO(), PipelineSpec(), chunk_size=0)
    with pytest.raises(IntegrityError, match="cannot read the stored object"):
        open_reader(io.BytesIO(), PipelineSpec("lz4"))
