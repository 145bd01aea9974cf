"""The stream pipeline: the one place that stacks the stages every stored byte stream passes.

::

    write_stream:  source → digest(raw) → compress → encrypt → digest(stored) → sink
    read_stream:   source → digest(stored) → decrypt → decompress → digest(raw) → sink

Like pgBackRest's filter groups, observers (size + SHA-256) sit at both ends and transforms in
between; the results come back as a :class:`StreamResult` once the stream is done and go into
the manifest together with the :class:`PipelineSpec`, from which ``read_stream`` rebuilds the
exact inverse stack.  Stage order is fixed here and nowhere else.

Memory is bounded by ``chunk_size`` plus the codecs' fixed windows, whatever the stream length.

Restores usually write into ``pg_restore``'s stdin, so ``read_stream`` reports every kind of
damage - corrupt, truncated, undecryptable, or not what the manifest recorded - by *raising
before it returns*: the caller then kills ``pg_restore`` rather than closing its stdin, and a
``--single-transaction`` restore commits nothing.  Bytes already pushed to the sink before the
damage was found are not retracted; discarding them is the caller's job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pgvault.errors import ConfigError, IntegrityError
from pgvault.pipeline import compress
from pgvault.pipeline.compress import CODECS, get_codec, unknown_codec_problem
from pgvault.pipeline.digest import DigestReader, DigestWriter, SupportsRead, SupportsWrite
from pgvault.pipeline.encrypt import load_identities
from pgvault.pipeline.encryption import (
    SCHEMES,
    EncryptionScheme,
    get_scheme,
    recipient_syntax_problems,
    unknown_scheme_problem,
)

__all__ = [
    "PipelineSpec",
    "StreamResult",
    "write_stream",
    "read_stream",
    "load_identities",
    "SupportsRead",
    "SupportsWrite",
    "ENCRYPTIONS",
]

ENCRYPTIONS = tuple(SCHEMES)  # the names of pgvault.pipeline.encryption.SCHEMES
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class PipelineSpec:
    """Which transforms a stream passes; recorded in manifests so restores can undo them.

    Contains nothing secret: recipients are public keys.  Construct freely, then call
    :meth:`validate` (``write_stream`` does) to get every problem at once.
    """

    compression: str = "zstd"  # a key of pgvault.pipeline.compress.CODECS
    level: int | None = None  # None = codec default (zstd 3, gzip 6)
    encryption: str = "none"  # a key of pgvault.pipeline.encryption.SCHEMES
    recipients: tuple[str, ...] = ()  # the scheme's public keys (age: age1... / ssh-ed25519 ... / ssh-rsa ...)

    def __post_init__(self) -> None:
        # A list from YAML/JSON would make the frozen spec unhashable and mutable through the back
        # door; a lone string is left alone so validate() reports it instead of splitting it.
        if isinstance(self.recipients, list):
            object.__setattr__(self, "recipients", tuple(self.recipients))

    def suffix(self) -> str:
        """File-name suffix naming the applied stages in order, e.g. ``".zst.age"``.

        Object names carry it so a person can undo the stages by hand with stock tools.
        """
        return get_codec(self.compression).suffix + get_scheme(self.encryption).suffix

    def validate(self) -> list[str]:
        """Return every problem with this spec as a sentence (empty list when it is usable)."""
        problems: list[str] = []
        codec = CODECS.get(self.compression) if isinstance(self.compression, str) else None
        if codec is None:
            problems.append(unknown_codec_problem(self.compression))
        if self.level is not None:
            if isinstance(self.level, bool) or not isinstance(self.level, int):
                problems.append(f"compression level must be an integer or unset (got {self.level!r})")
            elif codec is not None:
                level_problem = codec.level_problem(self.level)
                if level_problem:
                    problems.append(level_problem)
        scheme = SCHEMES.get(self.encryption) if isinstance(self.encryption, str) else None
        if scheme is None:
            problems.append(unknown_scheme_problem(self.encryption))
            problems.extend(recipient_syntax_problems(self.recipients))
        else:
            problems.extend(scheme.problems(self.recipients))
        return problems

    def to_json(self) -> dict[str, Any]:
        """The manifest form: ``{"compression", "level", "encryption", "recipients"}``."""
        return {
            "compression": self.compression,
            "level": self.level,
            "encryption": self.encryption,
            "recipients": list(self.recipients),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PipelineSpec:
        """Rebuild a spec from :meth:`to_json` output.

        Raises :class:`IntegrityError` when the structure is malformed (a damaged manifest).
        Unknown names are *not* rejected here - :meth:`validate` and the stream functions do that
        with clearer messages; unknown extra keys are ignored so newer manifests stay readable.
        """
        problems: list[str] = []
        if not isinstance(d, Mapping):
            raise IntegrityError("pipeline spec in manifest is not a JSON object")
        for key in ("compression", "encryption"):
            if not isinstance(d.get(key), str):
                problems.append(f"{key!r} must be a string")
        level = d.get("level")
        if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
            problems.append("'level' must be an integer or null")
        recipients = d.get("recipients", [])
        if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
            problems.append("'recipients' must be a list of strings")
        if problems:
            raise IntegrityError("malformed pipeline spec in manifest: " + "; ".join(problems))
        return cls(compression=d["compression"], level=level, encryption=d["encryption"], recipients=tuple(recipients))


@dataclass(frozen=True)
class StreamResult:
    """What the observers saw: size and SHA-256 of the raw and of the stored bytes."""

    raw_size: int
    raw_sha256: str
    stored_size: int
    stored_sha256: str

    def to_json(self) -> dict[str, Any]:
        """The manifest form: the four fields by name."""
        return {
            "raw_size": self.raw_size,
            "raw_sha256": self.raw_sha256,
            "stored_size": self.stored_size,
            "stored_sha256": self.stored_sha256,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StreamResult:
        """Rebuild from :meth:`to_json` output; :class:`IntegrityError` if malformed."""
        if not isinstance(d, Mapping):
            raise IntegrityError("stream checksums in manifest are not a JSON object")
        problems: list[str] = []
        for key in ("raw_size", "stored_size"):
            value = d.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{key!r} must be a non-negative integer")
        for key in ("raw_sha256", "stored_sha256"):
            value = d.get(key)
            if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
                problems.append(f"{key!r} must be 64 lowercase hex digits")
        if problems:
            raise IntegrityError("malformed stream checksums in manifest: " + "; ".join(problems))
        return cls(
            raw_size=d["raw_size"], raw_sha256=d["raw_sha256"], stored_size=d["stored_size"], stored_sha256=d["stored_sha256"]
        )


def write_stream(
    source: SupportsRead,
    sink: SupportsWrite,
    spec: PipelineSpec,
    *,
    threads: int = 0,
    chunk_size: int = 1 << 20,
) -> StreamResult:
    """Pull ``source`` to EOF and push the stored form into ``sink.write``.

    Does not close or commit ``sink``: publishing the object (and then the manifest) is the
    caller's decision, taken only after this returns.  ``threads`` is the number of zstd worker
    threads: 0 compresses in the calling thread, N >= 1 hands compression to N workers so it
    overlaps with hashing and encryption here (ignored by other codecs).

    Raises :class:`ConfigError` for an invalid spec (every problem listed); exceptions from
    ``source`` and ``sink`` propagate unchanged.
    """
    problems = spec.validate()
    if problems:
        raise ConfigError(problems)
    _check_tuning(chunk_size, threads)
    codec = get_codec(spec.compression)
    scheme = get_scheme(spec.encryption)

    raw = DigestReader(source)
    if codec.name == "none" and scheme.identity:
        # Identity pipeline: stored bytes are the raw bytes, so hash them once, not twice.
        _pump(raw, sink, chunk_size)
        return StreamResult(raw.size, raw.hexdigest(), raw.size, raw.hexdigest())

    stored = DigestWriter(sink)
    compressed = codec.compressing_reader(raw, level=spec.level, threads=threads, chunk_size=chunk_size)
    scheme.encrypt(compressed, stored, spec.recipients, chunk_size=chunk_size)
    return StreamResult(raw.size, raw.hexdigest(), stored.size, stored.hexdigest())


def read_stream(
    source: SupportsRead,
    sink: SupportsWrite,
    spec: PipelineSpec,
    *,
    identities: Sequence[str] = (),
    expected: StreamResult | None = None,
    chunk_size: int = 1 << 20,
) -> StreamResult:
    """Pull stored bytes from ``source`` and push the restored raw bytes into ``sink.write``.

    ``identities`` are secret-key strings (see :func:`load_identities`), needed only when the
    spec's encryption scheme ``needs_identities`` (age).  With ``expected`` (the manifest's :class:`StreamResult`) the stored and raw
    sizes and SHA-256s are compared at EOF; a stored object longer than recorded fails as soon as
    the extra byte arrives.  Without it, only what the formats themselves protect is checked
    (zstd frame checksums, gzip CRC, age authentication): an uncompressed, unencrypted stream
    then has no protection at all.

    Every detected problem raises :class:`IntegrityError` *before* this returns - corrupt
    compressed data, truncation, an identity that does not match, stored or raw bytes that differ
    from ``expected`` - with a message saying which, never containing key material.  Returns
    the observed :class:`StreamResult`.  Raises :class:`ConfigError` for missing or unparsable
    identities; exceptions from ``source`` and ``sink`` propagate unchanged, and once the sink has
    failed its failure is what this raises (the stream is then incomplete downstream, which is
    not damage of the stored bytes).
    """
    _check_tuning(chunk_size, 0)
    codec, scheme = _stages_for_reading(spec)
    keys = scheme.prepare_identities(identities)

    stored = DigestReader(source, max_size=expected.stored_size if expected is not None else None)
    identity_pipeline = codec.name == "none" and scheme.identity
    out = _SinkGuard(sink)
    raw = None if identity_pipeline else DigestWriter(out)
    failure: BaseException | None = None
    try:
        if raw is None:
            _pump(stored, out, chunk_size)
        else:
            decompressor = codec.decompressing_writer(raw, chunk_size=chunk_size)
            scheme.decrypt(stored, decompressor, keys, recipients=spec.recipients, chunk_size=chunk_size)
            decompressor.finish()
    except BaseException as exc:
        if out.error is not None and exc is not out.error:
            # The sink failed first (disk full, pg_restore gone, Ctrl-C in its write): whatever a
            # stage said afterwards is a consequence; the stored bytes were never shown bad.
            failure = out.error
        elif isinstance(exc, IntegrityError) and stored.eof and _stored_mismatch(stored, expected) is not None:
            # With the manifest's figures a short or altered object is named as such, which is
            # more useful than whatever the decoder tripped over first.
            failure = _stored_mismatch(stored, expected)
        else:
            raise
    if failure is not None:
        raise failure  # outside the handler: not chained to what it explains

    raw_size, raw_sha = (stored.size, stored.hexdigest()) if raw is None else (raw.size, raw.hexdigest())
    result = StreamResult(raw_size, raw_sha, stored.size, stored.hexdigest())
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
    return result


# --- helpers -----------------------------------------------------------------------------------


def _check_tuning(chunk_size: int, threads: int) -> None:
    # Programming errors of the caller, not user errors: config validation bounds these first.
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if threads < 0:
        raise ValueError(f"threads must be 0 (in-caller) or a worker count, got {threads}")


def _stages_for_reading(spec: PipelineSpec) -> tuple[compress.Codec, EncryptionScheme]:
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


def _pump(source: SupportsRead, sink: SupportsWrite, chunk_size: int) -> None:
    """Copy ``source`` to ``sink`` in chunks until EOF."""
    read, write = source.read, sink.write
    while data := read(chunk_size):
        write(data)


class _SinkGuard:
    """The caller's sink, remembering its first failure so that a stage's later complaint (a gap
    looks like corrupt data) can never be reported instead of it; after a failure it refuses
    further writes, so nothing that follows a lost chunk reaches the sink."""

    __slots__ = ("_sink", "error")

    def __init__(self, sink: SupportsWrite) -> None:
        self._sink = sink
        self.error: BaseException | None = None

    def write(self, data: bytes, /) -> int:
        if self.error is not None:
            raise self.error
        try:
            self._sink.write(data)
        except BaseException as exc:
            self.error = exc
            raise
        return len(data)


def all_suffixes() -> set[str]:
    """Every object-name suffix some pipeline can produce (``""``, ``.zst``, ``.gz.age``, ...)."""
    return {codec.suffix + scheme.suffix for codec in CODECS.values() for scheme in SCHEMES.values()}
