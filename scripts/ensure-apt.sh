#!/usr/bin/env bash
# Installs the named Debian packages that are missing; does nothing when all are present.
# Without root or apt-get it names what is missing and exits 0, so `make run` still works
# for users who install the packages (or put the dataset files) themselves.
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "ensure-apt: missing Debian packages (install them yourself): ${missing[*]}" >&2
  exit 0
fi
echo "ensure-apt: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
