#!/usr/bin/env bash
# One command, fresh machine: install what is needed, start a throwaway PostgreSQL cluster with
# sample data, back it up into ./demo/repo, list it, restore it into a new database, verify it,
# drill it and show the status.  Needs nothing outside the repository: the sample data is generated
# (pgvault.sample).  Arguments go to demo.py (--scale N for a bigger sample).
# PGVAULT_SKIP_SETUP=1 skips scripts/setup.sh (faster when you know the machine is set up).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${PGVAULT_SKIP_SETUP:-}" != "1" ]]; then
    bash "$ROOT/scripts/setup.sh"
fi
# shellcheck source=scripts/env.sh
source "$ROOT/scripts/env.sh"
exec python "$ROOT/scripts/demo.py" "$@"
