#!/usr/bin/env bash
# Runs every fuzz target for a short while: ./run-short.sh [SECONDS] [TARGET...]
# Default: 20 seconds each, all targets. Exits non-zero if any target finds a crash
# (the input is saved under fuzz/artifacts/<target>/).
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Only a stable toolchain is needed:
# RUSTC_BOOTSTRAP=1 lets it accept the nightly-only sanitizer flags cargo-fuzz passes.
set -euo pipefail

cd "$(dirname "$0")"
seconds="${1:-20}"
shift || true
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=(frame_decode protobuf_decode link_parse invite_parse e2ee_decode
        tls_h2 tls_opening tls_record tls_token group_decode channel_accept store_record)
fi

export RUSTC_BOOTSTRAP=1
cargo fuzz build # all targets, once, before the clock starts
status=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    extra=()
    if [ "$target" = link_parse ]; then
        extra+=("-dict=link.dict")
    fi
    echo "== $target: ${seconds}s"
    if cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -max_len=8192 -print_final_stats=1 "${extra[@]}" \
        2>"/tmp/pigeon-fuzz-$target.log"; then
        grep -E '^(stat::number_of_executed_units|stat::new_units_added|Done)' \
            "/tmp/pigeon-fuzz-$target.log" || true
        echo "== $target: ok"
    else
        tail -n 40 "/tmp/pigeon-fuzz-$target.log"
        echo "== $target: FAILED (log: /tmp/pigeon-fuzz-$target.log)"
        status=1
    fi
done
exit "$status"
