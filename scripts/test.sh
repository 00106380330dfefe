#!/usr/bin/env bash
# The test command (README "Quickstart"; CI runs exactly this): set-up, lint and format check, then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
# The web app's browser test drives Debian's Chromium; without it that one test skips (and says so).
if [ "$(id -u)" = 0 ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || echo "chromium not installed: the browser test will skip" >&2
fi
ruff check .
ruff format --check .
rc=0
python -m pytest -q "$@" || rc=$?
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: the suite is missing" >&2; exit 1; fi
exit "$rc"
