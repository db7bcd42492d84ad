#!/usr/bin/env bash
# Headless Chromium for the browser tests (rlaif review): Debian's chromium and
# chromium-driver, and the selenium package in the virtual environment. Idempotent: when
# both programs are there it only checks the Python package and returns.
# Where they cannot be installed (not root, no apt-get, no package mirror) it says so and
# returns 0, and the browser tests skip with that reason; under CI (CI=true) it fails, as the
# tests would, so a CI run never passes without them.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
have() { command -v "$1" >/dev/null 2>&1; }

give_up() {
  echo "setup_browser: $1; the browser tests need chromium and chromedriver" >&2
  if [ "${CI:-}" = true ]; then exit 1; fi
  echo "setup_browser: outside CI they will be skipped" >&2
  exit 0
}

if ! { have chromium && have chromedriver; }; then
  if have apt-get && [ "$(id -u)" = 0 ]; then
    SUDO=""
  elif have apt-get && have sudo && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    give_up "chromium is missing and cannot be installed here (needs apt-get as root)"
  fi
  echo "installing chromium and chromium-driver for the browser tests (first run only; a few minutes)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || give_up "apt-get update failed"
  $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null || give_up "apt-get install chromium chromium-driver failed"
fi

if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c "import selenium" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "selenium>=4.10" || give_up "pip could not install selenium"
fi
