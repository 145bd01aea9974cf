"""The stream pipeline: round trips, stock-tool compatibility, damage detection, bounded memory.

No servers: streams live in memory or in temp files; the stock `zstd`, `gzip`, `age`,
`age-keygen` and `ssh-keygen` programs prove the stored format is the standard one (tests that
need a missing program are skipped, never silently passed).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import pyrage
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgvault.errors import ConfigError, IntegrityError, StorageError
from pgvault.pipeline import PipelineSpec, StreamResult, load_identities, read_stream, write_stream

COMPRESSIONS = ("zstd", "gzip", "none")
ENCRYPTIONS = ("none", "age")
COMBOS = [(c, e) for c in COMPRESSIONS for e in ENCRYPTIONS]
# Combinations whose format itself marks the end of the stream / authenticates its content.
SELF_CHECKING = [(c, e) for c, e in COMBOS if (c, e) != ("none", "none")]
AGE_HEADER_AND_CHUNK = 65536 + 16  # age payload chunk: 64 KiB plaintext + Poly1305 tag


def needs(*tools: str) -> pytest.MarkDecorator:
    missing = [t for t in tools if shutil.which(t) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")


@dataclass(frozen=True)
class AgeKey:
    secret: str
    public: str


def new_key() -> AgeKey:
    identity = pyrage.x25519.Identity.generate()
    return AgeKey(str(identity), str(identity.to_public()))


@pytest.fixture(scope="module")
def key() -> AgeKey:
    return new_key()


@pytest.fixture(scope="module")
def keyfile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AgeKey]:
    """A key made by the stock `age-keygen`, as an operator would."""
    if shutil.which("age-keygen") is None:
        pytest.skip("needs age-keygen")
    path = tmp_path_factory.mktemp("age") / "key.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()
    (secret,) = load_identities(path.read_text())
    return path, AgeKey(secret, public)


def make_spec(compression: str, encryption: str, key: AgeKey, level: int | None = None) -> PipelineSpec:
    return PipelineSpec(compression, level, encryption, (key.public,) if encryption == "age" else ())


def csv_like(lines: int, seed: int = 0) -> bytes:
    """Compressible, dump-like text (no two runs of the generator need to agree beyond the seed)."""
    import random

    rnd = random.Random(seed)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    return b"".join(
        b"%d\t%s %s\t%d.%02d\t2024-%02d-%02d\n"
        % (i, rnd.choice(words).encode(), rnd.choice(words).encode(), rnd.randrange(100000), rnd.randrange(100),
           rnd.randrange(1, 13), rnd.randrange(1, 29))
        for i in range(lines)
    )


class WriteOnlySink:
    """What pg_restore's stdin looks like to the pipeline: only `write`, nothing to close."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class CountingSink:
    """Counts and hashes without keeping anything (for big streams)."""

    def __init__(self) -> None:
        self.size = 0
        self.largest_write = 0
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.size += len(data)
        self.largest_write = max(self.largest_write, len(data))
        self.sha.update(data)
        return len(data)


class TrickleReader:
    """Returns at most `step` bytes per read, like a pipe from pg_dump."""

    def __init__(self, data: bytes, step: int) -> None:
        self._buf = io.BytesIO(data)
        self._step = step

    def read(self, size: int = -1) -> bytes:
        return self._buf.read(min(self._step, size) if size >= 0 else self._step)


class ZeroReader:
    def __init__(self, total: int) -> None:
        self.left = total

    def read(self, size: int = -1) -> bytes:
        n = min(self.left, size if size >= 0 else 1 << 20)
        self.left -= n
        return bytes(n)


def store(data: bytes, spec: PipelineSpec, **kw: int) -> tuple[bytes, StreamResult]:
    sink = io.BytesIO()
    result = write_stream(io.BytesIO(data), sink, spec, **kw)
    return sink.getvalue(), result


def restore(stored: bytes, spec: PipelineSpec, key: AgeKey, **kw: object) -> tuple[bytes, StreamResult]:
    sink = WriteOnlySink()
    result = read_stream(io.BytesIO(stored), sink, spec, identities=[key.secret], **kw)  # type: ignore[arg-type]
    return sink.data, result


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- round trips -----------------------------------------------------------------------------------

payloads = st.one_of(
    st.binary(max_size=6000),
    st.integers(0, 400).map(lambda n: csv_like(n, seed=n)),
)


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=payloads, chunk_size=st.integers(1, 70_000), step=st.integers(1, 100_000))
def test_every_combination_round_trips_and_reports_true_digests(
    compression: str, encryption: str, key: AgeKey, data: bytes, chunk_size: int, step: int
) -> None:
    spec = make_spec(compression, encryption, key)
    stored_sink = io.BytesIO()
    written = write_stream(TrickleReader(data, step), stored_sink, spec, chunk_size=chunk_size)
    stored = stored_sink.getvalue()

    assert written == StreamResult(len(data), sha(data), len(stored), sha(stored))
    restored_sink = WriteOnlySink()
    read = read_stream(
        TrickleReader(stored, step), restored_sink, spec, identities=[key.secret], expected=written, chunk_size=chunk_size
    )
    assert restored_sink.data == data
    assert read == written
    if (compression, encryption) == ("none", "none"):
        assert stored == data
    else:
        assert stored != data or not data  # something was really applied


