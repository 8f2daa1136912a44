#!/usr/bin/env bash
# Installs the Debian packages Pigeonpost needs, idempotently, and says what it installs.
#   scripts/system-packages.sh build   what compiling needs (a C toolchain for SQLCipher, whose
#                                       cryptography is Rust; cmake, clang, libclang, perl and git
#                                       for BoringSSL, which the `tls` transport builds;
#                                       libssl-dev only so that the `-lcrypto` SQLCipher's build
#                                       script asks for resolves: nothing is taken from it; node
#                                       and npm for the web client's Vite build)
#   scripts/system-packages.sh test    build + what the tests use (network namespaces, nginx,
#                                       curl, openssl, headless Chromium for the censorship lab
#                                       and the fingerprint tests, tshark for their captures,
#                                       pebble and pebble-challtestsrv for the ACME test,
#                                       nats-server for the JetStream store's tests)
# Needs root (or sudo) only when something is missing.
set -euo pipefail

build=(gcc g++ make perl pkg-config cmake clang libclang-dev git libssl-dev)
test=(iproute2 curl openssl nginx-light chromium tshark pebble nats-server)

case "${1:-build}" in
  build) want=("${build[@]}") ;;
  test) want=("${build[@]}" "${test[@]}") ;;
  *) echo "usage: $0 build|test" >&2; exit 2 ;;
esac

need=()
for p in "${want[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
# The web client (`pigeon app`) is built with npm and Vite when pigeon is compiled: Debian's
# nodejs and npm, unless node and npm are there already (NodeSource's nodejs carries its own npm,
# and Debian's npm package would conflict with it).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  need+=(nodejs npm)
fi
want+=(node npm)
if [ "${#need[@]}" -eq 0 ]; then
  echo "== system packages: all present (${want[*]})"
  exit 0
fi
echo "== system packages: installing ${need[*]}"
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
