"""The age identity settings checked by parsing the key(s): asked by ``config check`` and by every
command that decrypts, never by every load (see :func:`identity_problems`)."""

from __future__ import annotations

from pathlib import Path

from pgvault.config import _BY_PATH, Settings
from pgvault.errors import ConfigError

_IDENTITY_FORMAT = ("expected what age-keygen writes: lines 'AGE-SECRET-KEY-1...' plus '#' comments and blank lines "
                    "(or an unencrypted OpenSSH private key)")


def identity_problems(s: Settings) -> list[str]:
    """Every problem with the age identity settings, found by parsing the key(s) with pyrage.

    Not part of every load: reading the key file and importing pyrage would cost every command
    (``wal push`` runs once per segment), and a host that only backs up may deliberately be unable
    to read it.  ``config check`` asks, and so does every command that decrypts
    (``Context.identities``).  A key is never quoted: only the setting, the file and line numbers."""
    from pgvault.pipeline.encrypt import load_identities

    problems: list[str] = []
    if s.age_identity:
        try:
            load_identities(s.age_identity)
        except ConfigError as e:
            why = "; ".join(p.replace("the identity file", "the value").replace(" of the identity file", "")
                            for p in e.problems)
            problems.append(f"encryption.age_identity ({_BY_PATH['encryption.age_identity'].env}) = <secret>: {why}; "
                            f"{_IDENTITY_FORMAT}")
    path = s.age_identity_file
    if path and Path(path).is_file():
        try:
            load_identities(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            problems.append(f"encryption.age_identity_file: cannot read {path}: {e.strerror or e}")
        except UnicodeDecodeError:
            problems.append(f"encryption.age_identity_file: {path} is not a text file; {_IDENTITY_FORMAT}")
        except ConfigError as e:
            problems.append(f"encryption.age_identity_file: {path}: {'; '.join(e.problems)}; {_IDENTITY_FORMAT}")
    return problems
