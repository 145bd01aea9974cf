"""Encryption schemes, one registry keyed by the name recorded in manifests (like
:mod:`pgvault.pipeline.compress`'s ``CODECS``).

Each scheme gives, in one place:

* its object-name ``suffix`` (appended after the codec's, so ``.zst.age`` reads left to right);
* what it needs: ``takes_recipients`` (public keys, recorded in the manifest) and
  ``needs_identities`` (secret keys, given only to restores);
* :meth:`~EncryptionScheme.problems`: every problem with the recipients a spec gives it;
* the two stream stages: :meth:`~EncryptionScheme.encrypt` pulls the (compressed) bytes and
  pushes the stored form into a sink; :meth:`~EncryptionScheme.prepare_identities` then
  :meth:`~EncryptionScheme.decrypt` undo it.

:class:`~pgvault.pipeline.PipelineSpec`, ``write_stream``/``read_stream``, ``all_suffixes()`` and
config validation all go through :data:`SCHEMES`, so a new scheme is one more entry here.

pyrage is imported only when an age stage or check actually runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from pgvault.errors import ConfigError, IntegrityError
from pgvault.pipeline.digest import SupportsRead, SupportsWrite

__all__ = ["EncryptionScheme", "SCHEMES", "get_scheme", "scheme_for_recipients", "unknown_scheme_problem",
           "recipient_syntax_problems"]


class EncryptionScheme(ABC):
    """One encryption format: its name, suffix, key needs, validation and the two stream stages."""

    name: str = ""
    suffix: str = ""
    takes_recipients: bool = False  # encrypting needs public keys (recorded in the manifest)
    needs_identities: bool = False  # decrypting needs secret keys
    identity: bool = False  # stored bytes are the input bytes (lets the pipeline hash once)

    @abstractmethod
    def problems(self, recipients: object) -> list[str]:
        """Every problem with ``recipients`` for this scheme, as sentences (empty when usable)."""

    def recipient_problems(self, recipients: object) -> list[str]:
        """Syntax problems of ``recipients`` as this scheme's public keys (schemes that take them)."""
        return []

    @abstractmethod
    def encrypt(self, source: SupportsRead, sink: SupportsWrite, recipients: Sequence[str], *, chunk_size: int) -> None:
        """Pull ``source`` to EOF and push its stored (encrypted) form into ``sink``."""

    def prepare_identities(self, identities: Sequence[str]) -> Any:
        """Parse secret keys for :meth:`decrypt`; :class:`ConfigError` when missing or unparsable.

        Called before any byte is read, so a missing key fails before the restore starts."""
        return None

    @abstractmethod
    def decrypt(
        self, stored: SupportsRead, sink: SupportsWrite, keys: Any, *, recipients: Sequence[str], chunk_size: int
    ) -> None:
        """Pull stored bytes from ``stored`` to EOF and push the decrypted bytes into ``sink``.

        Corrupt, truncated or extended input raises :class:`IntegrityError`."""


def _pump(source: SupportsRead, sink: SupportsWrite, chunk_size: int) -> None:
    read, write = source.read, sink.write
    while data := read(chunk_size):
        write(data)


# --- none -------------------------------------------------------------------------------------


class _NoEncryption(EncryptionScheme):
    name = "none"
    identity = True

    def problems(self, recipients: object) -> list[str]:
        problems = []
        if recipients:
            # Most likely someone expects encrypted backups and forgot one setting: refuse rather
            # than silently store plaintext.
            takers = " or ".join(s.name for s in SCHEMES.values() if s.takes_recipients)
            problems.append(f"recipients are given but encryption is none: set encryption to {takers} "
                            "or remove the recipients")
        return problems + recipient_syntax_problems(recipients)

    def encrypt(self, source: SupportsRead, sink: SupportsWrite, recipients: Sequence[str], *, chunk_size: int) -> None:
        _pump(source, sink, chunk_size)

    def decrypt(
        self, stored: SupportsRead, sink: SupportsWrite, keys: Any, *, recipients: Sequence[str], chunk_size: int
    ) -> None:
        _pump(stored, sink, chunk_size)


