#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (real relay processes on
# loopback, the censorship lab in network namespaces it creates). Installs the system packages
# the build and the tests need first (idempotently; it says what it installs).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/system-packages.sh test

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
grep -E '^test result:' "$log" | awk '
  { passed += $4; failed += $6 }
  END { printf "tests: %d passed, %d failed\n", passed, failed; exit failed > 0 }'
