"""age encryption (https://age-encryption.org/v1) through pyrage, streaming in both directions.

Backups are encrypted to *recipients* (public keys: ``age1...`` X25519 keys or OpenSSH
``ssh-ed25519``/``ssh-rsa`` keys), so the host that takes backups never holds a key that can read
them; only a restore needs an *identity* (secret key).  The output is a standard age file:
``age -d -i key.txt`` decrypts it without pgvault.

pyrage streams only as a loop it runs itself (``encrypt_io`` / ``decrypt_io``: pull from a reader
to EOF, push into a writer), while the pipeline's stages are a writer that is pushed into and a
reader that is pulled from.  :class:`_Relay` turns one into the other: the pyrage call runs on a
helper thread that only ever reads batches the caller's thread hands it and writes into a list
the caller's thread empties.  Everything else stays on the caller's thread: reading the stored
object, hashing, writing into the sink.  So an error of the source or the sink is never seen by
pyrage (which would flatten it into a string, and swallows one raised by the final write), it
simply propagates.  pyrage works on one batch while the caller compresses (or decompresses)
the one before or after it outside the GIL, at most one batch apart.

Failures carry pyrage's fixed texts.  Secret keys never appear in messages here: identities are
referred to by position only, and parse errors are never echoed.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pyrage

from pgvault.errors import ConfigError, IntegrityError
from pgvault.pipeline.digest import PullStage, PushStage, SupportsRead, SupportsWrite

__all__ = [
    "recipient_problems",
    "parse_recipients",
    "parse_identities",
    "load_identities",
    "encrypting_writer",
    "decrypting_reader",
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

# age's payload chunk.  Fewer, bigger hand-overs to the relay cost fewer thread switches; pieces
# of this size keep them rare even when the pipeline's chunk size is tiny (tests use 1 byte).
_AGE_CHUNK = 64 * 1024


class _Abandoned(Exception):
    """Raised inside pyrage's read when the stream is abandoned, to end its loop."""


class _Relay:
    """Runs ``call(reader, writer)`` - pyrage's loop - on a helper thread, fed from the caller's.

    :meth:`feed` hands a batch of input pieces over; :meth:`finish` signals the end of the input
    and waits for the call to return.  Both return what pyrage wrote since the last call, as it
    wrote it, and raise what it raised.  pyrage's read and write callbacks are this object's
    :meth:`read` and :meth:`write`: they never touch the caller's streams, so they only fail when
    :meth:`abort` ends the loop.

    A feed returns at once, so pyrage (which holds the GIL only while it works) works on the batch
    while the caller compresses, decompresses or hashes outside the GIL; it waits while an earlier
    batch is still queued, so at most one batch waits and memory stays bounded.  A hand-over costs
    tens of microseconds (a futex wake and the GIL), hence batches of 64 KiB and more.
    """

    __slots__ = ("_call", "_name", "_cond", "_queued", "_pieces", "_next", "_piece", "_pos", "_eof", "_out", "done",
                 "leftover", "_error", "_abandoned", "_thread")

    def __init__(self, call: Callable[[_Relay, _Relay], None], name: str) -> None:
        self._call = call
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._queued: list[bytes] | None = None  # the batch waiting for pyrage
        self._pieces: list[bytes] = []  # the batch pyrage reads...
        self._next = 0  # ...the next of its pieces...
        self._piece = b""  # ...and the one being read, from _pos on
        self._pos = 0
        self._eof = False
        self._out: list[bytes] = []
        self.done = False  # the call returned (or raised): no more input is taken
        self.leftover = False  # it returned without consuming all of the last batch
        self._error: BaseException | None = None
        self._abandoned = False
        self._thread: threading.Thread | None = None

    # the caller's side

    def feed(self, pieces: list[bytes]) -> list[bytes]:
        """Queue ``pieces`` for pyrage (not copied: they must not change)."""
        self._start()
        with self._cond:
            while self._queued is not None and not self.done:
                self._cond.wait()
            if not self.done:
                self._queued = pieces
                self._cond.notify()
            return self._collect()

    def finish(self) -> list[bytes]:
        """Signal the end of the input and wait until pyrage returned."""
        self._start()
        with self._cond:
            while self._queued is not None and not self.done:
                self._cond.wait()
            self._eof = True
            self._cond.notify()
            while not self.done:
                self._cond.wait()
            return self._collect()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
            self._thread.start()

    def _collect(self) -> list[bytes]:
        if self.done:
            self.leftover = self._queued is not None or self._pos < len(self._piece) or self._next < len(self._pieces)
        out, self._out = self._out, []
        if self._error is not None:
            raise self._error
        return out

    def abort(self) -> None:
        """End pyrage's loop without finishing the stream and wait for the helper thread."""
        if self._thread is None:
            return
        with self._cond:
            self._abandoned = True
            self._cond.notify()
        if not sys.is_finalizing():  # a stream collected at exit: the (daemon) thread never runs again
            self._thread.join()

    # the helper thread's side

    def _main(self) -> None:
        try:
            self._call(self, self)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self._error = exc
        with self._cond:
            self.done = True
            self._cond.notify()

    def read(self, size: int = -1, /) -> bytes:
        """pyrage's reader: the rest of the current piece (up to ``size``), waiting for more."""
        while self._pos >= len(self._piece):
            if self._next < len(self._pieces):
                self._piece, self._pos = self._pieces[self._next], 0
                self._next += 1
                continue
            with self._cond:
                while self._queued is None and not (self._eof or self._abandoned):
                    self._cond.wait()
                if self._abandoned:
                    raise _Abandoned()
                if self._queued is None:  # the end of the input
                    return b""
                self._pieces, self._next, self._queued = self._queued, 0, None
                self._cond.notify()
        piece, pos = self._piece, self._pos
        if size < 0 or pos + size >= len(piece):
            self._pos = len(piece)
            return piece[pos:] if pos else piece
        self._pos = pos + size
        return piece[pos : pos + size]

    def write(self, data: bytes, /) -> int:
        """pyrage's writer: kept until the caller's thread takes it."""
        with self._cond:
            self._out.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        return None