# --- age --------------------------------------------------------------------------------------


class _Age(EncryptionScheme):
    name = "age"
    suffix = ".age"
    takes_recipients = True
    needs_identities = True

    def problems(self, recipients: object) -> list[str]:
        problems = []
        if not recipients:
            problems.append("encryption is age but no recipients are given: add at least one age public key (age1...)")
        return problems + self.recipient_problems(recipients)

    def recipient_problems(self, recipients: object) -> list[str]:
        from pgvault.pipeline import encrypt

        return encrypt.recipient_problems(recipients)

    def encrypt(self, source: SupportsRead, sink: SupportsWrite, recipients: Sequence[str], *, chunk_size: int) -> None:
        from pgvault.pipeline import encrypt

        encrypt.encrypt(source, sink, encrypt.parse_recipients(recipients))

    def prepare_identities(self, identities: Sequence[str]) -> Any:
        from pgvault.pipeline import encrypt

        if not identities:
            raise ConfigError(
                ["the object is encrypted with age but no identity (secret key) was given"],
                hint="pass the age identity file whose public key was configured as a recipient",
            )
        return encrypt.parse_identities(identities)

    def decrypt(
        self, stored: SupportsRead, sink: SupportsWrite, keys: Any, *, recipients: Sequence[str], chunk_size: int
    ) -> None:
        from pgvault.pipeline import encrypt

        # age hands out 8 KiB pieces; feeding those one by one to zstd and the sink costs more
        # Python calls than the decompression itself.
        batched = _Batcher(sink, chunk_size)
        encrypt.decrypt(stored, batched, keys, recipients=recipients)
        batched.flush()
        # pyrage reads to EOF already (and rejects trailing bytes); draining keeps the stored
        # digest complete regardless.
        if stored.read(chunk_size):
            raise IntegrityError("corrupt: bytes follow the end of the age stream")


class _Batcher:
    """Collects small writes into ``size``-byte writes (plus a final :meth:`flush`)."""

    __slots__ = ("_sink", "_size", "_buf")

    def __init__(self, sink: SupportsWrite, size: int) -> None:
        self._sink = sink
        self._size = size
        self._buf = bytearray()

    def write(self, data: bytes, /) -> int:
        self._buf += data
        if len(self._buf) >= self._size:
            self.flush()
        return len(data)

    def flush(self) -> None:
        """Forward whatever is collected."""
        if self._buf:
            # bytes(): the sink may keep a reference to what it is given; the buffer is reused.
            self._sink.write(bytes(self._buf))
            self._buf.clear()


# The order is the order names are listed in messages.
SCHEMES: dict[str, EncryptionScheme] = {scheme.name: scheme for scheme in (_Age(), _NoEncryption())}


def get_scheme(name: object) -> EncryptionScheme:
    """Return the scheme registered as ``name``; raise :class:`ConfigError` for an unknown name."""
    scheme = SCHEMES.get(name) if isinstance(name, str) else None
    if scheme is None:
        raise ConfigError([unknown_scheme_problem(name)])
    return scheme


def unknown_scheme_problem(name: object) -> str:
    """The sentence used wherever an unknown encryption name is reported."""
    return f"unknown encryption {name!r}: choose one of {', '.join(SCHEMES)}"


def recipient_syntax_problems(recipients: object) -> list[str]:
    """``recipients`` checked as public keys of every scheme that takes them (used where the
    spec's scheme takes none or is unknown, so a mistyped key is still named)."""
    problems: list[str] = []
    for scheme in SCHEMES.values():
        if scheme.takes_recipients:
            problems += [p for p in scheme.recipient_problems(recipients) if p not in problems]
    return problems


def scheme_for_recipients(recipients: Sequence[str]) -> str:
    """The scheme configured settings select: the one that takes recipients when some are given
    (encryption is on exactly when recipients are configured), else the one that needs none."""
    wanted = bool(recipients)
    return next(s.name for s in SCHEMES.values() if s.takes_recipients == wanted)
