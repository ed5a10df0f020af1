// ROLE stored as f32, in ARRAY at binding BINDING (roles bound as planes of one buffer share
// the array). ELEMENTS is the array itself, or with binding arrays (BINDING_ARRAY) the one of
// the buffer the current segment names (`buffer_index` in `bindings.wgsl`).
#ifdef VEC4
// Declared as vec4s, so that a segment whose offsets are all multiples of 4 elements moves 16
// bytes per load and store (load4_ / store4_, element index a multiple of 4); single elements
// are components of them. The binding's size is a multiple of 16 bytes (`src/plan.rs`).
#ifdef BINDING_ARRAY
struct ARRAY_buffer { data: array<vec4<f32>>, }
@group(1) @binding(BINDING) var<storage, ACCESS> ARRAY: binding_array<ARRAY_buffer, BUFFERS>;
#else
@group(1) @binding(BINDING) var<storage, ACCESS> ARRAY: array<vec4<f32>>;
#endif

fn load_ROLE(i: u32) -> f32 {
    return ELEMENTS[i >> 2u][i & 3u];
}

fn load4_ROLE(i: u32) -> vec4<f32> {
    return ELEMENTS[i >> 2u];
}
#ifdef WRITABLE

fn store_ROLE(i: u32, v: f32) {
    ELEMENTS[i >> 2u][i & 3u] = v;
}

fn store4_ROLE(i: u32, v: vec4<f32>) {
    ELEMENTS[i >> 2u] = v;
}

fn store_ROLE_pair(i: u32, v0: f32, v1: f32, both: bool) {
    store_ROLE(i, v0);
    if both {
        store_ROLE(i + 1u, v1);
    }
}
#endif
#else
#ifdef BINDING_ARRAY
struct ARRAY_buffer { data: array<f32>, }
@group(1) @binding(BINDING) var<storage, ACCESS> ARRAY: binding_array<ARRAY_buffer, BUFFERS>;
#else
@group(1) @binding(BINDING) var<storage, ACCESS> ARRAY: array<f32>;
#endif

fn load_ROLE(i: u32) -> f32 {
    return ELEMENTS[i];
}
#ifdef WRITABLE

fn store_ROLE(i: u32, v: f32) {
    ELEMENTS[i] = v;
}

fn store_ROLE_pair(i: u32, v0: f32, v1: f32, both: bool) {
    ELEMENTS[i] = v0;
    if both {
        ELEMENTS[i + 1u] = v1;
    }
}
#endif
#endif
