#!/usr/bin/env bash
# The web demo's CI test: the native quadratic example for EPOCHS epochs (default 20) at seed 0
# writes target/web-demo/native/summary.json; build.sh builds the page; browser-test.mjs runs
# the page's default sweep and benchmark panel in headless Chromium, compares the page's losses
# and BLOOP's standings with the native run's, saves target/web-demo/web-demo.png (the
# screenshot docs/web-demo.png is), and checks the page without WebGPU. Needs what crates/bloop-wasm/js/build.sh needs (the wasm32
# target, the wasm-bindgen CLI), `npm ci --prefix crates/bloop-wasm/js` (puppeteer-core),
# Debian's chromium and a Vulkan adapter for the native run.
set -euo pipefail
cd "$(dirname "$0")/../../.."
epochs=${EPOCHS:-20}
out=target/web-demo
cargo run --release --example quadratics -- --epochs "$epochs" --seed 0 --out "$out/native"
crates/bloop-web/build.sh
timeout 900 node crates/bloop-web/test/browser-test.mjs \
    --native "$out/native/summary.json" --bench-sizes 12 --screenshot "$out/web-demo.png"
