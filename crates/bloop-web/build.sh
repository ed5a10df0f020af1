#!/usr/bin/env bash
# Builds the web demo: bloop-web for wasm32 and its JavaScript glue in www/pkg/ (an ES module
# that www/demo.js imports). Then serve www/ with any static server, e.g.
# `python3 -m http.server -b 127.0.0.1 -d crates/bloop-web/www 8000`, and open
# http://127.0.0.1:8000/ in a browser with WebGPU. Needs the wasm32-unknown-unknown target and
# the wasm-bindgen CLI at the version of the wasm-bindgen crate in Cargo.lock.
set -euo pipefail
cd "$(dirname "$0")"
manifest=../../Cargo.toml
cargo build --release --target wasm32-unknown-unknown -p bloop-web --manifest-path "$manifest"
target_dir=$(cargo metadata --format-version 1 --no-deps --manifest-path "$manifest" |
    sed 's/.*"target_directory":"\([^"]*\)".*/\1/')
wasm-bindgen --target web --out-dir www/pkg "$target_dir/wasm32-unknown-unknown/release/bloop_web.wasm"
