#!/usr/bin/env bash
# Builds stand-ins for the images that Dockerfile and docker-compose.yml name, for a Docker
# engine that cannot pull from any registry (the test machines here).
#
#   base:       debootstrap'ed Debian bookworm with python3/venv/pip, tagged as the Dockerfile's
#               FROM (python:3.11-slim-bookworm); it trusts this machine's locally added CA
#               certificates so that pip and apt work through a TLS-inspecting proxy. That trust
#               lives in this stand-in only, never in the project's Dockerfile.
#   prometheus: the base plus Debian's prometheus binaries (copied from the host's package)
#               and wget, tagged as docker-compose.yml's Prometheus image.
#   nginx:      the base plus Debian's nginx package (1.22), tagged as docker-compose.yml's
#               nginx image; deploy/nginx/nginx.conf keeps to what 1.22 has for this reason.
#
# Usage: standin-images.sh  (DOCKER_HOST must point at the engine; DOCKER names the client)
# Env:   STANDIN_CACHE  folder for the debootstrap tarball (reused when its key matches);
#                       unset or empty: no cache, debootstrap every time.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
DOCKER="${DOCKER:-/usr/bin/docker}"
BASE_IMAGE="$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$root/Dockerfile" | head -n1)"
PROM_IMAGE="$(sed -n 's/^ *image: *\(prom\/prometheus:[^ ]*\).*/\1/p' "$root/docker-compose.yml" | head -n1)"
SUITE=bookworm
INCLUDE=python3,python3-venv,python3-pip,ca-certificates
[ -n "$BASE_IMAGE" ] || { echo "standin: no 'ARG PYTHON_IMAGE=' in Dockerfile" >&2; exit 1; }
NGINX_IMAGE="$(sed -n 's/^ *image: *\(nginx:[^ ]*\).*/\1/p' "$root/docker-compose.yml" | head -n1)"
[ -n "$PROM_IMAGE" ] || { echo "standin: no prom/prometheus image in docker-compose.yml" >&2; exit 1; }
[ -n "$NGINX_IMAGE" ] || { echo "standin: no nginx image in docker-compose.yml" >&2; exit 1; }

log() { printf '[standin %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The first http(s) Debian mirror of this machine's apt sources (deb822 or one-line format).
mirror() {
  local m
  m="$(grep -rhoE 'https?://[^ ]*/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | grep -v -- '-security' | head -n1 | tr -d ' ' || true)"
  echo "${m:-http://deb.debian.org/debian}"
}

# Locally added CA certificates of this machine (the TLS-inspecting proxy's among them).
local_cas() { find /usr/local/share/ca-certificates -type f -name '*.crt' 2>/dev/null | sort; }

work="$(mktemp -d "${TMPDIR:-/tmp}/convserve-standin.XXXXXX")"
cleanup() {
  # debootstrap mounts /proc, /dev and more in the target; an interrupted run may leave them.
  { grep -o " ${work}[^ ]*" /proc/mounts || true; } | sort -r | while read -r mnt; do
    umount -l "$mnt" 2>/dev/null || true
  done
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

tarball="$work/base.tar"
key="$(
  { echo "$SUITE $INCLUDE $(mirror)"; local_cas | xargs -r cat; } | sha256sum | cut -c1-16
)"
if [ -n "${STANDIN_CACHE:-}" ] && [ -s "$STANDIN_CACHE/base-$key.tar" ]; then
  log "base rootfs from cache $STANDIN_CACHE/base-$key.tar"
  tarball="$STANDIN_CACHE/base-$key.tar"
else
  rootfs="$work/rootfs"
  log "debootstrap $SUITE from $(mirror) (about a minute)"
  # Two stages, with dpkg told not to fsync every file in between (as Docker's own
  # debootstrap image script does): the second stage takes half the time.
  timeout 300 debootstrap --foreign --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" \
    "$(mirror)" >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
  echo force-unsafe-io >"$rootfs/etc/dpkg/dpkg.cfg.d/unsafe-io"
  timeout 300 chroot "$rootfs" /debootstrap/debootstrap --second-stage \
    >>"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
  while read -r crt; do
    cp "$crt" "$rootfs/usr/local/share/ca-certificates/"
  done < <(local_cas)
  chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
  # Keep the image lean, as the official slim images are.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
  tar -C "$rootfs" --numeric-owner -cf "$tarball" .
  rm -rf --one-file-system "$rootfs"
  if [ -n "${STANDIN_CACHE:-}" ]; then
    mkdir -p "$STANDIN_CACHE"
    rm -f "$STANDIN_CACHE"/base-*.tar
    cp "$tarball" "$STANDIN_CACHE/base-$key.tar"
  fi
fi

log "import $BASE_IMAGE"
"$DOCKER" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' \
  "$tarball" "$BASE_IMAGE" >/dev/null

log "build $PROM_IMAGE from $BASE_IMAGE + the host's Debian prometheus"
ctx="$work/prometheus"
mkdir -p "$ctx"
cp /usr/bin/prometheus /usr/bin/promtool "$ctx/"
cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN apt-get update -q && apt-get install -y -q --no-install-recommends wget \\
 && rm -rf /var/lib/apt/lists/* \\
 && mkdir -p /etc/prometheus /prometheus && chown nobody:nogroup /prometheus
COPY prometheus promtool /bin/
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
EOF
DOCKER_BUILDKIT=0 "$DOCKER" build -q -t "$PROM_IMAGE" "$ctx" >/dev/null
log "build $NGINX_IMAGE from $BASE_IMAGE + Debian's nginx"
ctx="$work/nginx"
mkdir -p "$ctx"
cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
# policy-rc.d: the package's scripts must not start nginx inside the build.
RUN printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \\
 && apt-get update -q && apt-get install -y -q --no-install-recommends nginx \\
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* /usr/sbin/policy-rc.d
EXPOSE 8000
ENTRYPOINT ["nginx", "-e", "stderr"]
EOF
DOCKER_BUILDKIT=0 "$DOCKER" build -q -t "$NGINX_IMAGE" "$ctx" >/dev/null
log "stand-ins ready: $BASE_IMAGE, $PROM_IMAGE, $NGINX_IMAGE"
