#!/usr/bin/env bash
# Create .venv and install erase with its test extras.
# torch is installed first and pinned: on the project's CPU machines pip takes the local CPU wheel of this
# release in seconds (an unpinned `torch` would pull a multi-GB CUDA build); on a GPU machine the same pin
# gives PyPI's CUDA build. An existing torch (any >=2.4) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[dev]"
# Headless Chromium renders the HTML reports to PNG (erase.report.screenshot and its test). Debian package;
# best effort: without it the screenshot test is skipped with its reason.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "setup: could not install chromium; report screenshots will be skipped"
fi
