#!/usr/bin/env bash
# Fuzzes checkpoint loading, restore's checks, inconsistent checkpoint files and layout
# validation for a bounded time each (default 60 s):
#   fuzz/run.sh [SECONDS]
# cargo fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
for target in checkpoint layout restore inconsistent_checkpoint; do
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$seconds"
done
