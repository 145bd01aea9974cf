#!/usr/bin/env bash
# mmdebstrap customize hook of deploy/image/build.sh: runs on the host with the new root
# filesystem as $1, after the Debian packages are installed. Installs what build.sh fetched into
# $PGVAULT_IMAGE_STAGE -- offline, so the build's only network use is the host's apt and pip -- and
# adds the non-root user pgvault ($PGVAULT_IMAGE_UID).
set -euo pipefail
root="$1"
stage="${PGVAULT_IMAGE_STAGE:?}"
uid="${PGVAULT_IMAGE_UID:?}"

# PostgreSQL 14-18 (relocatable builds): /opt/postgresql/<major>/{bin,lib,share}
mkdir -p "$root/opt/postgresql"
cp -a "$stage/postgresql/." "$root/opt/postgresql/"
for d in "$root"/opt/postgresql/*/bin; do
    chroot "$root" "${d#"$root"}/pg_dump" --version >/dev/null || { echo "${d#"$root"}/pg_dump does not run" >&2; exit 1; }
done

# pgvault and its dependencies in a venv, from the wheels only; pip and setuptools are removed
# afterwards (nothing installs at run time).
cp -a "$stage/wheels" "$root/tmp/pgvault-wheels"
chroot "$root" python3 -m venv /opt/pgvault
chroot "$root" /opt/pgvault/bin/python -m pip install --quiet --no-index --no-cache-dir \
    --disable-pip-version-check --find-links /tmp/pgvault-wheels pgvault
chroot "$root" /opt/pgvault/bin/python -m pip uninstall --quiet --yes pip setuptools
rm -rf "$root/tmp/pgvault-wheels"
ln -s /opt/pgvault/bin/pgvault "$root/usr/local/bin/pgvault"
chroot "$root" pgvault --version >/dev/null

# The user (no useradd: the passwd package is not in the apt variant).
echo "pgvault:x:$uid:$uid:pgvault:/home/pgvault:/usr/sbin/nologin" >>"$root/etc/passwd"
echo "pgvault:x:$uid:" >>"$root/etc/group"
install -d -o "$uid" -g "$uid" -m 0750 "$root/home/pgvault"

# Leftovers that only cost space: apt's package lists are removed by mmdebstrap itself.
rm -rf "$root"/var/cache/debconf/*-old "$root"/var/log/apt/* "$root"/var/log/dpkg.log
