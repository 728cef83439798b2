#!/usr/bin/env bash
# TEST SCAFFOLDING, not part of the deployment: on machines that cannot pull public images (CI here has no
# registry), build a stand-in for `python:3.11-slim-bookworm` from Debian's own packages with debootstrap,
# so `docker build` of our Dockerfile works unchanged. Anywhere a registry is reachable, use the real image.
#
#   deploy/standins/build-python-base.sh [TAG]      (default TAG: python:3.11-slim-bookworm; needs root)
#
# Debian bookworm's Python is 3.11 like the real image's, but lives in /usr/bin (python/pip are linked into
# /usr/local/bin). The mirror is the one this machine's apt uses; the machine's CA certificates go in (and
# SSL_CERT_FILE names the bundle, which uv reads instead of its built-in roots), so pip/uv inside trust the
# same TLS as the host. The root filesystem is cached as a tarball under
# ~/.cache/fetch-etl/standins/, keyed by this script, the mirror and the certificates: reruns only import it.
set -euo pipefail

TAG="${1:-python:3.11-slim-bookworm}"
SUITE=bookworm
PACKAGES="python3 python3-pip python3-venv ca-certificates"
CACHE_DIR="${FETCH_ETL_CACHE:-$HOME/.cache/fetch-etl}/standins"

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "stand-in $TAG: already in this engine"
    exit 0
fi

mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
certs=(/usr/local/share/ca-certificates/*.crt)
[ -e "${certs[0]}" ] || certs=()
# Bump RECIPE when the root filesystem's steps below change, so the cached tarball is rebuilt.
RECIPE=1
key="$( (echo "$RECIPE $SUITE $PACKAGES $mirror"; cat "${certs[@]}" /dev/null) | sha256sum | cut -c1-16)"
tarball="$CACHE_DIR/python-3.11-$SUITE-$key.tar"

if ! [ -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { echo "needs debootstrap (apt-get install -y debootstrap)" >&2; exit 1; }
    mkdir -p "$CACHE_DIR"
    root="$(mktemp -d /tmp/fetch-etl-rootfs.XXXXXX)"
    trap 'rm -rf "$root" "$root.log"' EXIT
    echo "stand-in $TAG: debootstrap $SUITE from $mirror (about a minute)"
    debootstrap --variant=minbase "$SUITE" "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
    rm -f "$root.log"
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"  # no service starts inside the chroot
    chmod +x "$root/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    mkdir -p "$root/usr/local/share/ca-certificates"
    for cert in "${certs[@]}"; do cp "$cert" "$root/usr/local/share/ca-certificates/"; done
    chroot "$root" /bin/sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends $PACKAGES && update-ca-certificates && apt-get clean" >"$root.log" 2>&1 \
        || { tail -20 "$root.log" >&2; exit 1; }
    rm -f "$root.log"
    # As in the real image: pip may install into the system Python, and python/pip are on /usr/local/bin.
    rm -f "$root"/usr/lib/python3.11/EXTERNALLY-MANAGED
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python3"
    ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root/usr/sbin/policy-rc.d"
    : >"$root/etc/resolv.conf"
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
fi

docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    -c 'CMD ["python3"]' \
    "$tarball" "$TAG" >/dev/null
echo "stand-in $TAG: imported from $tarball ($(docker image inspect -f '{{.Size}}' "$TAG") bytes)"
