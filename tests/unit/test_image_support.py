"""tests/support/image.py without podman: the image tests skip with a reason (or fail when podman is
required), and podman_run keeps environment values out of podman's argv."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from support import image


def test_missing_podman_skips_with_the_reason_or_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image.shutil, "which", lambda name: None)
    monkeypatch.delenv("PGVAULT_REQUIRE_PODMAN", raising=False)
    with pytest.raises(pytest.skip.Exception, match="podman not found.*PGVAULT_REQUIRE_PODMAN=1"):
        image.require_podman()
    monkeypatch.setenv("PGVAULT_REQUIRE_PODMAN", "1")
    with pytest.raises(pytest.fail.Exception, match="podman not found.*requires it"):
        image.require_podman()


def test_podman_run_passes_environment_values_outside_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        seen.update(argv=argv, env=kw["env"])
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(image.subprocess, "run", fake_run)
    image.podman_run("img:1", ["backup", "--all"], env={"PGPASSWORD": "s3cret value", "TMPDIR": "/scratch"},
                     volumes=["/a:/b:ro", ("/keys", "/keys")], entrypoint="sh")
    argv = seen["argv"]
    assert "s3cret value" not in " ".join(argv) and seen["env"]["PGPASSWORD"] == "s3cret value"
    assert argv[:3] == ["podman", "run", "--rm"] and argv[-3:] == ["img:1", "backup", "--all"]
    for opt in (["--runtime", "runc"], ["--network", "host"], ["--env", "PGPASSWORD"], ["--volume", "/a:/b:ro"],
                ["--volume", "/keys:/keys"], ["--entrypoint", "sh"], ["--env", "TMPDIR=/scratch"]):
        assert any(argv[i:i + 2] == opt for i in range(len(argv))), (opt, argv)
    # TMPDIR is the container's, by value: in podman's own environment it would steer podman itself
    assert seen["env"].get("TMPDIR") != "/scratch"
