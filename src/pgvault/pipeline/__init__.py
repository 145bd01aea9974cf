"""The stream pipeline: the one place that stacks the stages every stored byte stream passes.

::

    open_writer:  write(raw) → digest(raw) → compress → encrypt → digest(stored) → sink.write
    open_reader:  source.read → digest(stored) → decrypt → decompress → digest(raw) → read()

Like pgBackRest's filter groups, observers (size + SHA-256) sit at both ends and transforms in
between; the results come back as a :class:`StreamResult` once the stream is done and go into
the manifest together with the :class:`PipelineSpec`, from which ``open_reader`` rebuilds the
exact inverse stack.  Stage order is fixed in :mod:`pgvault.pipeline.files` and nowhere else.

Both ends are file objects, so a producer writes (and a consumer reads) in its own thread with no
pipe in between; ``write_stream`` / ``read_stream`` pump a source into one / one into a sink.
Memory is bounded by ``chunk_size`` plus the codecs' fixed windows, whatever the stream length.

Restores usually write into ``pg_restore``'s stdin, so every kind of damage - corrupt, truncated,
undecryptable, or not what the manifest recorded - is reported by *raising before the end of the
stream is returned*: the caller then kills ``pg_restore`` rather than closing its stdin, and a
``--single-transaction`` restore commits nothing.  Bytes already returned before the damage was
found are not retracted; discarding them is the caller's job.

Modules: :mod:`~pgvault.pipeline.spec` (the values), :mod:`~pgvault.pipeline.files` (the streams),
:mod:`~pgvault.pipeline.compress` (``CODECS``), :mod:`~pgvault.pipeline.encryption` (``SCHEMES``),
:mod:`~pgvault.pipeline.encrypt` (age), :mod:`~pgvault.pipeline.digest` (observers, stage shapes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgvault.pipeline.digest import SupportsRead, SupportsWrite
from pgvault.pipeline.encryption import SCHEMES
from pgvault.pipeline.spec import PipelineSpec, StreamResult, all_suffixes

if TYPE_CHECKING:
    from pgvault.pipeline.encrypt import load_identities
    from pgvault.pipeline.files import (
        PipelineReader,
        PipelineWriter,
        open_reader,
        open_writer,
        read_stream,
        write_stream,
    )

# The streams (files.py) and age (encrypt.py: pyrage) are imported on first use of one of their
# names: the values above (a spec, the suffixes, the registries) are all that loading the settings
# or a "not found" from ``wal fetch`` needs, and PostgreSQL waits for that process's start-up.
_LAZY = {
    "load_identities": "encrypt",
    **dict.fromkeys(("PipelineReader", "PipelineWriter", "open_reader", "open_writer", "read_stream",
                     "write_stream"), "files"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value

__all__ = [
    "PipelineSpec",
    "StreamResult",
    "open_writer",
    "open_reader",
    "PipelineWriter",
    "PipelineReader",
    "write_stream",
    "read_stream",
    "load_identities",
    "all_suffixes",
    "SupportsRead",
    "SupportsWrite",
    "ENCRYPTIONS",
]

ENCRYPTIONS = tuple(SCHEMES)  # the names of pgvault.pipeline.encryption.SCHEMES
