#!/bin/sh
# Entrypoint of pgvault's server image (Containerfile.server). Initialises $PGDATA on first start,
# then runs PostgreSQL $PG_MAJOR (14-18) in the foreground, archiving WAL with pgvault:
#   wal_level=replica, archive_mode=on, archive_command='pgvault wal push %p'
# pgvault reads its settings from the environment (PGVAULT_REPOSITORY_URL, PGVAULT_CLUSTER,
# AWS_* ...) or PGVAULT_CONFIG, which the server passes on to archive_command. Arguments are
# passed to postgres, so "-c name=value" overrides any of the above, e.g.
#   -c restore_command='pgvault wal fetch %f %p'
# First start: POSTGRES_PASSWORD_FILE (or POSTGRES_PASSWORD) sets the password of the postgres
# role; connections over TCP need it (scram-sha-256), local socket connections use peer.
set -eu
: "${PG_MAJOR:=18}" "${PGDATA:=/var/lib/postgresql/data}"
bin="/opt/postgresql/$PG_MAJOR/bin"
[ -x "$bin/postgres" ] || { echo "pgvault-server: no PostgreSQL $PG_MAJOR in this image (PG_MAJOR: 14-18)" >&2; exit 2; }
export PGDATA

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="${POSTGRES_PASSWORD_FILE:-}"
    if [ -z "$pwfile" ] && [ -n "${POSTGRES_PASSWORD:-}" ]; then
        pwfile="$(mktemp)"
        printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    fi
    "$bin/initdb" --pgdata="$PGDATA" --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 ${pwfile:+--pwfile="$pwfile"} >/dev/null
    [ "$pwfile" = "${POSTGRES_PASSWORD_FILE:-}" ] || rm -f "$pwfile"
    printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
fi
unset POSTGRES_PASSWORD  # archive_command inherits the server's environment

exec "$bin/postgres" -c listen_addresses='*' -c wal_level=replica -c archive_mode=on \
    -c archive_command='pgvault wal push %p' "$@"
