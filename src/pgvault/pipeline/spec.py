"""What a stored stream is and what became of it: the :class:`PipelineSpec` (which stages it
passes, recorded in manifests) and the :class:`StreamResult` (sizes and SHA-256s of its raw and
stored bytes).  Both are plain values; the streams themselves are in :mod:`pgvault.pipeline.files`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pgvault.errors import IntegrityError
from pgvault.pipeline.compress import CODECS, get_codec, unknown_codec_problem
from pgvault.pipeline.encryption import SCHEMES, get_scheme, recipient_syntax_problems, unknown_scheme_problem

__all__ = ["PipelineSpec", "StreamResult", "all_suffixes"]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class PipelineSpec:
    """Which transforms a stream passes; recorded in manifests so restores can undo them.

    Contains nothing secret: recipients are public keys.  Construct freely, then call
    :meth:`validate` (``open_writer`` does) to get every problem at once.
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


def all_suffixes() -> set[str]:
    """Every object-name suffix some pipeline can produce (``""``, ``.zst``, ``.gz.age``, ...)."""
    return {codec.suffix + scheme.suffix for codec in CODECS.values() for scheme in SCHEMES.values()}