@pytest.mark.parametrize(
    ("compression", "encryption", "threads"),
    [("zstd", "age", 0), ("zstd", "age", 2), ("zstd", "none", 1), ("gzip", "age", 0), ("none", "age", 0)],
)
def test_multi_megabyte_stream_crosses_age_chunks_and_zstd_jobs(
    compression: str, encryption: str, threads: int, key: AgeKey
) -> None:
    data = csv_like(60_000, seed=7) + os.urandom(300_000) + csv_like(20_000, seed=8)
    spec = make_spec(compression, encryption, key)
    stored, written = store(data, spec, threads=threads)
    restored, read = restore(stored, spec, key, expected=written)
    assert restored == data
    assert read == written
    assert written.raw_size == len(data) > 2 * AGE_HEADER_AND_CHUNK


def test_identity_pipeline_stores_the_raw_bytes_with_one_digest(key: AgeKey) -> None:
    data = csv_like(500)
    stored, result = store(data, make_spec("none", "none", key))
    assert stored == data
    assert result.raw_sha256 == result.stored_sha256 == sha(data)


def test_zstd_threads_change_nothing_in_what_is_restored(key: AgeKey) -> None:
    data = csv_like(50_000, seed=3)
    spec = make_spec("zstd", "none", key)
    single, _ = store(data, spec, threads=0)
    multi, _ = store(data, spec, threads=2)
    assert restore(single, spec, key)[0] == restore(multi, spec, key)[0] == data


# --- stock tools read what pgvault writes --------------------------------------------------------


@needs("zstd")
def test_zstd_output_is_a_standard_zstd_file_with_content_checksum(tmp_path: Path, key: AgeKey) -> None:
    data = csv_like(20_000)
    stored, _ = store(data, make_spec("zstd", "none", key))
    path = tmp_path / "x.dump.zst"
    path.write_bytes(stored)
    assert subprocess.run(["zstd", "-d", "-c", str(path)], check=True, capture_output=True).stdout == data
    listing = subprocess.run(["zstd", "-lv", str(path)], check=True, capture_output=True, text=True).stdout
    assert "XXH64" in listing  # the frame carries its content checksum


@needs("gzip")
def test_gzip_output_is_a_standard_gzip_file(tmp_path: Path, key: AgeKey) -> None:
    data = csv_like(20_000)
    stored, _ = store(data, make_spec("gzip", "none", key, level=9))
    path = tmp_path / "x.dump.gz"
    path.write_bytes(stored)
    subprocess.run(["gzip", "-t", str(path)], check=True)
    assert subprocess.run(["gzip", "-d", "-c", str(path)], check=True, capture_output=True).stdout == data


@needs("age", "zstd", "gzip")
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_break_glass_age_decrypt_then_decompress_with_stock_tools(
    compression: str, tmp_path: Path, keyfile: tuple[Path, AgeKey]
) -> None:
    path, key = keyfile
    data = csv_like(30_000, seed=2)
    spec = make_spec(compression, "age", key)
    stored, _ = store(data, spec, threads=1)
    obj = tmp_path / f"app.dump{spec.suffix()}"
    obj.write_bytes(stored)
    decrypted = subprocess.run(["age", "-d", "-i", str(path), str(obj)], check=True, capture_output=True).stdout
    undo = {"zstd": ["zstd", "-d", "-c"], "gzip": ["gzip", "-d", "-c"], "none": ["cat"]}[compression]
    assert subprocess.run(undo, input=decrypted, check=True, capture_output=True).stdout == data


@needs("age", "ssh-keygen")
def test_ssh_ed25519_recipient_decrypts_with_age_cli_and_with_read_stream(tmp_path: Path) -> None:
    private = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(private)], check=True)
    spec = PipelineSpec("zstd", None, "age", (private.with_suffix(".pub").read_text().strip(),))
    assert spec.validate() == []
    data = csv_like(5_000)
    stored, written = store(data, spec)
    obj = tmp_path / "x.zst.age"
    obj.write_bytes(stored)
    via_cli = subprocess.run(["age", "-d", "-i", str(private), str(obj)], check=True, capture_output=True).stdout
    assert subprocess.run(["zstd", "-d", "-c"], input=via_cli, check=True, capture_output=True).stdout == data

    identities = load_identities(private.read_text())
    sink = WriteOnlySink()
    read_stream(io.BytesIO(stored), sink, spec, identities=identities, expected=written)
    assert sink.data == data


