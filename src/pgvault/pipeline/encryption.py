"""Encryption schemes, one registry keyed by the name recorded in manifests (like
:mod:`pgvault.pipeline.compress`'s ``CODECS``).

Each scheme gives, in one place:

* its object-name ``suffix`` (appended after the codec's, so ``.zst.age`` reads left to right);
* what it needs: ``takes_recipients`` (public keys, recorded in the manifest) and
  ``needs_identities`` (secret keys, given only to restores);
* :meth:`~EncryptionScheme.problems`: every problem with the recipients a spec gives it;
* the two stream stages (shapes in :mod:`pgvault.pipeline.digest`):
  :meth:`~EncryptionScheme.encrypting_writer` is pushed the (compressed) bytes and pushes the
  stored form into a sink; :meth:`~EncryptionScheme.prepare_identities` then
  :meth:`~EncryptionScheme.decrypting_reader` undo it, pulled from.

:class:`~pgvault.pipeline.PipelineSpec`, ``open_writer``/``open_reader``, ``all_suffixes()`` and
config validation all go through :data:`SCHEMES`, so a new scheme is one more entry here.

pyrage is imported only when an age stage or check actually runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from pgvault.errors import ConfigError
from pgvault.pipeline.digest import (
    PassThroughReader,
    PassThroughWriter,
    PullStage,
    PushStage,
    SupportsRead,
    SupportsWrite,
)

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
    def encrypting_writer(self, sink: SupportsWrite, recipients: Sequence[str], *, chunk_size: int) -> PushStage:
        """A stage that pushes the stored (encrypted) form of what it is given into ``sink``
        (about ``chunk_size`` bytes at a time)."""

    def prepare_identities(self, identities: Sequence[str]) -> Any:
        """Parse secret keys for :meth:`decrypt`; :class:`ConfigError` when missing or unparsable.

        Called before any byte is read, so a missing key fails before the restore starts."""
        return None

    @abstractmethod
    def decrypting_reader(self, stored: SupportsRead, keys: Any, *, recipients: Sequence[str], chunk_size: int) -> PullStage:
        """A stage whose ``read`` returns the decrypted form of what it pulls from ``stored``
        (about ``chunk_size`` bytes at a time).

        Corrupt, truncated or extended input raises :class:`IntegrityError`, at the latest when
        ``stored`` is exhausted."""


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

    def encrypting_writer(self, sink: SupportsWrite, recipients: Sequence[str], *, chunk_size: int) -> PushStage:
        return PassThroughWriter(sink)

    def decrypting_reader(self, stored: SupportsRead, keys: Any, *, recipients: Sequence[str], chunk_size: int) -> PullStage:
        return PassThroughReader(stored)


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
        if isinstance(recipients, (tuple, list)) and not recipients:
            return []  # nothing to parse: no pyrage for settings without recipients (a restore host's)
        from pgvault.pipeline import encrypt

        return encrypt.recipient_problems(recipients)

    def encrypting_writer(self, sink: SupportsWrite, recipients: Sequence[str], *, chunk_size: int) -> PushStage:
        from pgvault.pipeline import encrypt

        return encrypt.encrypting_writer(sink, encrypt.parse_recipients(recipients), chunk_size=chunk_size)

    def prepare_identities(self, identities: Sequence[str]) -> Any:
        from pgvault.pipeline import encrypt

        if not identities:
            raise ConfigError(
                ["the object is encrypted with age but no identity (secret key) was given"],
                hint="pass the age identity file whose public key was configured as a recipient",
            )
        return encrypt.parse_identities(identities)

    def decrypting_reader(self, stored: SupportsRead, keys: Any, *, recipients: Sequence[str], chunk_size: int) -> PullStage:
        from pgvault.pipeline import encrypt

        return encrypt.decrypting_reader(stored, keys, recipients=recipients, chunk_size=chunk_size)


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
