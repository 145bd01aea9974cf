#!/usr/bin/env bash
# Runs the test suite: installs/updates what it needs (scripts/setup.sh), sets up the environment
# (scripts/env.sh) and runs pytest with any arguments given, e.g.
#   scripts/test.sh                                   # everything under tests/
#   scripts/test.sh tests/integration -k pagila -x
# With CI=true a missing PostgreSQL or S3 server, podman (the container image tests), promtool, or
# a missing ../shared/testdata (the third-party Pagila and Chinook databases, which a fresh clone
# does not have), fails the run instead of skipping tests.
# PGVAULT_SKIP_SETUP=1 skips scripts/setup.sh (faster when you know the machine is set up);
# PGVAULT_SKIP_LINT=1 skips the ruff check that runs before the tests.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${PGVAULT_SKIP_SETUP:-}" != "1" ]]; then
    bash "$ROOT/scripts/setup.sh"
fi
# shellcheck source=scripts/env.sh
source "$ROOT/scripts/env.sh"
if [[ "${CI:-}" == "true" ]]; then
    export PGVAULT_REQUIRE_S3=1 PGVAULT_REQUIRE_PG=1 PGVAULT_REQUIRE_TESTDATA=1 PGVAULT_REQUIRE_PODMAN=1 \
           PGVAULT_REQUIRE_PROMTOOL=1
fi
cd "$ROOT"
# The lint gate (rules in pyproject.toml): under a second, before any server starts.
if [[ "${PGVAULT_SKIP_LINT:-}" != "1" ]]; then
    python -m ruff check --quiet src tests bench scripts || { echo "[test] ruff found problems (above)" >&2; exit 1; }
fi
exec python -m pytest -q -p no:cacheprovider "$@"