# --- pgvault reads what stock tools write -------------------------------------------------------


@needs("zstd")
@pytest.mark.parametrize(
    ("args", "via_stdin"),
    [([], False), ([], True), (["-19"], True), (["-T2"], True), (["--no-check"], False), (["-1", "--no-check"], True)],
)
def test_files_made_by_zstd_cli_restore(args: list[str], via_stdin: bool, tmp_path: Path, key: AgeKey) -> None:
    data = csv_like(40_000, seed=4)
    src = tmp_path / "data"
    src.write_bytes(data)
    if via_stdin:  # no content size in the frame header
        made = subprocess.run(["zstd", "-q", "-c", *args], input=data, check=True, capture_output=True).stdout
    else:  # content size recorded in the header
        made = subprocess.run(["zstd", "-q", "-c", *args, str(src)], check=True, capture_output=True).stdout
    restored, result = restore(made, PipelineSpec("zstd"), key)
    assert restored == data
    assert result.stored_sha256 == sha(made)


@needs("zstd")
def test_concatenated_and_skippable_zstd_frames_restore_like_zstd_cli(tmp_path: Path, key: AgeKey) -> None:
    part1, part2 = csv_like(3000, seed=1), csv_like(3000, seed=2)
    frame1 = subprocess.run(["zstd", "-q", "-c"], input=part1, check=True, capture_output=True).stdout
    frame2 = subprocess.run(["zstd", "-q", "-c", "--no-check"], input=part2, check=True, capture_output=True).stdout
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"notes"
    stream = frame1 + skippable + frame2
    cli = subprocess.run(["zstd", "-d", "-c"], input=stream, check=True, capture_output=True).stdout
    restored, _ = restore(stream, PipelineSpec("zstd"), key, chunk_size=7)  # headers split across writes
    assert restored == cli == part1 + part2


@needs("zstd")
def test_empty_input_round_trips_and_matches_zstd_cli(key: AgeKey) -> None:
    made = subprocess.run(["zstd", "-q", "-c"], input=b"", check=True, capture_output=True).stdout
    assert restore(made, PipelineSpec("zstd"), key)[0] == b""
    for compression, encryption in COMBOS:
        spec = make_spec(compression, encryption, key)
        stored, written = store(b"", spec)
        assert restore(stored, spec, key, expected=written)[0] == b""


@needs("gzip")
def test_files_made_by_gzip_cli_restore_including_concatenated_members(key: AgeKey) -> None:
    part1, part2 = csv_like(4000, seed=5), csv_like(10, seed=6)
    member1 = subprocess.run(["gzip", "-c"], input=part1, check=True, capture_output=True).stdout
    member2 = subprocess.run(["gzip", "-1", "-c"], input=part2, check=True, capture_output=True).stdout
    assert restore(member1, PipelineSpec("gzip"), key)[0] == part1
    assert restore(member1 + member2, PipelineSpec("gzip"), key, chunk_size=100)[0] == part1 + part2


@needs("age", "zstd")
@pytest.mark.parametrize("armor", [False, True])
def test_file_made_by_age_cli_restores(armor: bool, tmp_path: Path, keyfile: tuple[Path, AgeKey]) -> None:
    path, key = keyfile
    data = csv_like(20_000, seed=9)
    compressed = subprocess.run(["zstd", "-q", "-c"], input=data, check=True, capture_output=True).stdout
    encrypted = subprocess.run(
        ["age", *(["-a"] if armor else []), "-r", key.public], input=compressed, check=True, capture_output=True
    ).stdout
    identities = load_identities(path.read_text())
    sink = WriteOnlySink()
    read_stream(io.BytesIO(encrypted), sink, PipelineSpec("zstd", None, "age", (key.public,)), identities=identities)
    assert sink.data == data


# --- damage is always reported, before read_stream returns ----------------------------------------

SMALL = csv_like(30, seed=11) + bytes(range(256))


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
def test_any_flipped_stored_byte_fails_against_the_manifest(compression: str, encryption: str, key: AgeKey) -> None:
    spec = make_spec(compression, encryption, key)
    stored, written = store(SMALL, spec)
    for pos in range(len(stored)):
        damaged = bytearray(stored)
        damaged[pos] ^= 0x10
        with pytest.raises(IntegrityError):
            restore(bytes(damaged), spec, key, expected=written)


