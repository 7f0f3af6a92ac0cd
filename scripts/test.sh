#!/usr/bin/env bash
# One command on a fresh machine: install, lint, and run the test suite.
# Default: everything but the `slow` cases. `bash scripts/test.sh --slow` runs only those.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
# Headless Chromium (Debian's package) for the gallery test; the test skips, saying so, without it.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "chromium could not be installed: the browser check of the galleries will be skipped"
fi
if [ "${1:-}" = "--slow" ]; then
  shift
  set +e
  python -m pytest -m slow "$@"
  rc=$?
  [ $rc -eq 5 ] && { echo "no slow tests collected"; rc=0; }
  exit $rc
fi
ruff check dedupdask tests benchmarks
python -m pytest -m "not slow" "$@"
