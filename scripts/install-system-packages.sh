#!/usr/bin/env bash
# Debian packages: redis-server, for rate-limit state shared by workers (tests need it);
# wrk, the load generator bench/throughput.py drives; chromium, the browser in which
# tests/test_browser_sdk.py runs Rybbit's browser SDK (Playwright drives it, never downloading
# a browser of its own); npm, which fetches that SDK at test time.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: redis-server, wrk, chromium and npm present"; exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
