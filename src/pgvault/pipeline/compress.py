"""Compression codecs, one registry keyed by the name recorded in manifests.

Each codec gives two stages (the shapes are in :mod:`pgvault.pipeline.digest`):

* a *push-style compressing writer* (:class:`PushStage`): ``write(raw)`` pushes the compressed
  bytes on into the next stage, ``finish()`` ends the frame / member;
* a *pull-style decompressing reader* (:class:`PullStage`): ``read(size)`` returns at most
  ``size`` restored bytes whatever the compression ratio, and at the end of its input raises
  :class:`~pgvault.errors.IntegrityError` when the input stopped inside a frame.  That last check
  is the whole point: neither zlib nor zstd complain about a stream that simply ends early, and a
  truncated object in a repository must never restore "successfully".

Output of each codec is the codec's standard file format (``zstd -d`` / ``gzip -d`` read it), so
an operator can undo it by hand when pgvault itself is unavailable.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from typing import IO, TYPE_CHECKING, Protocol, cast

from pgvault.errors import ConfigError, IntegrityError
from pgvault.pipeline.digest import (
    PassThroughReader,
    PassThroughWriter,
    PullStage,
    PushStage,
    SupportsRead,
    SupportsWrite,
)

if TYPE_CHECKING:
    import zstandard

# zstandard is imported by the zstd stages themselves, not with this module: the codec registry
# (names, suffixes, levels) is all that validating settings or a "not found" from ``wal fetch``
# needs, and each import is start-up time PostgreSQL waits for.

__all__ = ["Codec", "CODECS", "get_codec", "unknown_codec_problem"]


class Codec(ABC):
    """One compression format: its name, file suffix, levels and the two stream stages."""

    name: str = ""
    suffix: str = ""
    default_level: int | None = None
    min_level: int | None = None  # None/None: the codec takes no level
    max_level: int | None = None

    def level_problem(self, level: int) -> str | None:
        """Return a sentence describing why ``level`` is unusable, or None if it is fine."""
        if self.min_level is None or self.max_level is None:
            return f"compression {self.name!r} takes no level (got {level}); remove the level"
        if not self.min_level <= level <= self.max_level:
            return f"{self.name} level must be between {self.min_level} and {self.max_level} (got {level})"
        return None

    @abstractmethod
    def compressing_writer(self, sink: SupportsWrite, *, level: int | None, threads: int, job_size: int = 0) -> PushStage:
        """Return a stage that pushes the compressed form of what it is given into ``sink``
        (``threads`` and ``job_size``: see :func:`~pgvault.pipeline.open_writer`)."""

    @abstractmethod
    def decompressing_reader(self, source: SupportsRead, *, chunk_size: int) -> PullStage:
        """Return a stage whose ``read`` yields the restored form of what it pulls from ``source``
        (``chunk_size`` bytes at a time)."""


class _CompressObj(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


class _Compressor:
    """A push stage over a compressor object with ``compress(data)`` / ``flush()`` (zlib's)."""

    __slots__ = ("_cobj", "_sink")

    def __init__(self, cobj: _CompressObj, sink: SupportsWrite) -> None:
        self._cobj = cobj
        self._sink = sink

    def write(self, data: bytes, /) -> int:
        out = self._cobj.compress(data)
        if out:
            self._sink.write(out)
        return len(data)

    def finish(self) -> None:
        out = self._cobj.flush()
        if out:
            self._sink.write(out)

    def abort(self) -> None:
        return None  # nothing held beyond memory the collector frees (zstd's workers included)


# --- zstd -------------------------------------------------------------------------------------

_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE_MASK = 0xFFFFFFF0
_ZSTD_SKIPPABLE_MAGIC = 0x184D2A50
_FCS_SIZES = (0, 2, 4, 8)  # Frame_Content_Size field size by FCS flag (RFC 8878 3.1.1.1.1)
_DID_SIZES = (0, 1, 2, 4)  # Dictionary_ID field size by DID flag

# Tracker states: what the next header bytes are.
_MAGIC, _SKIP_SIZE, _DESCRIPTOR, _HEADER_REST, _BLOCK, _CHECKSUM = range(6)


class _ZstdFrameTracker:
    """Follows zstd frame and block *headers* (RFC 8878) to know whether the input ended on a
    frame boundary.

    python-zstandard's streaming decompressors accept a stream that stops in the middle of a
    frame without complaint, and the one API that reports ``eof`` (``decompressobj``) returns
    each call's whole output as one bytes object - a few KiB of compressed zeros (PostgreSQL
    relation files and recycled WAL segments have plenty) would expand to gigabytes in memory.
    So decompression stays with the bounded ``stream_writer`` and this tracker only skips over
    block bodies by their declared sizes: a handful of integer operations per 128 KiB block.
    It does no validation zstd itself does not do; zstd sees every byte first.
    """

    __slots__ = ("frames", "_state", "_need", "_header", "_skip", "_has_checksum")

    def __init__(self) -> None:
        self.frames = 0  # complete data frames seen (skippable frames are not counted)
        self._state = _MAGIC
        self._need = 4  # header bytes the current state needs
        self._header = bytearray()
        self._skip = 0  # body bytes still to pass over before the next header
        self._has_checksum = False

    @property
    def at_boundary(self) -> bool:
        """True when the bytes seen so far end exactly after a complete frame (or are empty)."""
        return self._state == _MAGIC and not self._header and self._skip == 0

    def feed(self, data: bytes) -> None:
        """Advance over ``data``."""
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            step = min(self._need - len(self._header), end - pos)
            self._header += view[pos : pos + step]
            pos += step
            if len(self._header) == self._need:
                self._advance(bytes(self._header))
                self._header.clear()

    def _advance(self, header: bytes) -> None:
        state = self._state
        if state == _MAGIC:
            magic = int.from_bytes(header, "little")
            if magic == _ZSTD_MAGIC:
                self._state, self._need = _DESCRIPTOR, 1
            elif magic & _ZSTD_SKIPPABLE_MASK == _ZSTD_SKIPPABLE_MAGIC:
                self._state, self._need = _SKIP_SIZE, 4
            else:
                raise IntegrityError("corrupt compressed data: not a zstd frame where one should start")
        elif state == _SKIP_SIZE:
            self._skip = int.from_bytes(header, "little")
            self._state, self._need = _MAGIC, 4
        elif state == _DESCRIPTOR:
            fhd = header[0]
            single_segment = (fhd >> 5) & 1
            fcs_size = _FCS_SIZES[fhd >> 6] or single_segment  # flag 0 + single segment: 1 byte
            self._has_checksum = bool((fhd >> 2) & 1)
            rest = (0 if single_segment else 1) + _DID_SIZES[fhd & 3] + fcs_size
            if rest:
                self._state, self._need = _HEADER_REST, rest
            else:
                self._state, self._need = _BLOCK, 3
        elif state == _HEADER_REST:
            self._state, self._need = _BLOCK, 3
        elif state == _BLOCK:
            block = int.from_bytes(header, "little")
            block_type = (block >> 1) & 3
            if block_type == 3:
                raise IntegrityError("corrupt compressed data: reserved zstd block type")
            self._skip = 1 if block_type == 1 else block >> 3  # an RLE block stores one byte
            if block & 1:  # last block of the frame
                if self._has_checksum:
                    self._state, self._need = _CHECKSUM, 4
                else:
                    self.frames += 1
                    self._state, self._need = _MAGIC, 4
        else:  # _CHECKSUM
            self.frames += 1
            self._state, self._need = _MAGIC, 4


class _FrameTrackingSource:
    """The compressed source as zstd pulls it, every byte shown to the frame tracker on the way."""

    __slots__ = ("_source", "frames", "offset", "eof")

    def __init__(self, source: SupportsRead) -> None:
        self._source = source
        self.frames = _ZstdFrameTracker()
        self.offset = 0
        self.eof = False

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        if data:
            self.frames.feed(data)
            self.offset += len(data)
        else:
            self.eof = True
        return data


class _ZstdDecompressor:
    __slots__ = ("_source", "_reader", "_chunk_size", "_error")

    def __init__(self, source: SupportsRead, chunk_size: int) -> None:
        import zstandard

        self._error = zstandard.ZstdError
        self._source = _FrameTrackingSource(source)
        self._chunk_size = chunk_size
        # The reader decompresses at most what each read asks for (bounded memory whatever the
        # ratio) and goes on into the next frame, as `zstd -d` does with concatenated frames.
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], self._source), read_size=chunk_size, read_across_frames=True, closefd=False
        )

    def read(self, size: int = -1, /) -> bytes:
        try:
            data = self._reader.read(size if size >= 0 else self._chunk_size)
        except self._error as exc:
            # zstd's messages ("Restored data doesn't match checksum", "Data corruption detected")
            # are fixed strings about the data; they are safe and useful to show.
            raise IntegrityError(
                f"corrupt compressed data (zstd) within the first {self._source.offset} compressed bytes: {exc}"
            ) from exc
        if not data:
            self._finish()
        return data

    def _finish(self) -> None:
        source = self._source
        if not source.eof and source.read(self._chunk_size):
            raise IntegrityError(f"corrupt: bytes follow the end of the zstd stream after {source.offset} compressed bytes")
        if not source.frames.at_boundary:
            raise IntegrityError(f"truncated: the zstd stream ends inside a frame after {source.offset} compressed bytes")
        if source.frames.frames == 0:
            raise IntegrityError(f"truncated: no complete zstd frame in {source.offset} compressed bytes")

    def close(self) -> None:
        return None  # closefd=False: the source stays open; zstd's buffers go with the object


