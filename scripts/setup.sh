#!/usr/bin/env bash
# One-shot setup for a fresh Debian machine: system packages, a virtual environment,
# torch (CPU, pinned) first, then the locked dependencies (every extra: test, video, demo, ray, voices) and avsr. Idempotent: re-running
# only installs what is missing. Usage: scripts/setup.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${AVSR_VENV:-.venv}}
PY=${PYTHON:-python3}

need_apt=()
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
ldconfig -p 2>/dev/null | grep -q 'libespeak-ng.so.1' || need_apt+=(libespeak-ng1)
[ -f /usr/share/games/fortunes/wisdom ] || need_apt+=(fortunes)  # real sentences (quickstart --sentences fortunes)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)  # the web demo's browser test (headless)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
# Every Python package at the exact version in requirements/lock.txt (refresh: make lock).
LOCK=requirements/lock.txt
stamp="$VENV/.avsr-installed"
if [ ! -f "$stamp" ] || [ "$LOCK" -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  torch_pin=$(grep -E '^torch==' "$LOCK")
  echo "[setup] installing $torch_pin first, then the locked dependencies (every extra) and avsr"
  # torch first: installing anything that depends on torch before it pulls a CUDA build.
  # Elsewhere, set AVSR_TORCH_INDEX (e.g. the PyTorch CPU index) to get the CPU build.
  "$VENV/bin/python" -m pip install -q "pip==26.3"  # the pip the lock was made with (scripts/lock.sh)
  "$VENV/bin/python" -m pip install -q "$torch_pin" ${AVSR_TORCH_INDEX:+--extra-index-url "$AVSR_TORCH_INDEX"}
  "$VENV/bin/python" -m pip install -q -r "$LOCK"
  "$VENV/bin/python" -m pip install -q --no-deps -e .
  "$VENV/bin/python" -m pip check
  touch "$stamp"
fi
echo "[setup] ready: $VENV"
