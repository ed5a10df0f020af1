// The roofline reference: the plainest full-bandwidth kernel, a vec4 copy. Its bytes per
// element (4 read + 4 written) over its time is the best bandwidth a streaming kernel gets
// on the adapter.
@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(256)
fn copy(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) num_wg: vec3<u32>) {
    let i = id.x + id.y * num_wg.x * 256u;
    if i < arrayLength(&src) {
        dst[i] = src[i];
    }
}
