#!/usr/bin/env bash
# Regenerates requirements.lock: every runtime dependency of pyproject.toml, transitively, pinned,
# as pip resolves them today for CPython 3.11 on Linux. torch is left out (the Dockerfile installs
# the CPU build itself) and so is the project. Run after changing [project].dependencies;
# tests/deploy checks that the lock still satisfies pyproject.toml.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$(mktemp -d "${TMPDIR:-/tmp}/convserve-lock.XXXXXX")"
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
python3 -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
  "$root/pyproject.toml" >"$venv/deps.txt"
"$venv/bin/pip" install -q -r "$venv/deps.txt"
{
  echo "# Pinned runtime dependencies of convserve for the Docker image (torch excluded: the"
  echo "# Dockerfile installs its CPU build). Regenerate with deploy/docker/update-lock.sh."
  "$venv/bin/pip" freeze --all --exclude-editable | grep -viE '^(torch|pip|wheel)=='
} >"$here/requirements.lock"
echo "wrote $here/requirements.lock"
