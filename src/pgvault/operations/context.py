"""What every operation needs, built once from the settings by the CLI and passed explicitly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

from pgvault.config import Settings
from pgvault.config.identity import identity_problems
from pgvault.errors import ConfigError
from pgvault.pg.conn import ConnInfo
from pgvault.storage import Storage, open_storage, s3_settings

if TYPE_CHECKING:
    from pgvault.pg.runner import Runner


class _RunnerOnFirstUse:
    """The real :class:`~pgvault.pg.runner.Runner`, imported when a program is first run: ``wal
    push`` builds a Context per segment and never runs a PostgreSQL program, and each import is
    start-up time PostgreSQL waits for."""

    _real: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._real is None:
            from pgvault.pg.runner import Runner

            self._real = Runner()
        return getattr(self._real, name)


def _default_runner() -> Runner:
    return cast("Runner", _RunnerOnFirstUse())


@dataclass(frozen=True)
class Context:
    """Settings plus the opened repository, the connection parameters and the runner of
    PostgreSQL's programs (a unit test passes a fake one: see :class:`~pgvault.pg.runner.Runner`)."""

    settings: Settings
    storage: Storage
    conn: ConnInfo
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)
    runner: Runner = field(default_factory=_default_runner, repr=False)

    @property
    def cluster(self) -> str:
        return self.settings.cluster

    def child_env(self, dbname: str | None = None) -> dict[str, str]:
        """Environment for a libpq child program connecting to ``dbname`` (password via env only)."""
        info = self.conn.with_db(dbname) if dbname else self.conn
        return info.child_env(self.environ)

    def identities(self) -> list[str]:
        """age identities for decryption, from the identity file or the environment."""
        from pgvault.pipeline import load_identities  # pyrage: only when something is decrypted

        s = self.settings
        if s.age_identity or s.age_identity_file:
            # The same sentences as `config check`: the setting, the file, the expected format.
            # Only the key in use is judged (the environment's wins over the file).
            used = s if not s.age_identity else replace(s, age_identity_file=None)
            problems = identity_problems(used)
            if problems:
                raise ConfigError(problems)
        if s.age_identity:
            return load_identities(s.age_identity)
        if s.age_identity_file:
            try:
                with open(s.age_identity_file, encoding="utf-8") as f:
                    return load_identities(f.read())
            except OSError as e:
                raise ConfigError([f"cannot read age identity file {s.age_identity_file}: {e.strerror}"]) from None
        raise ConfigError(
            ["this backup is encrypted but no age identity is configured"],
            hint="set encryption.age_identity_file (or PGVAULT_ENCRYPTION_AGE_IDENTITY_FILE)",
        )


def build_context(settings: Settings, environ: Mapping[str, str] | None = None) -> Context:
    """Open the repository and gather connection parameters; does not connect yet."""
    env = dict(os.environ if environ is None else environ)
    s3 = s3_settings(settings) if settings.repository_url.startswith("s3://") else None
    storage = open_storage(settings.repository_url, s3=s3)
    return Context(settings=settings, storage=storage, conn=ConnInfo.from_dsn(settings.dsn, env), environ=env)