@pytest.mark.parametrize(("compression", "encryption"), SELF_CHECKING)
def test_flipped_byte_without_manifest_never_restores_different_bytes(
    compression: str, encryption: str, key: AgeKey
) -> None:
    spec = make_spec(compression, encryption, key)
    stored, _ = store(SMALL, spec)
    raised = 0
    for pos in range(len(stored)):
        damaged = bytearray(stored)
        damaged[pos] ^= 0x01
        try:
            restored, _ = restore(bytes(damaged), spec, key)
        except IntegrityError:
            raised += 1
        else:
            # Only header fields that do not affect the content (zstd window size, gzip mtime/OS)
            # may change unnoticed; the restored bytes must still be exactly right.
            assert restored == SMALL, f"flip at {pos} restored different bytes silently"
    if encryption == "age":
        assert raised == len(stored)  # age authenticates header and every payload byte
    else:
        assert raised >= len(stored) - 10


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
def test_every_truncation_fails_against_the_manifest(compression: str, encryption: str, key: AgeKey) -> None:
    spec = make_spec(compression, encryption, key)
    stored, written = store(SMALL, spec)
    for length in range(len(stored)):
        with pytest.raises(IntegrityError, match=r"^truncated: the stored object has \d+ bytes"):
            restore(stored[:length], spec, key, expected=written)


@pytest.mark.parametrize(("compression", "encryption"), SELF_CHECKING)
def test_every_truncation_fails_by_the_format_alone(compression: str, encryption: str, key: AgeKey) -> None:
    spec = make_spec(compression, encryption, key)
    stored, _ = store(SMALL, spec)
    for length in range(len(stored)):
        with pytest.raises(IntegrityError) as caught:
            restore(stored[:length], spec, key)
        assert "truncated" in str(caught.value)


def test_uncompressed_plaintext_truncation_is_only_caught_with_the_manifest(key: AgeKey) -> None:
    spec = make_spec("none", "none", key)
    stored, written = store(SMALL, spec)
    restored, result = restore(stored[:-1], spec, key)  # the format has nothing to check...
    assert result.stored_size == len(SMALL) - 1
    with pytest.raises(IntegrityError, match="truncated"):  # ...the manifest has
        restore(stored[:-1], spec, key, expected=written)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_age_stream_cut_at_chunk_boundaries_is_detected(compression: str, key: AgeKey) -> None:
    # Dropping whole 64 KiB chunks leaves every remaining chunk intact: only age's "last chunk"
    # flag can tell, so cut exactly at (and next to) the chunk boundaries.
    data = os.urandom(4 * 65536 + 1000)
    spec = make_spec(compression, "age", key)
    stored, _ = store(data, spec)
    payload_start = stored.index(b"\n", stored.index(b"\n---")+ 1) + 1 + 16  # header, then 16-byte nonce
    boundaries = range(payload_start, len(stored), AGE_HEADER_AND_CHUNK)
    assert len(boundaries) >= 4
    cuts = {b + d for b in boundaries for d in (-1, 0, 1)} | {payload_start - 16, len(stored) - 1}
    for cut in sorted(c for c in cuts if 0 < c < len(stored)):
        with pytest.raises(IntegrityError, match="truncated"):
            restore(stored[:cut], spec, key)


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
def test_bytes_appended_to_a_stored_object_are_detected(compression: str, encryption: str, key: AgeKey) -> None:
    spec = make_spec(compression, encryption, key)
    stored, written = store(SMALL, spec)
    extended = stored + b"\x00garbage"
    sink = WriteOnlySink()
    with pytest.raises(IntegrityError, match="longer than"):
        read_stream(io.BytesIO(extended), sink, spec, identities=[key.secret], expected=written, chunk_size=len(stored))
    assert len(sink.data) <= len(SMALL)  # stopped before the extra bytes reached the sink
    if (compression, encryption) != ("none", "none"):
        with pytest.raises(IntegrityError):
            restore(extended, spec, key)


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
def test_stored_checksum_mismatch_is_named(compression: str, encryption: str, key: AgeKey) -> None:
    spec = make_spec(compression, encryption, key)
    stored, written = store(SMALL, spec)
    with pytest.raises(IntegrityError, match="^checksum mismatch of stored bytes"):
        restore(stored, spec, key, expected=replace(written, stored_sha256="0" * 64))


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
@pytest.mark.parametrize("field", ["raw_sha256", "raw_size"])
def test_raw_mismatch_with_manifest_is_named(compression: str, encryption: str, field: str, key: AgeKey) -> None:
    spec = make_spec(compression, encryption, key)
    stored, written = store(SMALL, spec)
    if field == "raw_sha256":
        wrong = replace(written, raw_sha256="f" * 64)
    else:
        wrong = replace(written, raw_size=written.raw_size + 1)
    with pytest.raises(IntegrityError, match="^restored bytes do not match the manifest"):
        restore(stored, spec, key, expected=wrong)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_wrong_identity_is_reported_without_revealing_any_secret(compression: str, key: AgeKey) -> None:
    spec = make_spec(compression, "age", key)
    stored, written = store(SMALL, spec)
    wrong = new_key()
    with pytest.raises(IntegrityError) as caught:
        read_stream(io.BytesIO(stored), WriteOnlySink(), spec, identities=[wrong.secret], expected=written)
    error = caught.value
    assert str(error).startswith("cannot decrypt with the given identity")
    assert error.hint is not None and key.public in error.hint  # public: says which key is needed
    rendered = "".join(traceback.format_exception(error)) + repr(error) + error.hint
    for secret in (wrong.secret, key.secret):
        assert secret not in rendered
        assert secret.lower() not in rendered.lower()
        assert secret[len("AGE-SECRET-KEY-1") :][:12] not in rendered.upper()


