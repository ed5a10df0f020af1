// Shared by node.mjs and page.html (so nothing from Node here).

// WebGPU's own description of the adapter, which wgpu reduces to `description` (empty in
// Chromium, which hides it).
export async function adapterInfo(gpu) {
  const adapter = await gpu.requestAdapter();
  if (!adapter) return 'webgpu: no adapter';
  const { vendor, architecture, device, description } = adapter.info;
  return `webgpu: vendor "${vendor}", architecture "${architecture}", device "${device}", description "${description}"`;
}
