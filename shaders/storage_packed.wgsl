// ROLE stored as FORMAT, two per 32-bit word, in ARRAY at binding BINDING (roles bound as
// planes of one buffer share the array). A writable word is atomic: an element that shares
// its word with another leaf, or with an element another invocation writes, is stored by
// clearing and setting only its own half, so neighbours stay intact. ELEMENTS: as in `storage_f32.wgsl`.
#ifdef WRITABLE
#ifdef BINDING_ARRAY
struct ARRAY_buffer { data: array<atomic<u32>>, }
@group(1) @binding(BINDING) var<storage, read_write> ARRAY: binding_array<ARRAY_buffer, BUFFERS>;
#else
@group(1) @binding(BINDING) var<storage, read_write> ARRAY: array<atomic<u32>>;
#endif

fn word_ROLE(w: u32) -> u32 {
    return atomicLoad(&ELEMENTS[w]);
}
#else
#ifdef BINDING_ARRAY
struct ARRAY_buffer { data: array<u32>, }
@group(1) @binding(BINDING) var<storage, read> ARRAY: binding_array<ARRAY_buffer, BUFFERS>;
#else
@group(1) @binding(BINDING) var<storage, read> ARRAY: array<u32>;
#endif

fn word_ROLE(w: u32) -> u32 {
    return ELEMENTS[w];
}
#endif

fn load_ROLE(i: u32) -> f32 {
    return FORMAT_to_f32((word_ROLE(i >> 1u) >> ((i & 1u) * 16u)) & 0xffffu);
}
#ifdef WRITABLE

fn store_ROLE(i: u32, v: f32) {
    let shift = (i & 1u) * 16u;
    atomicAnd(&ELEMENTS[i >> 1u], ~(0xffffu << shift));
    atomicOr(&ELEMENTS[i >> 1u], f32_to_FORMAT(v) << shift);
}

// Two consecutive elements: one plain word store when they fill a word together.
fn store_ROLE_pair(i: u32, v0: f32, v1: f32, both: bool) {
    if both && (i & 1u) == 0u {
        atomicStore(&ELEMENTS[i >> 1u], f32_to_FORMAT(v0) | (f32_to_FORMAT(v1) << 16u));
    } else {
        store_ROLE(i, v0);
        if both {
            store_ROLE(i + 1u, v1);
        }
    }
}
#endif