def test_unparsable_identity_is_a_config_error_that_does_not_echo_it(key: AgeKey) -> None:
    spec = make_spec("zstd", "age", key)
    stored, _ = store(SMALL, spec)
    damaged = key.secret[:-6] + "QQQQQQ"
    with pytest.raises(ConfigError) as caught:
        read_stream(io.BytesIO(stored), WriteOnlySink(), spec, identities=[damaged])
    assert "identity #1" in str(caught.value)
    assert damaged not in str(caught.value) and damaged[16:30] not in str(caught.value)
    with pytest.raises(ConfigError, match="no identity"):
        read_stream(io.BytesIO(stored), WriteOnlySink(), spec)
    with pytest.raises(ConfigError, match="public key"):
        read_stream(io.BytesIO(stored), WriteOnlySink(), spec, identities=[key.public])


# --- errors of the caller's streams are not disguised ----------------------------------------------


class FailingSource:
    def __init__(self, data: bytes, fail_after: int) -> None:
        self._buf = io.BytesIO(data)
        self._fail_after = fail_after

    def read(self, size: int = -1) -> bytes:
        if self._buf.tell() >= self._fail_after:
            raise StorageError("s3: connection reset while reading backups/x")
        return self._buf.read(min(size, 4096))


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
def test_source_errors_propagate_unchanged(compression: str, encryption: str, key: AgeKey) -> None:
    spec = make_spec(compression, encryption, key)
    data = csv_like(5000)
    with pytest.raises(StorageError, match="connection reset"):
        write_stream(FailingSource(data, 50_000), io.BytesIO(), spec)
    stored, _ = store(data, spec)
    with pytest.raises(StorageError, match="connection reset"):
        read_stream(FailingSource(stored, len(stored) // 2), WriteOnlySink(), spec, identities=[key.secret])


class DeadPipe:
    def write(self, data: bytes) -> int:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
def test_a_dying_restore_sink_is_not_reported_as_corruption(compression: str, encryption: str, key: AgeKey) -> None:
    spec = make_spec(compression, encryption, key)
    stored, _ = store(csv_like(5000), spec)
    with pytest.raises(BrokenPipeError):
        read_stream(io.BytesIO(stored), DeadPipe(), spec, identities=[key.secret])
    with pytest.raises(BrokenPipeError):
        write_stream(io.BytesIO(b"x" * 100_000), DeadPipe(), spec)


class FailsOnWrite:
    """A sink that fails on its n-th write: a disk filling up or an upload dying at the end."""

    def __init__(self, fail_on: int) -> None:
        self.writes = 0
        self._fail_on = fail_on

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes == self._fail_on:
            raise OSError(28, "No space left on device")
        return len(data)


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
def test_a_sink_failing_on_its_last_write_fails_write_stream(compression: str, encryption: str, key: AgeKey) -> None:
    # pyrage 1.4 swallows an error from the final write of an age stream; the pipeline must not.
    spec = make_spec(compression, encryption, key)
    data = csv_like(20_000)
    counter = FailsOnWrite(0)
    write_stream(io.BytesIO(data), counter, spec)
    assert counter.writes >= 1
    with pytest.raises(OSError, match="No space left"):
        write_stream(io.BytesIO(data), FailsOnWrite(counter.writes), spec)


class FailsOnce:
    """A stream whose n-th call fails while the calls after it would succeed: a full disk that a
    later, smaller write fits on again, or Ctrl-C landing in one read or write."""

    def __init__(self, exc: BaseException, fail_on: int, data: bytes = b"") -> None:
        self.exc = exc
        self.calls = 0
        self.calls_after_failure = 0
        self._fail_on = fail_on
        self._buf = io.BytesIO(data)

    def _call(self) -> None:
        self.calls += 1
        if self.calls == self._fail_on:
            raise self.exc
        if self.calls > self._fail_on:
            self.calls_after_failure += 1

    def write(self, data: bytes) -> int:
        self._call()
        return len(data)

    def read(self, size: int = -1) -> bytes:
        self._call()
        return self._buf.read(min(size, 8192))


def _once_failures() -> list[BaseException]:
    return [OSError(28, "No space left on device"), KeyboardInterrupt(), BrokenPipeError(32, "Broken pipe")]


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
@pytest.mark.parametrize("exc", _once_failures(), ids=lambda e: type(e).__name__)
def test_a_sink_failing_once_is_reported_as_itself_not_as_corruption(
    compression: str, encryption: str, exc: BaseException, key: AgeKey
) -> None:
    # Issue 8: a full spool disk or Ctrl-C during a restore came out as "corrupt compressed data":
    # pyrage writes on after a failed write, the chunk that failed is missing downstream, and the
    # decompressor's complaint about the gap replaced the real error.
    spec = make_spec(compression, encryption, key)
    stored, result = store(csv_like(20_000), spec)
    sink = FailsOnce(exc, fail_on=2)
    with pytest.raises(type(exc)) as raised:
        read_stream(io.BytesIO(stored), sink, spec, identities=[key.secret], expected=result, chunk_size=16384)
    assert raised.value is exc
    assert sink.calls_after_failure == 0  # nothing after the gap reached the sink


@pytest.mark.parametrize(("compression", "encryption"), COMBOS)
@pytest.mark.parametrize("exc", _once_failures()[:2], ids=lambda e: type(e).__name__)
def test_a_source_failing_once_is_reported_as_itself(compression: str, encryption: str, exc: BaseException, key: AgeKey) -> None:
    spec = make_spec(compression, encryption, key)
    data = csv_like(20_000)
    stored, result = store(data, spec)
    with pytest.raises(type(exc)) as raised:
        read_stream(FailsOnce(exc, 3, stored), WriteOnlySink(), spec, identities=[key.secret], expected=result)
    assert raised.value is exc
    with pytest.raises(type(exc)) as raised:
        write_stream(FailsOnce(exc, 3, data), io.BytesIO(), spec)
    assert raised.value is exc


# --- bounded memory ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("compression", "total"), [("zstd", 256 << 20), ("gzip", 64 << 20)])
def test_highly_compressed_data_is_restored_in_bounded_pieces(compression: str, total: int, key: AgeKey) -> None:
    # Zeros compress ~30000:1 with zstd: a decoder that returns "everything for this input" would
    # hold the whole expansion in memory.
    spec = make_spec(compression, "none", key)
    stored_sink = io.BytesIO()
    written = write_stream(ZeroReader(total), stored_sink, spec)
    stored = stored_sink.getvalue()
    assert len(stored) < total // 500
    sink = CountingSink()
    read_stream(io.BytesIO(stored), sink, spec, expected=written, chunk_size=1 << 20)
    assert sink.size == total
    assert 0 < sink.largest_write <= 1 << 20


MEMORY_PROBE = textwrap.dedent(
    """
    import hashlib, io, json, os, resource, sys, threading
    import pyrage
    from pgvault.pipeline import PipelineSpec, read_stream, write_stream

    threads, total = int(sys.argv[1]), int(sys.argv[2])
    identity = pyrage.x25519.Identity.generate()
    spec = PipelineSpec("zstd", 3, "age", (str(identity.to_public()),))
    block = b"".join(b"%d\\tcustomer %d\\t%d.%02d\\tsome status text %d\\n" % (i, i * 7919 % 100003, i % 977, i % 100, i % 13)
                     for i in range(100_000))

    class Source:
        def __init__(self):
            self.left, self.offset, self.sha = total, 0, hashlib.sha256()
        def read(self, n):
            n = min(n, self.left, len(block) - self.offset)
            data = block[self.offset:self.offset + n]
            self.offset = (self.offset + n) % len(block)
            self.left -= n
            self.sha.update(data)
            return data

    class Sink:
        def __init__(self):
            self.size, self.sha = 0, hashlib.sha256()
        def write(self, data):
            self.size += len(data); self.sha.update(data)

    # Warm up so shared libraries and first-use allocations are in the baseline.
    write_stream(io.BytesIO(block[: 1 << 20]), Sink(), spec, threads=threads)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    source, sink = Source(), Sink()
    r, w = os.pipe()
    def produce():
        with os.fdopen(w, "wb") as out:
            write_stream(source, out, spec, threads=threads)
    producer = threading.Thread(target=produce)
    producer.start()
    with os.fdopen(r, "rb", buffering=0) as stored:
        read_stream(stored, sink, spec, identities=[str(identity)])
    producer.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_kib": peak - baseline, "size": sink.size,
                      "same": sink.sha.hexdigest() == source.sha.hexdigest()}))
    """
)


@pytest.mark.parametrize("threads", [0, 2])
def test_200mb_through_zstd_and_age_both_ways_keeps_rss_flat(threads: int) -> None:
    total = 200 * 1000 * 1000
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(threads), str(total)], check=True, capture_output=True, text=True, timeout=300
    )
    report = json.loads(done.stdout)
    assert report["size"] == total and report["same"]
    assert report["growth_kib"] < 100 * 1024, f"peak RSS grew by {report['growth_kib'] / 1024:.1f} MiB"


