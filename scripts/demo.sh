#!/usr/bin/env bash
# One command, fresh machine: install what is needed, start a throwaway PostgreSQL cluster with
# sample data, back it up into ./demo/repo, list it, restore it into a new database, verify it,
# drill it and show the status.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
# shellcheck source=scripts/env.sh
source "$ROOT/scripts/env.sh"
exec python "$ROOT/scripts/demo.py" "$@"
