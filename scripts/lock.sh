#!/usr/bin/env bash
# Refresh requirements/lock.txt, the exact version of every Python dependency that
# scripts/setup.sh (and so `make test`, `make quickstart` and CI) installs. Run it after a
# change to the dependencies in pyproject.toml, then run `make test`; commit both files.
# pip-tools resolves with pip itself, so the lock holds what pip installs on this kind of
# machine (torch 2.13.0, CPU build). Usage: scripts/lock.sh   (or: make lock)
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${AVSR_LOCK_VENV:-.venv-lock}
if [ ! -x "$TOOLS/bin/pip-compile" ]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q "pip==26.3" "pip-tools==7.6.2"
fi
"$TOOLS/bin/pip-compile" --quiet --extra test --extra video --extra demo --extra ray --extra voices --strip-extras --allow-unsafe --no-emit-find-links \
  --no-emit-index-url --newline LF --output-file requirements/lock.txt pyproject.toml
echo "[lock] requirements/lock.txt: $(grep -c '==' requirements/lock.txt) pinned packages"
