#!/usr/bin/env bash
# The demo: installs what compiling needs (idempotently, saying so), builds, and runs
# `pigeon demo`: a relay on an embedded store and two encrypted profiles talking through it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system-packages.sh build
exec cargo run --release -p pigeon-cli -- demo "$@"
