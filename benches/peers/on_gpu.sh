#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and its driver, and Python with PyTorch and JAX, in a copy of
# the repository that `bash benches/peers/prepare.sh` filled (.gpu/ and .gl/): our bench through
# Vulkan, then the PyTorch and JAX peers on the same GPU, then one side-by-side table. Results
# land in $OUT (default /tmp/out).
set -uo pipefail
# Install the loader only where the machine lacks one.
if ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
# Where the driver's ICD file is not in the loader's search path (some container images).
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$nvidia_icd" ] && export VK_DRIVER_FILES="$nvidia_icd"
export XDG_RUNTIME_DIR=$(mktemp -d)
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
.gpu/throughput --layouts-json "$OUT/layouts.json"
timeout 300 .gpu/throughput --reps 50 --out "$OUT" 2>&1 | tee "$OUT/throughput.txt"
PYTHONUNBUFFERED=1 timeout 200 python3 .gpu/peers.py --layouts "$OUT/layouts.json" --ours "$OUT/throughput.json" --out "$OUT" --reps 50
