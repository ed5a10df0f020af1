#!/usr/bin/env bash
# The one command for the lent GPU machine (see prepare.sh): our bench through Vulkan, then the
# PyTorch and JAX peers on the same GPU, then one side-by-side table. Results land in $OUT.
set -uo pipefail
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export XDG_RUNTIME_DIR=$(mktemp -d)
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
.gpu/throughput --layouts-json "$OUT/layouts.json"
timeout 300 .gpu/throughput --reps 50 --out "$OUT" 2>&1 | tee "$OUT/throughput.txt"
PYTHONUNBUFFERED=1 timeout 200 python3 .gpu/peers.py --layouts "$OUT/layouts.json" --ours "$OUT/throughput.json" --out "$OUT" --reps 50
