"""The encryption registry drives the pipeline: adding a scheme is one entry in ``SCHEMES``.

A toy scheme (XOR with a one-byte key, never use it) is registered for the duration of a test and
must then appear in object-name suffixes, validation, error messages and round trips, with no
other code knowing its name.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest

from pgvault.errors import ConfigError, IntegrityError
from pgvault.pipeline import PipelineSpec, all_suffixes, read_stream, write_stream
from pgvault.pipeline.compress import CODECS
from pgvault.pipeline.digest import PullStage, PushStage, SupportsRead, SupportsWrite
from pgvault.pipeline.encryption import SCHEMES, EncryptionScheme, get_scheme, scheme_for_recipients


class _Xor(EncryptionScheme):
    name = "xor"
    suffix = ".xor"
    takes_recipients = True
    needs_identities = True

    def problems(self, recipients: object) -> list[str]:
        if not recipients:
            return ["encryption is xor but no recipients are given"]
        return self.recipient_problems(recipients)

    def recipient_problems(self, recipients: object) -> list[str]:
        if not isinstance(recipients, (list, tuple)):
            return ["recipients must be a list of public keys"]
        return [f"recipient #{i} is not xor:NN" for i, r in enumerate(recipients, 1)
                if not (isinstance(r, str) and r.startswith("xor:"))]

    def encrypting_writer(self, sink: SupportsWrite, recipients: Sequence[str], *, chunk_size: int) -> PushStage:
        return _XorWriter(sink, int(recipients[0][4:]))

    def prepare_identities(self, identities: Sequence[str]) -> Any:
        if not identities:
            raise ConfigError(["the object is encrypted with xor but no identity was given"])
        return int(identities[0])

    def decrypting_reader(self, stored: SupportsRead, keys: Any, *, recipients: Sequence[str], chunk_size: int) -> PullStage:
        return _XorReader(stored, keys)


class _XorWriter:
    def __init__(self, sink: SupportsWrite, key: int) -> None:
        self.sink, self.key = sink, key

    def write(self, data: bytes) -> int:
        self.sink.write(bytes(b ^ self.key for b in data))
        return len(data)

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _XorReader:
    def __init__(self, stored: SupportsRead, key: int) -> None:
        self.stored, self.key = stored, key

    def read(self, size: int) -> bytes:
        return bytes(b ^ self.key for b in self.stored.read(size))

    def close(self) -> None:
        pass


@pytest.fixture
def xor(monkeypatch: pytest.MonkeyPatch) -> EncryptionScheme:
    scheme = _Xor()
    monkeypatch.setitem(SCHEMES, scheme.name, scheme)
    return scheme


def test_builtin_schemes_give_todays_suffixes_and_needs() -> None:
    assert list(SCHEMES) == ["age", "none"]
    assert (SCHEMES["age"].suffix, SCHEMES["age"].takes_recipients, SCHEMES["age"].needs_identities) == (".age", True, True)
    assert (SCHEMES["none"].suffix, SCHEMES["none"].takes_recipients, SCHEMES["none"].needs_identities) == ("", False, False)
    assert all_suffixes() == {"", ".zst", ".gz", ".age", ".zst.age", ".gz.age"}
    assert scheme_for_recipients(()) == "none"
    assert scheme_for_recipients(("age1...",)) == "age"


def test_a_registered_scheme_drives_suffixes(xor: EncryptionScheme) -> None:
    assert {".xor", ".zst.xor", ".gz.xor"} <= all_suffixes()
    assert all_suffixes() == {c.suffix + s.suffix for c in CODECS.values() for s in SCHEMES.values()}
    assert PipelineSpec("zstd", None, "xor", ("xor:7",)).suffix() == ".zst.xor"
    assert get_scheme("xor") is xor


def test_a_registered_scheme_drives_validation(xor: EncryptionScheme) -> None:
    assert PipelineSpec("zstd", None, "xor", ("xor:7",)).validate() == []
    assert PipelineSpec("zstd", None, "xor", ()).validate() == ["encryption is xor but no recipients are given"]
    assert PipelineSpec("zstd", None, "xor", ("age1x",)).validate() == ["recipient #1 is not xor:NN"]
    # The unknown-name sentence lists it, and "none" with recipients names every scheme that takes them.
    problems = PipelineSpec("zstd", None, "rot13").validate()
    assert problems == ["unknown encryption 'rot13': choose one of age, none, xor"]
    with pytest.raises(ConfigError, match="choose one of age, none, xor"):
        PipelineSpec("zstd", None, "rot13").suffix()
    problems = PipelineSpec("zstd", None, "none", ("xor:7",)).validate()
    assert problems[0] == "recipients are given but encryption is none: set encryption to age or xor or remove the recipients"


@pytest.mark.parametrize("compression", sorted(CODECS))
def test_a_registered_scheme_drives_both_stream_directions(xor: EncryptionScheme, compression: str) -> None:
    spec = PipelineSpec(compression, None, "xor", ("xor:90",))
    raw = b"pgvault " * 10_000
    stored = io.BytesIO()
    result = write_stream(io.BytesIO(raw), stored, spec, chunk_size=4096)
    assert b"pgvault" not in stored.getvalue()

    out = io.BytesIO()
    assert read_stream(io.BytesIO(stored.getvalue()), out, spec, identities=["90"], expected=result) == result
    assert out.getvalue() == raw
    with pytest.raises(ConfigError, match="no identity"):
        read_stream(io.BytesIO(stored.getvalue()), io.BytesIO(), spec, expected=result)
    with pytest.raises(IntegrityError):  # wrong key: restored bytes differ from the manifest
        read_stream(io.BytesIO(stored.getvalue()), io.BytesIO(), spec, identities=["91"], expected=result)


def test_manifest_form_is_unchanged() -> None:
    spec = PipelineSpec("zstd", 3, "age", ("age1abc",))
    assert spec.to_json() == {"compression": "zstd", "level": 3, "encryption": "age", "recipients": ["age1abc"]}
    assert PipelineSpec.from_json(spec.to_json()) == spec


def test_registry_import_does_not_load_pyrage_for_wal_push() -> None:
    code = "import pgvault.cli.wal, sys; print('pyrage' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "False"
