"""age encryption (https://age-encryption.org/v1) through pyrage, streaming in both directions.

Backups are encrypted to *recipients* (public keys: ``age1...`` X25519 keys or OpenSSH
``ssh-ed25519``/``ssh-rsa`` keys), so the host that takes backups never holds a key that can read
them; only a restore needs an *identity* (secret key).  The output is a standard age file:
``age -d -i key.txt`` decrypts it without pgvault.

Two pyrage behaviours shape this module:

* an exception raised by our reader (and, while encrypting, by our writer) comes back flattened
  into a ``pyrage.EncryptError("ValueError: ...")`` string.  The stages wrap both callbacks and
  re-raise the *original* exception, so a storage error stays a StorageError and a dying
  ``pg_restore`` stays a BrokenPipeError instead of turning into "cannot decrypt";
* pyrage 1.4 *swallows* an exception raised by the writer during its final write (the age
  trailer is written when the stream is finished, and that error is lost): a full disk or a dead
  upload on the last chunk would look like success.  The guard therefore also re-raises a
  remembered callback error after pyrage returned normally;
* failures carry pyrage's fixed texts.  Secret keys never appear in messages here: identities are
  referred to by position only, and parse errors are never echoed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyrage

from pgvault.errors import ConfigError, IntegrityError
from pgvault.pipeline.digest import SupportsRead, SupportsWrite

__all__ = [
    "recipient_problems",
    "parse_recipients",
    "parse_identities",
    "load_identities",
    "encrypt",
    "decrypt",
]

# pyrage ships no type information; these aliases document what the opaque objects are.
AgeRecipient = Any
AgeIdentity = Any

_SECRET_PREFIX = "AGE-SECRET-KEY-"
_SSH_RECIPIENT_PREFIXES = ("ssh-ed25519 ", "ssh-rsa ")
_SSH_PRIVATE_MARK = "-----BEGIN"


# --- keys ---------------------------------------------------------------------------------------


def _parse_recipient(text: str) -> AgeRecipient:
    key = text.strip()
    if key.startswith("age1"):
        return pyrage.x25519.Recipient.from_str(key)
    if key.startswith(_SSH_RECIPIENT_PREFIXES):
        return pyrage.ssh.Recipient.from_str(key)
    raise ValueError("unsupported recipient type")


def _recipient_problem(index: int, text: object) -> str | None:
    if not isinstance(text, str):
        return f"recipient #{index} is not a string"
    key = text.strip()
    # A secret key pasted where a public key belongs is a leak waiting to happen (configs get
    # copied around); say so without ever repeating the value.
    if key.upper().startswith(_SECRET_PREFIX) or _SSH_PRIVATE_MARK in key:
        return (
            f"recipient #{index} is a secret key, not a public key: configure its public key "
            "(age-keygen -y key.txt) and keep the secret key off the backup host"
        )
    try:
        _parse_recipient(key)
    except Exception:
        # Public keys are safe to quote (a prefix is enough to find the typo); anything else might
        # be something private, so it is described, never echoed.
        shown = f" ({key[:16]}...)" if key.startswith(("age1", "ssh-")) else ""
        return (
            f"recipient #{index}{shown} is not a valid age public key (age1...) "
            "or SSH public key (ssh-ed25519 / ssh-rsa)"
        )
    return None


def recipient_problems(recipients: object) -> list[str]:
    """Describe every unusable entry of ``recipients`` (empty list when all parse)."""
    if isinstance(recipients, str) or not isinstance(recipients, (tuple, list)):
        return ["recipients must be a list of public keys"]
    problems = [_recipient_problem(i, r) for i, r in enumerate(recipients, 1)]
    return [p for p in problems if p is not None]


def parse_recipients(recipients: Sequence[str]) -> list[AgeRecipient]:
    """Parse public keys into pyrage recipients; :class:`ConfigError` lists every bad one."""
    problems = recipient_problems(list(recipients))
    if problems:
        raise ConfigError(problems)
    return [_parse_recipient(r) for r in recipients]


def parse_identities(identities: Sequence[str]) -> list[AgeIdentity]:
    """Parse secret keys (``AGE-SECRET-KEY-1...`` or an unencrypted OpenSSH private key).

    Raises :class:`ConfigError` naming every bad identity by position; the values themselves are
    secrets and never appear in the message.
    """
    parsed: list[AgeIdentity] = []
    problems: list[str] = []
    for index, text in enumerate(identities, 1):
        key = text.strip() if isinstance(text, str) else ""
        try:
            if key.startswith(_SECRET_PREFIX):
                parsed.append(pyrage.x25519.Identity.from_str(key))
            elif key.startswith(_SSH_PRIVATE_MARK):
                parsed.append(pyrage.ssh.Identity.from_buffer(key.encode()))
            elif key.startswith(("age1", "ssh-")):
                problems.append(
                    f"identity #{index} is a public key; decrypting needs the matching secret key "
                    "(AGE-SECRET-KEY-1... or an OpenSSH private key file)"
                )
            else:
                problems.append(f"identity #{index} is not an age secret key (AGE-SECRET-KEY-1...) or OpenSSH private key")
        except Exception:
            problems.append(
                f"identity #{index} could not be parsed "
                "(damaged age secret key, or a passphrase-protected SSH key, which is not supported)"
            )
    if problems:
        raise ConfigError(problems)
    return parsed


def load_identities(text: str) -> list[str]:
    """Parse the text of an age identity file into identity strings.

    Accepts what ``age -i`` accepts for pgvault's key types: an age identity file (one
    ``AGE-SECRET-KEY-1...`` per line; ``#`` comments and blank lines ignored, as written by
    ``age-keygen``) or an unencrypted OpenSSH private key file.  Every identity is checked here so
    a damaged file fails before a restore starts.  Problems raise :class:`ConfigError` naming line
    numbers, never line contents.
    """
    if text.lstrip().startswith(_SSH_PRIVATE_MARK):
        identities = [text.strip()]
        parse_identities(identities)
        return identities
    identities = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if not entry.startswith(_SECRET_PREFIX):
            problems.append(f"line {number} of the identity file is neither a comment nor an age secret key")
            continue
        try:
            parse_identities([entry])
        except ConfigError:
            problems.append(f"line {number} of the identity file is a damaged age secret key")
            continue
        identities.append(entry)
    if problems:
        raise ConfigError(problems)
    if not identities:
        raise ConfigError(
            ["the identity file contains no age secret key (AGE-SECRET-KEY-1...)"],
            hint="create one with `age-keygen -o key.txt` and configure its public key as a recipient",
        )
    return identities


# --- streams -----------------------------------------------------------------------------------


class _Guard:
    """Remembers the first exception a callback raised, because pyrage flattens it to a string.

    pyrage calls a failed writer once more (and a failed reader may be retried) before it gives
    up: forwarding that call would push the chunk *after* the lost one downstream, where the
    decompressor reports the gap as corrupt data and hides the real failure (a full disk, Ctrl-C).
    So after the first failure every call fails again with that same exception, touching nothing.
    """

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def _failed(self, exc: BaseException) -> BaseException:
        if self.error is None:
            self.error = exc
        return self.error


class _GuardedReader(_Guard):
    __slots__ = ("_inner",)

    def __init__(self, inner: SupportsRead) -> None:
        super().__init__()
        self._inner = inner

    def read(self, size: int = -1, /) -> bytes:
        if self.error is not None:
            raise self.error
        try:
            return self._inner.read(size)
        except BaseException as exc:  # KeyboardInterrupt too: it must not become "corrupt data"
            raise self._failed(exc)  # noqa: B904 - the first failure itself (usually exc), not a new error


class _GuardedWriter(_Guard):
    __slots__ = ("_inner",)

    def __init__(self, inner: SupportsWrite) -> None:
        super().__init__()
        self._inner = inner

    def write(self, data: bytes, /) -> int:
        if self.error is not None:
            raise self.error
        try:
            self._inner.write(data)
        except BaseException as exc:
            raise self._failed(exc)  # noqa: B904 - the first failure itself (usually exc), not a new error
        return len(data)


def encrypt(reader: SupportsRead, writer: SupportsWrite, recipients: Sequence[AgeRecipient]) -> None:
    """Pull plaintext from ``reader`` to EOF and write the age file to ``writer``.

    ``recipients`` are parsed (:func:`parse_recipients`).  Exceptions raised by ``reader`` or
    ``writer`` propagate unchanged.
    """
    guarded_reader, guarded_writer = _GuardedReader(reader), _GuardedWriter(writer)
    failure: BaseException | None = None
    try:
        pyrage.encrypt_io(guarded_reader, guarded_writer, list(recipients))
    except BaseException as exc:
        failure = exc
    # Checked even after a normal return: pyrage loses an error raised by the final write.
    failure = guarded_reader.error or guarded_writer.error or failure
    # Raised outside the except block so the original exception is not chained to pyrage's copy.
    if failure is not None:
        raise failure


def decrypt(
    reader: SupportsRead,
    writer: SupportsWrite,
    identities: Sequence[AgeIdentity],
    *,
    recipients: Sequence[str] = (),
) -> None:
    """Pull an age file from ``reader`` to EOF and write the plaintext to ``writer``.

    age authenticates every 64 KiB chunk before releasing it and marks the last one, so corrupt,
    truncated or extended input raises :class:`IntegrityError` (after the chunks before the damage
    were written).  ``recipients`` - public keys recorded with the object - only enrich the hint
    when no identity matches.  Exceptions raised by ``reader`` or ``writer`` propagate unchanged.
    """
    guarded_reader, guarded_writer = _GuardedReader(reader), _GuardedWriter(writer)
    failure: BaseException | None = None
    try:
        pyrage.decrypt_io(guarded_reader, guarded_writer, list(identities))
    except BaseException as exc:
        failure = _decrypt_failure(exc, len(identities), recipients)
    # Our callbacks' own errors win over pyrage's rendering of them, and are never lost.
    failure = guarded_reader.error or guarded_writer.error or failure
    if failure is not None:
        raise failure


def _decrypt_failure(exc: BaseException, n_identities: int, recipients: Sequence[str]) -> BaseException:
    # pyrage's texts are the age crate's fixed error strings ("No matching keys found",
    # "Header MAC is invalid", ...): they describe the file, never the keys.
    detail = str(exc)
    if isinstance(exc, pyrage.DecryptError):
        if "no matching keys" in detail.lower():
            hint = "use the identity file whose public key was configured as a recipient when the backup ran"
            if recipients:
                hint += "; this object was encrypted to: " + ", ".join(recipients)
            return IntegrityError(
                f"cannot decrypt with the given identity: none of the {n_identities} identities "
                "matches a recipient of this object (or its age header is damaged)",
                hint=hint,
            )
        return IntegrityError(f"cannot decrypt: the age header is damaged or truncated ({detail})")
    if isinstance(exc, OSError):
        # pyrage reports a chunk that fails authentication, a missing final chunk and trailing
        # bytes alike as an I/O "decryption error".
        return IntegrityError(
            "cannot decrypt: the age payload fails authentication (stored bytes are corrupt or truncated)"
        )
    return exc
