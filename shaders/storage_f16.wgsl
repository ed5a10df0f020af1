// ROLE stored as f16 through `enable f16` (binding BINDING). Each element is its own memory
// location, so neighbouring halves are never touched.
@group(1) @binding(BINDING) var<storage, ACCESS> ROLE: array<f16>;

fn load_ROLE(i: u32) -> f32 {
    return f32(ROLE[i]);
}
#ifdef WRITABLE

fn store_ROLE(i: u32, v: f32) {
    ROLE[i] = f16(v);
}

fn store_ROLE_pair(i: u32, v0: f32, v1: f32, both: bool) {
    ROLE[i] = f16(v0);
    if both {
        ROLE[i + 1u] = f16(v1);
    }
}
#endif
