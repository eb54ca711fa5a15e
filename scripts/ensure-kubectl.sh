#!/usr/bin/env bash
# Puts Debian's kubectl (package kubernetes-client, 1.20) at the path given, for the manifest
# checks of `make test`: the manifests are written for the kustomize that it renders.
#
# Installing the package is not always possible: a machine with Google Cloud CLI's `kubectl`
# package owns /usr/bin/kubectl as well, and dpkg refuses to overwrite it. So unless
# kubernetes-client is installed already, the binary is taken out of the package file
# (`apt-get download`, no root needed) and nothing on the system changes.
# Without apt it says what is missing and exits 0 (the checks then skip, or fail under CI=true).
set -euo pipefail
dest="$1"
[ -x "$dest" ] && exit 0
mkdir -p "$(dirname "$dest")"
if dpkg-query -W -f='${Status}' kubernetes-client 2>/dev/null | grep -q "install ok installed"; then
  ln -sf /usr/bin/kubectl "$dest"
  exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "ensure-kubectl: no apt-get; install Debian's kubernetes-client or put kubectl 1.20 at $dest" >&2
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q kubernetes-client 2>/dev/null) \
  || { [ "$(id -u)" -eq 0 ] && apt-get update -q >/dev/null && (cd "$work" && apt-get download -q kubernetes-client); }
dpkg-deb -x "$work"/kubernetes-client_*.deb "$work/root"
install -m 0755 "$work/root/usr/bin/kubectl" "$dest"
echo "ensure-kubectl: $("$dest" version --client --short 2>/dev/null || true) at $dest"
