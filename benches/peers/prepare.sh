#!/usr/bin/env bash
# Run in the project's root on a machine with Rust (Debian or Ubuntu, amd64), before
# `bash benches/peers/on_gpu.sh` on the GPU machine: builds the bench into .gpu/ with the peers
# script, and downloads the Vulkan loader packages into .gl/ for a GPU machine that has the
# NVIDIA driver but no loader. Copy the repository with both folders to the GPU machine.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
for ignored in /.gl/ /.gpu/; do
    grep -qx "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
done
if [ ! -d .gl ]; then
    lists=$(mktemp -d)
    mkdir -p .gl "$lists/partial"
    apt_options=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
    apt-get "${apt_options[@]}" update >/dev/null
    (cd .gl && apt-get "${apt_options[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
cargo build --release --bench throughput
mkdir -p .gpu
cp "$(ls -t target/release/deps/throughput-* | grep -v '\.d$' | head -1)" .gpu/throughput
cp benches/peers/peers.py .gpu/
echo "ready: on the GPU machine, in a copy of this folder with .gl/ and .gpu/, run: bash benches/peers/on_gpu.sh"
