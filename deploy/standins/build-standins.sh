#!/usr/bin/env bash
# TEST SCAFFOLDING, not part of the deployment: stand-ins for the three public images docker-compose.yml
# names besides our own, for machines that cannot pull them (CI here has no registry):
#   postgres:17-bookworm                   Debian's PostgreSQL 15 behind postgres-entrypoint.sh (UTF8)
#   fetchdocker/data-takehome-postgres     that, user/password/db postgres, plus the reference user_logins DDL
#   fetchdocker/data-takehome-localstack   LocalStack 1.0.4 (the py3.10 venv fetch_etl_tests/localstack_legacy.py
#                                          builds, with pyenv's Python it was made from) whose init hook creates
#                                          login-queue and preloads compose_probe.py's synthetic messages
#
#   deploy/standins/build-standins.sh      (needs root, debootstrap, DOCKER_HOST on an engine, uv)
#
# One debootstrap root filesystem (PostgreSQL, curl, the C libraries pyenv's Python links) is cached as a
# tarball under ~/.cache/fetch-etl/standins/, keyed by a hash of this recipe, the mirror and the machine's CA
# certificates; the images on top are small `docker build`s, made anew on each (fresh) engine.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DOCKER_BUILDKIT=0

SUITE=bookworm
PACKAGES="postgresql-15 curl ca-certificates libssl3 libsqlite3-0 libffi8 zlib1g libbz2-1.0 liblzma5 libreadline8 libncursesw6 libgdbm6 libuuid1"
CACHE_DIR="${FETCH_ETL_CACHE:-$HOME/.cache/fetch-etl}/standins"
BASE=fetch-etl-standin-base:local
# Bump RECIPE when the root filesystem's steps below change, so the cached tarball is rebuilt.
RECIPE=1

mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
certs=(/usr/local/share/ca-certificates/*.crt)
[ -e "${certs[0]}" ] || certs=()
key="$( (echo "$RECIPE $SUITE $PACKAGES $mirror"; cat "${certs[@]}" /dev/null) | sha256sum | cut -c1-16)"
tarball="$CACHE_DIR/standin-base-$SUITE-$key.tar"
work="$(mktemp -d /tmp/fetch-etl-standins.XXXXXX)"
trap 'rm -rf "$work"' EXIT

if ! [ -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { echo "needs debootstrap (apt-get install -y debootstrap)" >&2; exit 1; }
    mkdir -p "$CACHE_DIR"
    root="$work/root"
    echo "stand-in base: debootstrap $SUITE from $mirror, then $PACKAGES"
    debootstrap --variant=minbase "$SUITE" "$root" "$mirror" >"$work/log" 2>&1 || { tail -20 "$work/log" >&2; exit 1; }
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"  # no service starts inside the chroot
    chmod +x "$root/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    mkdir -p "$root/usr/local/share/ca-certificates"
    for cert in "${certs[@]}"; do cp "$cert" "$root/usr/local/share/ca-certificates/"; done
    chroot "$root" /bin/sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends $PACKAGES && update-ca-certificates && apt-get clean" >"$work/log" 2>&1 \
        || { tail -20 "$work/log" >&2; exit 1; }
    # Debian's package creates and starts a cluster of its own: the entrypoint makes the one it serves.
    rm -rf "$root"/var/lib/postgresql/15 "$root"/etc/postgresql/15
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root/usr/sbin/policy-rc.d"
    : >"$root/etc/resolv.conf"
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
fi
docker import -c 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' "$tarball" "$BASE" >/dev/null
echo "stand-in base: imported from $tarball"

build() {  # build TAG CONTEXT_DIR: a quiet docker build, its log shown only when it fails
    docker build -q -t "$1" "$2" >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; exit 1; }
    echo "stand-in $1: built"
}

# postgres:17-bookworm
mkdir -p "$work/postgres"
cp deploy/standins/postgres-entrypoint.sh "$work/postgres/"
cat >"$work/postgres/Dockerfile" <<DOCKERFILE
FROM $BASE
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PGDATA=/var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
DOCKERFILE
build postgres:17-bookworm "$work/postgres"

# fetchdocker/data-takehome-postgres: the reference warehouse (user, password and database postgres)
mkdir -p "$work/warehouse"
uv run --frozen python deploy/standins/compose_probe.py ddl >"$work/warehouse/user_logins.sql"
cat >"$work/warehouse/Dockerfile" <<'DOCKERFILE'
FROM postgres:17-bookworm
ENV POSTGRES_USER=postgres POSTGRES_PASSWORD=postgres POSTGRES_DB=postgres
COPY user_logins.sql /docker-entrypoint-initdb.d/
DOCKERFILE
build fetchdocker/data-takehome-postgres "$work/warehouse"

# fetchdocker/data-takehome-localstack: the cached venv and its base Python, at the paths they were built at
# (the venv's scripts name them), streamed to the build as one tar context.
localstack="$(uv run --frozen python -m fetch_etl_tests.localstack_legacy build)"
venv="$(dirname "$(dirname "$localstack")")"
python_home="$(awk -F' = ' '$1 == "home" {print $2}' "$venv/pyvenv.cfg")"
python_root="$(dirname "$python_home")"
mkdir -p "$work/localstack"
cp deploy/standins/localstack-entrypoint.sh deploy/standins/localstack-preload.py "$work/localstack/"
uv run --frozen python deploy/standins/compose_probe.py preload-json >"$work/localstack/preload.json"
cat >"$work/localstack/Dockerfile" <<DOCKERFILE
FROM $BASE
COPY ${python_root#/} $python_root
COPY ${venv#/} $venv
COPY localstack-entrypoint.sh localstack-preload.py preload.json /opt/standin/
ENV PATH=$venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EXPOSE 4566
ENTRYPOINT ["/opt/standin/localstack-entrypoint.sh"]
DOCKERFILE
tar -c -C / "${python_root#/}" "${venv#/}" -C "$work/localstack" . \
    | docker build -q -t fetchdocker/data-takehome-localstack - >"$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log" >&2; exit 1; }
echo "stand-in fetchdocker/data-takehome-localstack: built (LocalStack 1.0.4 from $venv)"