class _ZstdCompressor:
    # stream_writer hands each output buffer straight on (compressobj would join them first).
    __slots__ = ("_writer",)

    def __init__(self, cctx: zstandard.ZstdCompressor, sink: SupportsWrite) -> None:
        self._writer = cctx.stream_writer(cast(IO[bytes], sink), closefd=False)

    def write(self, data: bytes, /) -> int:
        self._writer.write(data)
        return len(data)

    def finish(self) -> None:
        import zstandard

        self._writer.flush(zstandard.FLUSH_FRAME)

    def abort(self) -> None:
        return None  # nothing held beyond memory the collector frees (zstd's workers included)


class _Zstd(Codec):
    name = "zstd"
    suffix = ".zst"
    default_level = 3
    min_level = 1
    max_level = 22

    def compressing_writer(self, sink: SupportsWrite, *, level: int | None, threads: int, job_size: int = 0) -> PushStage:
        # write_checksum: the frame carries a checksum of the content, so `zstd -d` alone detects
        # corruption even without pgvault's manifest.  threads=0 compresses in the calling thread;
        # N >= 1 runs N zstd workers that work while this thread hashes and encrypts.
        import zstandard

        level = self.default_level if level is None else level
        if threads and job_size:
            # zstd's workers each hold whole jobs in and out (by default several window sizes:
            # ~50 MiB per stream at level 3); a smaller job bounds that.
            params = zstandard.ZstdCompressionParameters.from_level(level, threads=threads, job_size=job_size,
                                                                     write_checksum=True)
            return _ZstdCompressor(zstandard.ZstdCompressor(compression_params=params), sink)
        cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
        return _ZstdCompressor(cctx, sink)

    def decompressing_reader(self, source: SupportsRead, *, chunk_size: int) -> PullStage:
        return _ZstdDecompressor(source, chunk_size)


