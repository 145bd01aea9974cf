"""pgvault's container image (deploy/image) in tests: build it once per input hash, run commands in it.

- ``ensure_image(variant="tool") -> str``: the image reference, built with deploy/image/build.sh
  only when podman's store lacks an image tagged with the hash of its inputs (deploy/image/*,
  src/pgvault/**, pyproject.toml), so repeated runs on one machine reuse it.
- ``podman_run(image, args, *, env=None, volumes=(), timeout=600, ...)``: one ``podman run --rm``
  (runc, host network: the test servers listen on 127.0.0.1). Environment values travel in podman's
  own environment and only their names (``--env NAME``) in its argv, so secrets never appear in a
  command line.

Also a pytest plugin (loaded by tests/conftest.py): the session fixture ``podman`` skips the test
with the reason when podman cannot build or run the image here -- or fails it under
``PGVAULT_REQUIRE_PODMAN=1`` (CI) -- and ``tool_image`` / ``server_image`` give the references.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import pytest

__all__ = ["ensure_image", "podman_run", "podman_problem", "require_podman", "BUILD_SCRIPT"]

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "deploy" / "image" / "build.sh"
#: A cold build (mmdebstrap + pip downloads) takes about three minutes here; allow for slow mirrors.
BUILD_TIMEOUT = 1800
Volume = str | tuple[str | Path, str]


def podman_problem() -> str | None:
    """Why the image cannot be built and run here, or None if it can."""
    if shutil.which("podman") is None:
        return "podman not found (scripts/setup.sh installs podman, runc, uidmap and mmdebstrap)"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap not found (scripts/setup.sh installs it)"
    if os.geteuid() != 0:
        return "building the image needs root (mmdebstrap --mode=root)"
    return None


def _build_script(*args: str, timeout: float) -> str:
    proc = subprocess.run(["bash", str(BUILD_SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"deploy/image/build.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout.strip().splitlines()[-1]


@cache
def ensure_image(variant: str = "tool") -> str:
    """Reference of the ``variant`` image ("tool" or "server") of this checkout, built if missing."""
    ref = _build_script("--variant", variant, "--print-tag", timeout=60)
    if subprocess.run(["podman", "image", "exists", ref]).returncode == 0:
        return ref
    built = _build_script("--variant", variant, timeout=BUILD_TIMEOUT)
    if built != ref:
        raise RuntimeError(f"deploy/image/build.sh built {built}, expected {ref}")
    return ref


def _volume_arg(v: Volume) -> str:
    if isinstance(v, str):
        return v
    host, inside = v
    return f"{host}:{inside}"


# Variables podman reads for itself: passed by name, TMPDIR=/scratch made podman look for its own
# temporary files there.  None of them is a secret, so they go by value.
PODMAN_OWN = frozenset({"TMPDIR", "HOME", "PATH", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME"})


def podman_run(
    image: str,
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    volumes: Sequence[Volume] = (),
    timeout: float = 600,
    entrypoint: str | None = None,
    options: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """``podman run --rm`` of ``image`` with ``args`` (the entrypoint's arguments), output captured.

    ``env``: variables for the container, passed by name only (values via podman's environment, so
    a secret never shows in argv) -- except those that would steer podman itself (:data:`PODMAN_OWN`),
    which go by value.
    ``volumes``: ``"HOST:CONTAINER[:OPTIONS]"`` strings or ``(host, container)`` pairs.
    ``entrypoint`` replaces the image's (``pgvault``), as a Kubernetes ``command:`` does;
    ``options`` are further ``podman run`` options (e.g. ``["--user", "0"]``).
    The container is removed even when ``timeout`` expires (then ``TimeoutExpired`` is raised).
    """
    name = f"pgvault-test-{uuid.uuid4().hex[:12]}"
    argv = ["podman", "run", "--rm", "--name", name, "--runtime", "runc", "--network", "host", "--pull", "never"]
    podman_env = dict(os.environ)
    for key, value in (env or {}).items():
        if key in PODMAN_OWN:
            argv += ["--env", f"{key}={value}"]
        else:
            argv += ["--env", key]
            podman_env[key] = value
    for v in volumes:
        argv += ["--volume", _volume_arg(v)]
    if entrypoint is not None:
        argv += ["--entrypoint", entrypoint]
    argv += [*options, image, *args]
    try:
        return subprocess.run(argv, env=podman_env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        subprocess.run(["podman", "rm", "--force", "--time", "0", name], capture_output=True, timeout=60)
        raise


# --- pytest plugin -------------------------------------------------------------------------------


def _require_podman() -> bool:
    return os.environ.get("PGVAULT_REQUIRE_PODMAN", "") not in ("", "0")


def require_podman() -> None:
    """Skip the calling test (with the reason) when the image cannot be built and run here; fail it
    instead under ``PGVAULT_REQUIRE_PODMAN=1``."""
    problem = podman_problem()
    if problem is None:
        return
    if _require_podman():
        pytest.fail(f"{problem}; PGVAULT_REQUIRE_PODMAN=1 requires it", pytrace=False)
    pytest.skip(f"{problem}; set PGVAULT_REQUIRE_PODMAN=1 to make this a failure")


@pytest.fixture(scope="session")
def podman() -> None:
    """See :func:`require_podman`."""
    require_podman()


def _image_fixture(variant: str) -> str:
    try:
        return ensure_image(variant)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        pytest.fail(f"could not build the {variant} image: {e}", pytrace=False)


@pytest.fixture(scope="session")
def tool_image(podman: None) -> str:
    """Reference of pgvault's image (entrypoint ``pgvault``), built if missing."""
    return _image_fixture("tool")


@pytest.fixture(scope="session")
def server_image(podman: None) -> str:
    """Reference of the server variant (PostgreSQL with archive_command = pgvault), built if missing."""
    return _image_fixture("server")