class _Encryptor:
    """The push stage: plaintext in, the age file pushed on into ``sink`` (from the caller's thread)."""

    __slots__ = ("_sink", "_relay", "_piece", "_batch", "_batched")

    def __init__(self, sink: SupportsWrite, recipients: list[AgeRecipient], chunk_size: int) -> None:
        self._sink = sink
        self._relay = _Relay(lambda reader, writer: pyrage.encrypt_io(reader, writer, recipients), "age-encrypt")
        # Compressed input arrives in pieces of a few hundred KiB per MiB written: collected (not
        # copied) up to chunk_size, the relay switches threads once per several MiB of raw bytes.
        self._piece = max(chunk_size, _AGE_CHUNK)
        self._batch: list[bytes] = []
        self._batched = 0

    def write(self, data: bytes, /) -> int:
        # Kept past this call: only an immutable object may be kept as it is.
        self._batch.append(data if type(data) is bytes else bytes(data))
        self._batched += len(data)
        if self._batched >= self._piece:
            self._feed()
        return len(data)

    def _feed(self) -> None:
        batch, self._batch, self._batched = self._batch, [], 0
        self._pass(self._relay.feed(batch))

    def finish(self) -> None:
        if self._batch:
            self._feed()
        self._pass(self._relay.finish())

    def _pass(self, out: list[bytes]) -> None:
        # As pyrage wrote them (64 KiB chunks): joining them first would only copy them once more.
        for piece in out:
            self._sink.write(piece)

    def abort(self) -> None:
        self._batch = []
        self._relay.abort()


class _Decryptor:
    """The pull stage: reads the age file from ``stored`` (on the caller's thread) and returns the
    plaintext.  age authenticates every 64 KiB chunk before releasing it and marks the last one,
    so corrupt, truncated or extended input raises :class:`IntegrityError` (after the chunks
    before the damage were returned)."""

    __slots__ = ("_stored", "_relay", "_n_identities", "_recipients", "_piece", "_buf", "_pos", "_eof")

    def __init__(self, stored: SupportsRead, identities: list[AgeIdentity], recipients: Sequence[str],
                 chunk_size: int) -> None:
        self._stored = stored
        self._relay = _Relay(lambda reader, writer: pyrage.decrypt_io(reader, writer, identities), "age-decrypt")
        self._n_identities = len(identities)
        self._recipients = recipients
        self._piece = max(chunk_size, _AGE_CHUNK)
        self._buf = b""
        self._pos = 0
        self._eof = False

    def read(self, size: int = -1, /) -> bytes:
        while self._pos >= len(self._buf):
            if self._eof:
                return b""
            self._buf, self._pos = self._next(), 0  # b"" while pyrage is still at an earlier piece
        if self._pos == 0 and (size < 0 or size >= len(self._buf)):
            data, self._buf = self._buf, b""
            return data
        end = len(self._buf) if size < 0 else self._pos + size
        data = self._buf[self._pos : end]
        self._pos += len(data)
        return data

    def _next(self) -> bytes:
        # Reading one piece ahead: pyrage decrypts it while the caller decompresses the last one.
        data = self._stored.read(self._piece)
        failure: BaseException | None = None
        out: list[bytes] = []
        try:
            if data:
                out = self._relay.feed([data if type(data) is bytes else bytes(data)])
            else:
                self._eof = True
                out = self._relay.finish()
        except Exception as exc:
            failure = _decrypt_failure(exc, self._n_identities, self._recipients)
            if failure is exc:
                raise
        if failure is not None:
            raise failure  # outside the handler: not chained to pyrage's rendering of it
        if self._relay.done and self._relay.leftover:
            # pyrage reads to EOF (and rejects trailing bytes) itself; this is the backstop.
            raise IntegrityError("corrupt: bytes follow the end of the age stream")
        # pyrage writes 8 KiB pieces; zstd reads from here 1 MiB at a time.
        return out[0] if len(out) == 1 else b"".join(out)

    def close(self) -> None:
        self._relay.abort()


def encrypting_writer(sink: SupportsWrite, recipients: Sequence[AgeRecipient], *, chunk_size: int) -> PushStage:
    """A push stage writing the age file for ``recipients`` (parsed: :func:`parse_recipients`)
    into ``sink``, encrypting ``chunk_size`` (at least 64 KiB) at a time.  Exceptions raised by
    ``sink`` propagate unchanged."""
    return _Encryptor(sink, list(recipients), chunk_size)


def decrypting_reader(
    stored: SupportsRead, identities: Sequence[AgeIdentity], *, recipients: Sequence[str] = (), chunk_size: int
) -> PullStage:
    """A pull stage returning the plaintext of the age file in ``stored``, which it reads
    ``chunk_size`` (at least 64 KiB) at a time.  ``identities`` are parsed
    (:func:`parse_identities`); ``recipients`` - public keys recorded with the object - only
    enrich the hint when no identity matches.  Exceptions raised by ``stored`` propagate unchanged."""
    return _Decryptor(stored, list(identities), recipients, chunk_size)


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
