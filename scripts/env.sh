# shellcheck shell=bash
# Source me:  . scripts/env.sh
# Puts the repo's .venv first on PATH and points PGVAULT_POSTGRES_BIN_DIRS (the postgres.bin_dirs
# setting, colon-separated here) at the PostgreSQL 18 that
# scripts/setup.sh unpacked (read from ${PGVAULT_CACHE:-/var/cache/pgvault}/pg18.bindir) and at
# Debian's /usr/lib/postgresql/<major>/bin, so that both 15 and 18 are found.  Safe to source
# repeatedly and under `set -euo pipefail`.

_pgv_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
_pgv_cache="${PGVAULT_CACHE:-/var/cache/pgvault}"

case ":${PATH:-}:" in
    *":$_pgv_root/.venv/bin:"*) ;;
    *) PATH="$_pgv_root/.venv/bin${PATH:+:$PATH}" ;;
esac
export PATH
export VIRTUAL_ENV="$_pgv_root/.venv"

_pgv_dirs="${PGVAULT_POSTGRES_BIN_DIRS:-${PGVAULT_PG_BINDIRS:-}}"
_pgv_add() {
    [[ -d "$1" ]] || return 0
    case ":$_pgv_dirs:" in
        *":$1:"*) ;;
        *) _pgv_dirs="${_pgv_dirs:+$_pgv_dirs:}$1" ;;
    esac
}
if [[ -r "$_pgv_cache/pg18.bindir" ]]; then
    _pgv_add "$(cat "$_pgv_cache/pg18.bindir")"
fi
for _pgv_d in /usr/lib/postgresql/*/bin; do
    _pgv_add "$_pgv_d"
done
export PGVAULT_POSTGRES_BIN_DIRS="$_pgv_dirs"
unset -f _pgv_add
unset _pgv_root _pgv_cache _pgv_dirs _pgv_d
