#!/usr/bin/env bash
# The golden cases (tests/golden and its extensions) in every JavaScript host this machine has
# drivers for, in f32 and in f16 and bf16 (packed in u32 words): Dawn in Node on GL (Mesa's
# llvmpipe, compatibility mode) and on Vulkan (SwiftShader from Debian's chromium-common), and
# headless Chromium. Stops at the first host or storage type that fails a case, finds no
# adapter or runs no case. Run build.sh and `npm ci` first.
set -euo pipefail
cd "$(dirname "$0")"
cases=(../../../tests/golden ../../../tests/golden/extensions)
swiftshader_icd=${SWIFTSHADER_ICD:-/usr/lib/chromium/vk_swiftshader_icd.json}
[ -e "$swiftshader_icd" ] || { echo "FAILED: no SwiftShader ICD at $swiftshader_icd" >&2; exit 1; }

for dtype in f32 f16 bf16; do
    types=(--dtype "$dtype" --ema-dtype "$dtype")
    echo "== Dawn in Node, GL on llvmpipe (compatibility mode), $dtype"
    EGL_PLATFORM=surfaceless timeout 1200 node node.mjs --backend opengles --compat "${types[@]}" "${cases[@]}"
    echo "== Dawn in Node, Vulkan on SwiftShader, $dtype"
    VK_ICD_FILENAMES="$swiftshader_icd" timeout 1200 node node.mjs --backend vulkan "${types[@]}" "${cases[@]}"
    echo "== headless Chromium, $dtype"
    timeout 1200 node chromium.mjs "${types[@]}" "${cases[@]}"
done
echo "WebGPU conformance passed in every host"
