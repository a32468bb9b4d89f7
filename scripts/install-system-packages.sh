#!/usr/bin/env bash
# Debian packages the tests need: redis-server, for rate-limit state shared by workers.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  echo "redis-server: using $(command -v redis-server)"; exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server
