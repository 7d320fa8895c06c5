#!/usr/bin/env bash
# Installs everything paraformer-asr needs on a fresh Debian machine with Python 3.11:
# system packages, a virtual environment in .venv, and the pinned Python dependencies.
# Idempotent: a second run only checks, unless requirements.lock or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "setup: Python 3.11 is required (found $("$PYTHON" --version 2>&1))" >&2; exit 1; }

# System packages: ffmpeg (FunASR's own audio loader shells out to it for mp3/m4a; the server
# itself decodes with PyAV), espeak-ng and sox (tests speak real speech-like audio), redis-server
# (the shared result cache is tested against a real Redis, started by the tests themselves).
apt_packages=(ffmpeg espeak-ng sox redis-server)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.paraformer-asr-installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python dependencies into .venv (first run: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned: any other spec would pull a multi-GB CUDA build (the CUDA build belongs in the Dockerfile).
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -c requirements.lock -e '.[dev]'
  echo "$want" > "$stamp"
fi
