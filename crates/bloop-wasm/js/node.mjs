// The golden cases on Dawn in Node (npm `webgpu`), through bloop's wasm32 build.
//
//   node node.mjs [--backend vulkan|opengles] [--compat] [--dtype f32|f16|bf16]
//                 [--ema-dtype f32|f16|bf16] [--native-f16] DIR...
//
// Prints the adapter and the same table as `cargo run --release --example conformance -- DIR`;
// exits 1 when a case fails or none ran, 2 when no adapter or no case was found.
// Dawn's GL back-end on Mesa needs `EGL_PLATFORM=surfaceless` and `--compat`: it offers only
// compatibility-mode adapters, while wgpu asks for a core one.
import { createRequire } from 'node:module';
import { create, globals } from 'webgpu';
import { loadCases, parseArgs, verdict } from './cases.mjs';
import { adapterInfo } from './info.mjs';

const options = parseArgs(process.argv.slice(2), { backend: undefined, compat: false });
const cases = loadCases(options.dirs);
if (cases.names.length === 0) {
  console.error(`no *.json cases in ${options.dirs.join(', ')}`);
  process.exit(2);
}

const gpu = create(options.backend ? [`backend=${options.backend}`] : []);
if (options.compat) {
  const requestAdapter = gpu.requestAdapter.bind(gpu);
  gpu.requestAdapter = (o = {}) => requestAdapter({ ...o, featureLevel: 'compatibility' });
}
// What wgpu's WebGPU back-end looks for: a `Window` global (it then reads `navigator.gpu`).
Object.assign(globalThis, globals);
globalThis.Window ??= class Window {};
Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true });

const { conformance } = createRequire(import.meta.url)('./pkg-node/bloop_wasm.js');
let status;
try {
  console.log(await adapterInfo(gpu));
  const counts = await conformance(
    cases.names, cases.texts, options.dtype, options.emaDtype, options.packedF16,
    (line) => console.log(line));
  status = verdict(counts);
} catch (e) {
  console.error(`error: ${e.message ?? e}`);
  status = 2;
}
// Dawn's instance would keep the event loop alive.
process.exit(status);
