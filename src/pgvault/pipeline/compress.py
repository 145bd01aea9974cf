"""Compression codecs, one registry keyed by the name recorded in manifests.

Each codec gives two things:

* a *pull-style compressing reader*: wraps the (digest-observed) source and returns compressed
  bytes from ``read(size)``, so the encrypt stage - or the plain copy loop - can pull from it;
* a *push-style decompressing writer*: ``write(compressed)`` pushes restored bytes into a sink,
  and ``finish()`` raises :class:`~pgvault.errors.IntegrityError` when the input stopped inside a
  frame.  That last check is the whole point: neither zlib nor zstd complain about a stream that
  simply ends early, and a truncated object in a repository must never restore "successfully".

Output of each codec is the codec's standard file format (``zstd -d`` / ``gzip -d`` read it), so
an operator can undo it by hand when pgvault itself is unavailable.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from typing import IO, Protocol, cast

import zstandard

from pgvault.errors import ConfigError, IntegrityError
from pgvault.pipeline.digest import SupportsRead, SupportsWrite

__all__ = ["Codec", "Decompressor", "CODECS", "get_codec", "unknown_codec_problem"]


class Decompressor(Protocol):
    """A push-style decompressing writer; see the module docstring."""

    def write(self, data: bytes, /) -> int: ...

    def finish(self) -> None: ...


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
    def compressing_reader(self, source: SupportsRead, *, level: int | None, threads: int, chunk_size: int) -> SupportsRead:
        """Return a reader whose ``read`` yields the compressed form of everything in ``source``."""

    @abstractmethod
    def decompressing_writer(self, sink: SupportsWrite, *, chunk_size: int) -> Decompressor:
        """Return a writer that decompresses what it is given into ``sink``."""


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


class _ZstdDecompressor:
    __slots__ = ("_writer", "_frames", "_offset")

    def __init__(self, sink: SupportsWrite, chunk_size: int) -> None:
        # write_size bounds each push into the sink (and so memory), whatever the ratio.
        self._writer = zstandard.ZstdDecompressor().stream_writer(
            cast(IO[bytes], sink), write_size=chunk_size, write_return_read=True, closefd=False
        )
        self._frames = _ZstdFrameTracker()
        self._offset = 0

    def write(self, data: bytes, /) -> int:
        try:
            self._writer.write(data)
        except zstandard.ZstdError as exc:
            # zstd's messages ("Restored data doesn't match checksum", "Data corruption detected")
            # are fixed strings about the data; they are safe and useful to show.
            raise IntegrityError(
                f"corrupt compressed data (zstd) within the first {self._offset + len(data)} compressed bytes: {exc}"
            ) from exc
        self._frames.feed(data)
        self._offset += len(data)
        return len(data)

    def finish(self) -> None:
        if not self._frames.at_boundary:
            raise IntegrityError(f"truncated: the zstd stream ends inside a frame after {self._offset} compressed bytes")
        if self._frames.frames == 0:
            raise IntegrityError(f"truncated: no complete zstd frame in {self._offset} compressed bytes")


class _Zstd(Codec):
    name = "zstd"
    suffix = ".zst"
    default_level = 3
    min_level = 1
    max_level = 22

    def compressing_reader(self, source: SupportsRead, *, level: int | None, threads: int, chunk_size: int) -> SupportsRead:
        # write_checksum: the frame carries a checksum of the content, so `zstd -d` alone detects
        # corruption even without pgvault's manifest.  threads=0 compresses in the calling thread;
        # N >= 1 runs N zstd workers that work while this thread hashes and encrypts.
        cctx = zstandard.ZstdCompressor(
            level=self.default_level if level is None else level, threads=threads, write_checksum=True
        )
        return cctx.stream_reader(cast(IO[bytes], source), read_size=chunk_size, closefd=False)

    def decompressing_writer(self, sink: SupportsWrite, *, chunk_size: int) -> Decompressor:
        return _ZstdDecompressor(sink, chunk_size)


# --- gzip -------------------------------------------------------------------------------------

_GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib: "add/expect a gzip header and trailer"


class _GzipReader:
    """Pulls chunks from the source and serves their gzip-compressed form."""

    __slots__ = ("_source", "_chunk_size", "_zlib", "_buf", "_pos", "_done")

    def __init__(self, source: SupportsRead, level: int, chunk_size: int) -> None:
        self._source = source
        self._chunk_size = chunk_size
        self._zlib = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
        self._buf = b""
        self._pos = 0
        self._done = False

    def read(self, size: int = -1, /) -> bytes:
        # An offset into the last output instead of `del buf[:n]`: pyrage pulls 8 KiB at a time,
        # and trimming the front of a 1 MiB buffer on every call would copy it over and over.
        while self._pos >= len(self._buf):
            if self._done:
                return b""
            data = self._source.read(self._chunk_size)
            if data:
                self._buf = self._zlib.compress(data)
            else:
                self._buf = self._zlib.flush()
                self._done = True
            self._pos = 0
        if size < 0 or (self._pos == 0 and size >= len(self._buf)):
            out = self._buf[self._pos :] if self._pos else self._buf
        else:
            out = self._buf[self._pos : self._pos + size]
        self._pos += len(out)
        return out


class _GzipDecompressor:
    __slots__ = ("_sink", "_cap", "_zlib", "_members", "_in_member", "_offset")

    def __init__(self, sink: SupportsWrite, chunk_size: int) -> None:
        self._sink = sink
        self._cap = chunk_size  # max output per zlib call: bounds memory whatever the ratio
        self._zlib = zlib.decompressobj(_GZIP_WBITS)
        self._members = 0
        self._in_member = False
        self._offset = 0

    def write(self, data: bytes, /) -> int:
        pending = data
        if pending:
            self._in_member = True
        while True:
            try:
                out = self._zlib.decompress(pending, self._cap)
            except zlib.error as exc:
                raise IntegrityError(
                    f"corrupt compressed data (gzip) within the first {self._offset + len(data)} compressed bytes: {exc}"
                ) from exc
            if out:
                self._sink.write(out)
            if self._zlib.eof:
                # `gzip -d` accepts concatenated members (cat a.gz b.gz), so we do too.
                self._members += 1
                pending = self._zlib.unused_data
                self._zlib = zlib.decompressobj(_GZIP_WBITS)
                self._in_member = bool(pending)
                if not pending:
                    break
                continue
            pending = self._zlib.unconsumed_tail
            # A full output buffer with no input left can still hide output inside zlib.
            if not pending and len(out) < self._cap:
                break
        self._offset += len(data)
        return len(data)

    def finish(self) -> None:
        if self._in_member:
            raise IntegrityError(f"truncated: the gzip stream ends inside a member after {self._offset} compressed bytes")
        if self._members == 0:
            raise IntegrityError(f"truncated: no complete gzip member in {self._offset} compressed bytes")


class _Gzip(Codec):
    name = "gzip"
    suffix = ".gz"
    default_level = 6
    min_level = 0  # 0 = stored blocks: still a valid gzip file
    max_level = 9

    def compressing_reader(self, source: SupportsRead, *, level: int | None, threads: int, chunk_size: int) -> SupportsRead:
        return _GzipReader(source, self.default_level if level is None else level, chunk_size)

    def decompressing_writer(self, sink: SupportsWrite, *, chunk_size: int) -> Decompressor:
        return _GzipDecompressor(sink, chunk_size)


# --- none -------------------------------------------------------------------------------------


class _PassThrough:
    __slots__ = ("_sink",)

    def __init__(self, sink: SupportsWrite) -> None:
        self._sink = sink

    def write(self, data: bytes, /) -> int:
        self._sink.write(data)
        return len(data)

    def finish(self) -> None:
        # Nothing marks the end of an uncompressed stream: only the manifest's size and sha256
        # (read_stream's `expected`) can tell a truncated copy from a complete one.
        return None


class _NoCompression(Codec):
    name = "none"

    def compressing_reader(self, source: SupportsRead, *, level: int | None, threads: int, chunk_size: int) -> SupportsRead:
        return source

    def decompressing_writer(self, sink: SupportsWrite, *, chunk_size: int) -> Decompressor:
        return _PassThrough(sink)


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