# --- the spec ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compression", "encryption", "suffix"),
    [("zstd", "none", ".zst"), ("zstd", "age", ".zst.age"), ("gzip", "none", ".gz"), ("gzip", "age", ".gz.age"),
     ("none", "none", ""), ("none", "age", ".age")],
)
def test_suffix_names_the_stages_in_order(compression: str, encryption: str, suffix: str, key: AgeKey) -> None:
    assert make_spec(compression, encryption, key).suffix() == suffix


def test_suffix_of_unknown_codec_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown compression 'lz4'"):
        PipelineSpec("lz4").suffix()


def test_validate_lists_every_problem_at_once() -> None:
    problems = PipelineSpec("lz4", 5, "rot13", ("age1notakey", "hello")).validate()
    assert len(problems) == 4
    assert problems[0].startswith("unknown compression 'lz4'")
    assert problems[1].startswith("unknown encryption 'rot13'")
    assert problems[2].startswith("recipient #1 (age1notakey...) is not a valid")
    assert problems[3].startswith("recipient #2 is not a valid")

    problems = PipelineSpec("zstd", 23, "age", ()).validate()
    assert problems == [
        "zstd level must be between 1 and 22 (got 23)",
        "encryption is age but no recipients are given: add at least one age public key (age1...)",
    ]
    assert PipelineSpec("gzip", 10).validate() == ["gzip level must be between 0 and 9 (got 10)"]
    assert PipelineSpec("none", 3).validate() == ["compression 'none' takes no level (got 3); remove the level"]
    assert PipelineSpec("zstd", True).validate() == ["compression level must be an integer or unset (got True)"]
    assert PipelineSpec("zstd", None, "none", (new_key().public,)).validate() == [
        "recipients are given but encryption is none: set encryption to age or remove the recipients"
    ]
    assert PipelineSpec("zstd", None, "age", "age1abc").validate() == ["recipients must be a list of public keys"]  # type: ignore[arg-type]


