// ROLE stored as f32 (binding BINDING).
@group(1) @binding(BINDING) var<storage, ACCESS> ROLE: array<f32>;

fn load_ROLE(i: u32) -> f32 {
    return ROLE[i];
}
#ifdef WRITABLE

fn store_ROLE(i: u32, v: f32) {
    ROLE[i] = v;
}

fn store_ROLE_pair(i: u32, v0: f32, v1: f32, both: bool) {
    ROLE[i] = v0;
    if both {
        ROLE[i + 1u] = v1;
    }
}
#endif
