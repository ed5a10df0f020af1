#!/usr/bin/env bash
# Builds bloop-wasm for wasm32 and its JavaScript glue: pkg-node/ (CommonJS, for node.mjs) and
# pkg-web/ (an ES module, for page.html). Needs the wasm32-unknown-unknown target and the
# wasm-bindgen CLI at the version of the wasm-bindgen crate in Cargo.lock.
set -euo pipefail
cd "$(dirname "$0")"
root=../../..
cargo build --release --target wasm32-unknown-unknown -p bloop-wasm --manifest-path "$root/Cargo.toml"
target_dir=$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" |
    sed 's/.*"target_directory":"\([^"]*\)".*/\1/')
wasm="$target_dir/wasm32-unknown-unknown/release/bloop_wasm.wasm"
wasm-bindgen --target nodejs --out-dir pkg-node "$wasm"
wasm-bindgen --target web --out-dir pkg-web "$wasm"
# The nodejs glue is CommonJS; this folder's package.json says ES modules.
echo '{ "type": "commonjs" }' > pkg-node/package.json