def test_validate_accepts_good_specs(key: AgeKey) -> None:
    ssh_ed25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFRJdWQbc095JBfXcYyqW3vPVsC4BpgkZs04tB4J8u9c ops@example"
    for spec in [
        PipelineSpec(),
        PipelineSpec("zstd", 1),
        PipelineSpec("zstd", 22, "age", (key.public, ssh_ed25519)),
        PipelineSpec("gzip", 0),
        PipelineSpec("none", None, "age", [key.public]),  # type: ignore[arg-type]  # list from YAML
    ]:
        assert spec.validate() == [], spec
    assert PipelineSpec("none", None, "age", [key.public]).recipients == (key.public,)  # type: ignore[arg-type]


def test_a_secret_key_given_as_recipient_is_refused_without_echoing_it(key: AgeKey) -> None:
    problems = PipelineSpec("zstd", None, "age", (key.secret,)).validate()
    assert problems == [
        "recipient #1 is a secret key, not a public key: configure its public key "
        "(age-keygen -y key.txt) and keep the secret key off the backup host"
    ]
    with pytest.raises(ConfigError) as caught:
        write_stream(io.BytesIO(b"x"), io.BytesIO(), PipelineSpec("zstd", None, "age", (key.secret,)))
    assert key.secret not in str(caught.value)


def test_write_stream_refuses_an_invalid_spec_listing_every_problem() -> None:
    spec = PipelineSpec("brotli", 99, "aes", ())
    sink = io.BytesIO()
    with pytest.raises(ConfigError) as caught:
        write_stream(io.BytesIO(b"data"), sink, spec)
    assert caught.value.problems == spec.validate() and len(caught.value.problems) == 2
    assert sink.getvalue() == b""


def test_read_stream_needs_only_what_decoding_needs(key: AgeKey) -> None:
    # A recipient this version cannot parse (e.g. a plugin key) must not block a restore.
    recorded = PipelineSpec("zstd", 3, "age", (key.public,))
    stored, written = store(SMALL, recorded)
    from_manifest = PipelineSpec("zstd", 3, "age", ("age1yubikey1qwerty",))
    assert restore(stored, from_manifest, key, expected=written)[0] == SMALL
    with pytest.raises(IntegrityError, match="unknown compression 'lz4'"):
        restore(stored, PipelineSpec("lz4", None, "age", ()), key)


specs = st.builds(
    PipelineSpec,
    compression=st.sampled_from(COMPRESSIONS),
    level=st.none() | st.integers(1, 9),
    encryption=st.sampled_from(ENCRYPTIONS),
    recipients=st.lists(st.sampled_from([new_key().public, new_key().public]), max_size=2).map(tuple),
)