# --- gzip -------------------------------------------------------------------------------------

_GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib: "add/expect a gzip header and trailer"


class _GzipDecompressor:
    __slots__ = ("_source", "_chunk_size", "_zlib", "_pending", "_more", "_members", "_in_member", "_offset")

    def __init__(self, source: SupportsRead, chunk_size: int) -> None:
        self._source = source
        self._chunk_size = chunk_size
        self._zlib = zlib.decompressobj(_GZIP_WBITS)
        self._pending = b""  # compressed bytes zlib has not consumed yet
        self._more = False  # the last call filled its output: zlib may hold more even without input
        self._members = 0
        self._in_member = False
        self._offset = 0

    def read(self, size: int = -1, /) -> bytes:
        cap = size if size > 0 else self._chunk_size  # max output per zlib call: bounds memory whatever the ratio
        while True:
            if self._pending or self._more:
                out = self._decompress(cap)
                if out:
                    return out
                continue
            data = self._source.read(self._chunk_size)
            if not data:
                self._finish()
                return b""
            self._offset += len(data)
            self._pending = data
            self._in_member = True

    def _decompress(self, cap: int) -> bytes:
        try:
            out = self._zlib.decompress(self._pending, cap)
        except zlib.error as exc:
            raise IntegrityError(
                f"corrupt compressed data (gzip) within the first {self._offset} compressed bytes: {exc}"
            ) from exc
        if self._zlib.eof:
            # `gzip -d` accepts concatenated members (cat a.gz b.gz), so we do too.
            self._members += 1
            self._pending = self._zlib.unused_data
            self._zlib = zlib.decompressobj(_GZIP_WBITS)
            self._in_member = bool(self._pending)
            self._more = False
        else:
            self._pending = self._zlib.unconsumed_tail
            self._more = len(out) == cap
        return out

    def _finish(self) -> None:
        if self._in_member:
            raise IntegrityError(f"truncated: the gzip stream ends inside a member after {self._offset} compressed bytes")
        if self._members == 0:
            raise IntegrityError(f"truncated: no complete gzip member in {self._offset} compressed bytes")

    def close(self) -> None:
        return None


class _Gzip(Codec):
    name = "gzip"
    suffix = ".gz"
    default_level = 6
    min_level = 0  # 0 = stored blocks: still a valid gzip file
    max_level = 9

    def compressing_writer(self, sink: SupportsWrite, *, level: int | None, threads: int, job_size: int = 0) -> PushStage:
        level = self.default_level if level is None else level
        return _Compressor(zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS), sink)

    def decompressing_reader(self, source: SupportsRead, *, chunk_size: int) -> PullStage:
        return _GzipDecompressor(source, chunk_size)


# --- none -------------------------------------------------------------------------------------


class _NoCompression(Codec):
    name = "none"

    # Nothing marks the end of an uncompressed stream: only the manifest's size and sha256
    # (open_reader's `expected`) can tell a truncated copy from a complete one.

    def compressing_writer(self, sink: SupportsWrite, *, level: int | None, threads: int, job_size: int = 0) -> PushStage:
        return PassThroughWriter(sink)

    def decompressing_reader(self, source: SupportsRead, *, chunk_size: int) -> PullStage:
        return PassThroughReader(source)


CODECS: dict[str, Codec] = {codec.name: codec for codec in (_Zstd(), _Gzip(), _NoCompression())}


def get_codec(name: str) -> Codec:
    """Return the codec registered as ``name``; raise :class:`ConfigError` for an unknown name."""
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise ConfigError([unknown_codec_problem(name)]) from None


def unknown_codec_problem(name: object) -> str:
    """The sentence used wherever an unknown compression name is reported."""
    return f"unknown compression {name!r}: choose one of {', '.join(CODECS)}"
