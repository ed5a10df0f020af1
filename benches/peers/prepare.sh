#!/usr/bin/env bash
# Run here, in the project's root, before the one device call: builds the bench, puts it and
# the Vulkan loader packages into ignored folders that the call carries.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
[ -d .gl ] || ../shared/device/prepare-vulkan.sh
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >> .git/info/exclude
cargo build --release --bench throughput
mkdir -p .gpu
cp "$(ls -t target/release/deps/throughput-* | grep -v '\.d$' | head -1)" .gpu/throughput
cp benches/peers/peers.py .gpu/
echo 'now: run(command="bash benches/peers/on_gpu.sh", carry=[".gl", ".gpu"], timeout_s=540)'
