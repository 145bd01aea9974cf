"""open_writer's job_size: zstd workers taking bounded jobs write the same standard stream."""

from __future__ import annotations

import io
import os

import pytest
import zstandard

from pgvault.pipeline import PipelineSpec, open_reader, open_writer

DATA = (os.urandom(300_000) + b"pgvault " * 200_000) * 3  # ~5.7 MB: several 1 MiB jobs


@pytest.mark.parametrize(("threads", "job_size"), [(1, 1 << 20), (2, 1 << 20), (0, 1 << 20), (1, 0)])
def test_bounded_jobs_round_trip_and_stay_one_checked_zstd_stream(threads: int, job_size: int) -> None:
    spec = PipelineSpec("zstd", 3, "none", ())
    sink = io.BytesIO()
    with open_writer(sink, spec, threads=threads, chunk_size=256 << 10, job_size=job_size) as out:
        for i in range(0, len(DATA), 100_000):
            out.write(DATA[i : i + 100_000])
    stored = sink.getvalue()
    assert zstandard.ZstdDecompressor().decompressobj().decompress(stored) == DATA  # plain `zstd -d`
    params = zstandard.get_frame_parameters(stored)
    assert params.has_checksum
    reader = open_reader(io.BytesIO(stored), spec, expected=out.result)
    assert reader.read() == DATA


def test_job_size_is_what_the_workers_are_given(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[zstandard.ZstdCompressionParameters] = []
    real = zstandard.ZstdCompressor

    def spy(*args: object, **kwargs: object) -> zstandard.ZstdCompressor:
        if "compression_params" in kwargs:
            seen.append(kwargs["compression_params"])  # type: ignore[arg-type]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(zstandard, "ZstdCompressor", spy)
    with open_writer(io.BytesIO(), PipelineSpec("zstd", 3, "none", ()), threads=1, job_size=1 << 20) as out:
        out.write(b"x")
    assert [(p.threads, p.job_size, p.write_checksum) for p in seen] == [(1, 1 << 20, 1)]
