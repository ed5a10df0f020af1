// ROLE stored as f32, in ARRAY at binding BINDING (roles bound as planes of one buffer share
// the array).
#ifdef VEC4
// Declared as vec4s, so that a segment whose offsets are all multiples of 4 elements moves 16
// bytes per load and store (load4_ / store4_, element index a multiple of 4); single elements
// are components of them. The binding's size is a multiple of 16 bytes (`src/plan.rs`).
@group(1) @binding(BINDING) var<storage, ACCESS> ARRAY: array<vec4<f32>>;

fn load_ROLE(i: u32) -> f32 {
    return ARRAY[i >> 2u][i & 3u];
}

fn load4_ROLE(i: u32) -> vec4<f32> {
    return ARRAY[i >> 2u];
}
#ifdef WRITABLE

fn store_ROLE(i: u32, v: f32) {
    ARRAY[i >> 2u][i & 3u] = v;
}

fn store4_ROLE(i: u32, v: vec4<f32>) {
    ARRAY[i >> 2u] = v;
}

fn store_ROLE_pair(i: u32, v0: f32, v1: f32, both: bool) {
    store_ROLE(i, v0);
    if both {
        store_ROLE(i + 1u, v1);
    }
}
#endif
#else
@group(1) @binding(BINDING) var<storage, ACCESS> ARRAY: array<f32>;

fn load_ROLE(i: u32) -> f32 {
    return ARRAY[i];
}
#ifdef WRITABLE

fn store_ROLE(i: u32, v: f32) {
    ARRAY[i] = v;
}

fn store_ROLE_pair(i: u32, v0: f32, v1: f32, both: bool) {
    ARRAY[i] = v0;
    if both {
        ARRAY[i + 1u] = v1;
    }
}
#endif
#endif