@given(spec=specs)
def test_spec_json_round_trips(spec: PipelineSpec) -> None:
    encoded = json.dumps(spec.to_json())
    assert PipelineSpec.from_json(json.loads(encoded)) == spec
    assert set(spec.to_json()) == {"compression", "level", "encryption", "recipients"}


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"encryption": "none"},
        {"compression": "zstd", "encryption": None},
        {"compression": "zstd", "encryption": "none", "level": "3"},
        {"compression": "zstd", "encryption": "none", "level": True},
        {"compression": "zstd", "encryption": "age", "recipients": "age1x"},
    ],
)
def test_malformed_spec_json_is_an_integrity_error(bad: object) -> None:
    with pytest.raises(IntegrityError, match="pipeline spec"):
        PipelineSpec.from_json(bad)  # type: ignore[arg-type]


def test_spec_json_ignores_unknown_keys_from_newer_versions() -> None:
    spec = PipelineSpec.from_json({"compression": "gzip", "encryption": "none", "level": 5, "future": 1})
    assert spec == PipelineSpec("gzip", 5, "none", ())


@given(
    result=st.builds(
        StreamResult,
        raw_size=st.integers(0, 1 << 50),
        raw_sha256=st.binary(min_size=32, max_size=32).map(bytes.hex),
        stored_size=st.integers(0, 1 << 50),
        stored_sha256=st.binary(min_size=32, max_size=32).map(bytes.hex),
    )
)
def test_stream_result_json_round_trips(result: StreamResult) -> None:
    assert StreamResult.from_json(json.loads(json.dumps(result.to_json()))) == result


@pytest.mark.parametrize(
    "bad",
    [
        {"raw_size": -1, "raw_sha256": "0" * 64, "stored_size": 1, "stored_sha256": "0" * 64},
        {"raw_size": 1, "raw_sha256": "0" * 63, "stored_size": 1, "stored_sha256": "0" * 64},
        {"raw_size": 1, "raw_sha256": "0" * 64, "stored_size": "1", "stored_sha256": "0" * 64},
        {"raw_size": 1, "raw_sha256": "0" * 64, "stored_size": 1, "stored_sha256": "A" * 64},
        {"raw_size": 1},
    ],
)
def test_malformed_stream_result_json_is_an_integrity_error(bad: dict[str, object]) -> None:
    with pytest.raises(IntegrityError, match="malformed stream checksums"):
        StreamResult.from_json(bad)


# --- identity files ------------------------------------------------------------------------------------


def test_load_identities_reads_an_age_keygen_file(keyfile: tuple[Path, AgeKey]) -> None:
    path, key = keyfile
    text = path.read_text()
    assert text.startswith("# created:")  # comments are really there and skipped
    assert load_identities(text) == [key.secret]
    stored, _ = store(SMALL, make_spec("zstd", "age", key))
    assert restore(stored, make_spec("zstd", "age", key), key)[0] == SMALL


def test_load_identities_keeps_every_key_and_skips_comments() -> None:
    a, b = new_key(), new_key()
    text = f"# primary\n{a.secret}\n\n   # old key, still needed for last year's backups\r\n{b.secret}\n"
    assert load_identities(text) == [a.secret, b.secret]
    stored, _ = store(SMALL, PipelineSpec("none", None, "age", (b.public,)))
    sink = WriteOnlySink()
    read_stream(io.BytesIO(stored), sink, PipelineSpec("none", None, "age", ()), identities=load_identities(text))
    assert sink.data == SMALL


def test_load_identities_rejects_junk_by_line_number_without_quoting_it() -> None:
    a = new_key()
    junk = "password=hunter2-very-secret"
    with pytest.raises(ConfigError) as caught:
        load_identities(f"{a.secret}\n{junk}\n{a.secret[:-4]}zzzz\n")
    assert caught.value.problems == [
        "line 2 of the identity file is neither a comment nor an age secret key",
        "line 3 of the identity file is a damaged age secret key",
    ]
    assert junk not in str(caught.value) and a.secret[20:] not in str(caught.value)


@pytest.mark.parametrize("text", ["", "# only a comment\n\n", "   \n"])
def test_load_identities_without_any_key_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="contains no age secret key") as caught:
        load_identities(text)
    assert caught.value.hint is not None and "age-keygen" in caught.value.hint


def test_tuning_arguments_are_checked(key: AgeKey) -> None:
    with pytest.raises(ValueError, match="threads"):
        write_stream(io.BytesIO(b""), io.BytesIO(), PipelineSpec(), threads=-1)
    with pytest.raises(ValueError, match="chunk_size"):
        read_stream(io.BytesIO(b""), io.BytesIO(), PipelineSpec(), chunk_size=0)
