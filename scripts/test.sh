#!/usr/bin/env bash
# The whole test suite: unit, integration (real servers on loopback) and deploy checks.
# Installs what it needs first (idempotent). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
for tool in scripts/install-*.sh; do
  [ -e "$tool" ] && bash "$tool"
done
.venv/bin/ruff check app tests bench
exec .venv/bin/python -m pytest "$@"
