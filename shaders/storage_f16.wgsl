// ROLE stored as f16 through `enable f16`, in ARRAY at binding BINDING (roles bound as planes
// of one buffer share the array). Each element is its own memory location, so neighbouring
// halves are never touched. ELEMENTS: as in `storage_f32.wgsl`.
#ifdef BINDING_ARRAY
struct ARRAY_buffer { data: array<f16>, }
@group(1) @binding(BINDING) var<storage, ACCESS> ARRAY: binding_array<ARRAY_buffer, BUFFERS>;
#else
@group(1) @binding(BINDING) var<storage, ACCESS> ARRAY: array<f16>;
#endif

fn load_ROLE(i: u32) -> f32 {
    return f32(ELEMENTS[i]);
}
#ifdef WRITABLE

fn store_ROLE(i: u32, v: f32) {
    ELEMENTS[i] = f16(v);
}

fn store_ROLE_pair(i: u32, v0: f32, v1: f32, both: bool) {
    ELEMENTS[i] = f16(v0);
    if both {
        ELEMENTS[i + 1u] = f16(v1);
    }
}
#endif
