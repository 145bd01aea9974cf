"""The pipeline as file objects: :func:`open_writer` and :func:`open_reader`, and the pumps
:func:`write_stream` / :func:`read_stream` built on them.

::

    open_writer:  write(raw) → digest(raw) → compress → encrypt → digest(stored) → sink.write
    open_reader:  source.read → digest(stored) → decrypt → decompress → digest(raw) → read()

A producer that *writes* (tarfile, a dump) writes into an ``open_writer`` file in its own thread,
and a consumer that *reads* (tarfile again) reads from an ``open_reader`` file: no pipe and no
thread between the two ends, as with rohmu's file_writer/file_reader or pgBackRest's filter
groups.  Every call into the caller's sink or source happens in the caller's thread, during the
``write``/``close`` or ``read`` that needs it.  Memory is bounded by ``chunk_size`` plus the
codecs' fixed windows, whatever the stream length and the compression ratio.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from pgvault.errors import ConfigError, IntegrityError
from pgvault.pipeline.compress import CODECS, Codec, get_codec, unknown_codec_problem
from pgvault.pipeline.digest import DigestReader, DigestWriter, PullStage, PushStage, SupportsRead, SupportsWrite
from pgvault.pipeline.encryption import SCHEMES, EncryptionScheme, get_scheme, unknown_scheme_problem
from pgvault.pipeline.spec import PipelineSpec, StreamResult

__all__ = ["PipelineWriter", "PipelineReader", "open_writer", "open_reader", "write_stream", "read_stream"]

_CHUNK = 1 << 20


# --- writing -----------------------------------------------------------------------------------


#: zstd workers' job size.  zstd's own default at level 3 is 8 MiB (four windows) per job: each
#: worker then holds several MiB in and out, and when the input ends up to threads x 8 MiB are still
#: to compress.  On a 704 MiB pg_dump archive at level 3 with 2 workers, 1 MiB jobs stored 0.02%
#: fewer bytes for the same CPU, and the end of the stream took 7-15 ms instead of 75-110 ms.
ZSTD_JOB_SIZE = 1 << 20


def open_writer(sink: SupportsWrite, spec: PipelineSpec, *, threads: int = 0, chunk_size: int = _CHUNK,
                job_size: int = ZSTD_JOB_SIZE) -> PipelineWriter:
    """A writable binary file: the raw bytes written into it reach ``sink.write`` in their stored
    form (``spec``'s compression, then encryption).

    ``close()`` pushes the codec's and scheme's trailers into the sink; after it, ``result`` is
    the :class:`StreamResult`.  Neither closes nor commits ``sink``: publishing the object (and
    then the manifest) is the caller's decision, taken only after ``close()`` returned.  Used as
    a context manager it closes on normal exit and :meth:`~PipelineWriter.abort`\\ s on an
    exception, so a failed producer never finishes a stream.  ``threads`` is the number of zstd
    worker threads: 0 compresses in the writing thread, N >= 1 hands compression to N workers so
    it overlaps with hashing and encryption (ignored by other codecs); ``job_size`` (bytes, 0 =
    zstd's default) is how much each worker takes at a time, which bounds their memory and the
    work left when the input ends (:data:`ZSTD_JOB_SIZE`).  Small
    writes are collected into ``chunk_size`` pieces before they pass the stages.

    Raises :class:`ConfigError` for an invalid spec (every problem listed).  Exceptions from
    ``sink`` propagate unchanged from the ``write``/``close`` that caused them; the writer is then
    broken (aborted; later calls raise the same exception again).
    """
    problems = spec.validate()
    if problems:
        raise ConfigError(problems)
    _check_tuning(chunk_size, threads)
    return PipelineWriter(sink, get_codec(spec.compression), get_scheme(spec.encryption), spec, threads, chunk_size,
                          job_size)


class PipelineWriter(io.RawIOBase):
    """See :func:`open_writer`."""

    def __init__(self, sink: SupportsWrite, codec: Codec, scheme: EncryptionScheme, spec: PipelineSpec, threads: int,
                 chunk_size: int, job_size: int = 0) -> None:
        super().__init__()
        self._chunk_size = chunk_size
        self._pending = bytearray()  # small writes, collected up to chunk_size
        self._result: StreamResult | None = None
        self._failure: BaseException | None = None
        self._raw = DigestWriter(sink)
        self._stored: DigestWriter | None = None
        self._stages: list[PushStage] = []  # in push order
        if not (codec.name == "none" and scheme.identity):
            # Otherwise the stored bytes are the raw bytes: hashed once, not twice.
            self._stored = DigestWriter(sink)
            encryptor = scheme.encrypting_writer(self._stored, spec.recipients, chunk_size=chunk_size)
            self._stages = [codec.compressing_writer(encryptor, level=spec.level, threads=threads, job_size=job_size),
                            encryptor]
            self._raw = DigestWriter(self._stages[0])

    def writable(self) -> bool:
        return True

    def write(self, data: Any, /) -> int:
        """Take all of ``data`` (any bytes-like object); returns its length."""
        if self._failure is not None:
            raise self._failure
        if self.closed:
            raise ValueError("write to a closed pipeline writer")
        size = len(data)
        if size >= self._chunk_size:
            if self._pending:  # what was collected goes first, as it is
                self._push_pending()
            self._push(data)
        else:
            self._pending += data
            if len(self._pending) >= self._chunk_size:
                self._push_pending()
        return size

    def _push_pending(self) -> None:
        # Handed on whole and replaced, not copied: the stages may keep what they are given.
        pending, self._pending = self._pending, bytearray()
        self._push(pending)

    def _push(self, data: Any) -> None:
        try:
            self._raw.write(data)
        except BaseException as exc:
            self._fail(exc)
            raise

    def close(self) -> None:
        """Finish the stream into the sink (trailers included) and make ``result`` available.

        A second call does nothing; once a write or close failed, this raises that failure."""
        if self._failure is not None:
            super().close()
            raise self._failure
        if self.closed:
            return
        try:
            if self._pending:
                self._push_pending()
            for stage in self._stages:
                stage.finish()
        except BaseException as exc:
            if self._failure is None:
                self._fail(exc)
            raise
        finally:
            super().close()
        raw, stored = self._raw, self._stored or self._raw
        self._result = StreamResult(raw.size, raw.hexdigest(), stored.size, stored.hexdigest())

    def abort(self) -> None:
        """Drop the stream: nothing more reaches the sink and ``result`` stays unavailable (what
        already reached the sink is the caller's to discard).  A second call does nothing."""
        if self.closed:
            return
        if self._failure is None:
            self._abort_stages()
        super().close()

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._abort_stages()

    def _abort_stages(self) -> None:
        for stage in self._stages:
            stage.abort()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # Never finish a stream nobody closed (io's default): that would present a cut-off stream
        # as complete.  Only release its stages.
        try:
            self.abort()
        except Exception:  # noqa: BLE001 - nothing to report to during garbage collection
            pass

    @property
    def result(self) -> StreamResult:
        """Sizes and SHA-256s of the raw and stored bytes; available once :meth:`close` returned."""
        if self._result is None:
            raise ValueError("a pipeline writer's result is known only after close() returned")
        return self._result


# --- reading -----------------------------------------------------------------------------------


def open_reader(
    source: SupportsRead,
    spec: PipelineSpec,
    *,
    identities: Sequence[str] = (),
    expected: StreamResult | None = None,
    chunk_size: int = _CHUNK,
) -> PipelineReader:
    """A readable binary file returning the raw bytes of the stored stream in ``source``.

    ``identities`` are secret-key strings (see :func:`~pgvault.pipeline.load_identities`), needed
    only when the spec's encryption scheme ``needs_identities`` (age).  With ``expected`` (the
    manifest's :class:`StreamResult`) the stored and raw sizes and SHA-256s are compared at the
    end; a stored object longer than recorded fails as soon as the extra byte arrives.  Without
    it, only what the formats themselves protect is checked (zstd frame checksums, gzip CRC, age
    authentication): an uncompressed, unencrypted stream then has no protection at all.

    Every detected problem raises :class:`IntegrityError` from a ``read`` - at the latest from
    the one that would have returned the end of the stream, so a consumer that reads to ``b""``
    has seen it: corrupt compressed data, truncation, an identity that does not match, stored or
    raw bytes that differ from ``expected`` - with a message saying which, never containing key
    material.  Bytes returned before the damage was found are not retracted.  After the end,
    ``result`` is the observed :class:`StreamResult`; a reader closed before its end has verified
    nothing.  Exceptions from ``source`` propagate unchanged; ``failure`` then names the exception
    that ended the stream (later reads raise it again), so a consumer wrapping the reader (tarfile)
    can tell the stream's failures from its own.

    Raises :class:`ConfigError` at once for missing or unparsable identities, and
    :class:`IntegrityError` when the spec names stages this version does not know.
    """
    _check_tuning(chunk_size, 0)
    codec, scheme = _stages_for_reading(spec)
    keys = scheme.prepare_identities(identities)
    return PipelineReader(source, codec, scheme, keys, spec, expected, chunk_size)


class PipelineReader(io.RawIOBase):
    """See :func:`open_reader`."""

    def __init__(self, source: SupportsRead, codec: Codec, scheme: EncryptionScheme, keys: Any, spec: PipelineSpec,
                 expected: StreamResult | None, chunk_size: int) -> None:
        super().__init__()
        self._chunk_size = chunk_size
        self._expected = expected
        self._buf = b""
        self._pos = 0
        self._result: StreamResult | None = None
        self.failure: BaseException | None = None
        self._stored = DigestReader(source, max_size=expected.stored_size if expected is not None else None)
        self._raw = self._stored  # the identity pipeline: stored bytes are the raw bytes, hashed once
        self._stages: list[PullStage] = []
        if not (codec.name == "none" and scheme.identity):
            decryptor = scheme.decrypting_reader(self._stored, keys, recipients=spec.recipients, chunk_size=chunk_size)
            self._stages = [codec.decompressing_reader(decryptor, chunk_size=chunk_size), decryptor]
            self._raw = DigestReader(self._stages[0])

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        """Up to ``size`` raw bytes (all of them when negative); ``b""`` only at the verified end."""
        if size is None or size < 0:
            return self.readall()
        if self.closed:
            raise ValueError("read from a closed pipeline reader")
        if size == 0:
            return b""
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            if not self._fill():
                return b""
            buf, pos = self._buf, 0
        if pos == 0 and size >= len(buf):
            self._buf = b""
            return buf
        data = buf[pos : pos + size]
        self._pos = pos + len(data)
        return data

    def readinto(self, buffer: Any, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def _fill(self) -> bool:
        """Pull the next piece into the buffer; False at the (verified) end."""
        if self._result is not None:
            return False
        if self.failure is not None:
            raise self.failure
        try:
            data = self._raw.read(self._chunk_size)
            if data:
                self._buf, self._pos = data, 0
                return True
            self._result = self._finish()
            return False
        except BaseException as exc:
            failure = exc
            if isinstance(exc, IntegrityError) and self._stored.eof:
                # With the manifest's figures a short or altered object is named as such, which is
                # more useful than whatever the decoder tripped over first.
                mismatch = _stored_mismatch(self._stored, self._expected)
                if mismatch is not None:
                    failure = mismatch
        self.failure = failure
        self._release()
        raise failure  # outside the handler: not chained to what it explains

    def _finish(self) -> StreamResult:
        stored, raw, expected = self._stored, self._raw, self._expected
        if not stored.eof and stored.read(self._chunk_size):
            # Backstop: every stage reads its input to the end and rejects what follows its format.
            raise IntegrityError("corrupt: bytes follow the end of the stored stream")
        result = StreamResult(raw.size, raw.hexdigest(), stored.size, stored.hexdigest())
        if expected is not None:
            mismatch = _stored_mismatch(stored, expected)
            if mismatch is not None:
                raise mismatch
            if (result.raw_size, result.raw_sha256) != (expected.raw_size, expected.raw_sha256):
                # Stored bytes match but the restored ones do not: the manifest and the object
                # disagree about the pipeline (or a codec bug) - never restore that silently.
                raise IntegrityError(
                    f"restored bytes do not match the manifest: {result.raw_size} bytes with sha256 "
                    f"{result.raw_sha256}, expected {expected.raw_size} bytes with sha256 {expected.raw_sha256}"
                )
        self._release()
        return result

    def _release(self) -> None:
        stages, self._stages = self._stages, []
        for stage in stages:
            stage.close()

    def close(self) -> None:
        """Release the stages (the source stays the caller's); a second call does nothing."""
        if not self.closed:
            self._release()
            super().close()

    @property
    def result(self) -> StreamResult:
        """Sizes and SHA-256s of the stored and raw bytes; available once a read returned the end."""
        if self._result is None:
            raise ValueError("a pipeline reader's result is known only after it was read to the end")
        return self._result


# --- pumps -------------------------------------------------------------------------------------


def write_stream(
    source: SupportsRead,
    sink: SupportsWrite,
    spec: PipelineSpec,
    *,
    threads: int = 0,
    chunk_size: int = _CHUNK,
) -> StreamResult:
    """Pull ``source`` to EOF through :func:`open_writer` into ``sink.write``; the result.

    Does not close or commit ``sink``.  Raises :class:`ConfigError` for an invalid spec;
    exceptions from ``source`` and ``sink`` propagate unchanged.
    """
    with open_writer(sink, spec, threads=threads, chunk_size=chunk_size) as writer:
        _pump(source, writer, chunk_size)
    return writer.result


def read_stream(
    source: SupportsRead,
    sink: SupportsWrite,
    spec: PipelineSpec,
    *,
    identities: Sequence[str] = (),
    expected: StreamResult | None = None,
    chunk_size: int = _CHUNK,
) -> StreamResult:
    """Push the raw bytes of :func:`open_reader` into ``sink.write``; the verified result.

    Every problem :func:`open_reader` detects raises *before this returns*; the caller then kills
    ``pg_restore`` rather than closing its stdin.  A failing sink stops the stream at once and its
    exception is what this raises (the stream is then incomplete downstream, which is not damage
    of the stored bytes): nothing after the lost chunk reaches the sink.
    """
    with open_reader(source, spec, identities=identities, expected=expected, chunk_size=chunk_size) as reader:
        _pump(reader, sink, chunk_size)
        return reader.result


# --- helpers -----------------------------------------------------------------------------------


def _pump(source: SupportsRead, sink: SupportsWrite, chunk_size: int) -> None:
    """Copy ``source`` to ``sink`` in chunks until EOF."""
    read, write = source.read, sink.write
    while True:
        data = read(chunk_size)
        if not data:
            if data is None:
                # A non-blocking source with nothing available; the pipeline has no event loop
                # to wait on, so this is a caller bug rather than an end of stream.
                raise ValueError("pipeline sources must be blocking (read() returned None)")
            return
        write(data)


def _check_tuning(chunk_size: int, threads: int) -> None:
    # Programming errors of the caller, not user errors: config validation bounds these first.
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if threads < 0:
        raise ValueError(f"threads must be 0 (in-caller) or a worker count, got {threads}")


def _stages_for_reading(spec: PipelineSpec) -> tuple[Codec, EncryptionScheme]:
    # Only what decoding needs is checked: levels and recipients do not matter for a restore, and
    # a recorded recipient this version cannot parse must not block reading the backup.
    problems = []
    codec = CODECS.get(spec.compression) if isinstance(spec.compression, str) else None
    if codec is None:
        problems.append(unknown_codec_problem(spec.compression))
    scheme = SCHEMES.get(spec.encryption) if isinstance(spec.encryption, str) else None
    if scheme is None:
        problems.append(unknown_scheme_problem(spec.encryption))
    if codec is None or scheme is None or problems:
        raise IntegrityError(
            "cannot read the stored object: " + "; ".join(problems),
            hint="the manifest was written by a newer pgvault or is damaged",
        )
    return codec, scheme


def _stored_mismatch(stored: DigestReader, expected: StreamResult | None) -> IntegrityError | None:
    """Compare the complete stored stream with the manifest; None when it matches (or no manifest)."""
    if expected is None:
        return None
    if stored.size < expected.stored_size:
        return IntegrityError(
            f"truncated: the stored object has {stored.size} bytes, the manifest records {expected.stored_size}"
        )
    if stored.size > expected.stored_size:  # normally caught early by DigestReader(max_size=)
        return IntegrityError(
            f"stored object is longer than the {expected.stored_size} bytes recorded in the manifest ({stored.size})"
        )
    digest = stored.hexdigest()
    if digest != expected.stored_sha256:
        return IntegrityError(
            f"checksum mismatch of stored bytes: sha256 {digest}, the manifest records {expected.stored_sha256}",
            hint="the object was corrupted in the repository; restore from another backup",
        )
    return None
