// What a hierarchy of LEVELS auxiliary losses adds to `bindings.wgsl`. The constants (LEVELS,
// GRADS, GRAM, PARTIAL_VECS, SEG_WORDS, LEN_AT, OUT_AT, LEVEL_WORDS) and the unrolled
// per-element code come from `hierarchy_prelude` in `src/shaders.rs`. Bindings: the gradients g_i at 1 + i, the averages e_j at LEVELS + 2 + j,
// the output at 2 LEVELS + 2 (the numbers after each role are ignored; the variant sets them).
#storage g0 1
#storage g1 2
#storage g2 3
#storage g3 4
#storage g4 5
#storage g5 6
#storage g6 7
#storage g7 8
#storage g8 9
#storage e0 10
#storage e1 11
#storage e2 12
#storage e3 13
#storage e4 14
#storage e5 15
#storage e6 16
#storage e7 17

// One tile's partial sums: the lower triangle of the averages' Gram matrix <e_a, e_b> (b <= a,
// row by row), the products <g_a, e_b> (a = 1..LEVELS, b < a, row by row), flat in vec4s,
// then (|g_0|^2, |g_1|^2, <g_0, g_1>, non-finite gradient elements) in the last vec4.
struct Partial {
    v: array<vec4<f32>, PARTIAL_VECS>,
}

// The first word of segment `index`'s record: role r's offset is at `+ binding(r) - 1`, the
// length at `+ LEN_AT`.
fn segment_at(index: u32) -> u32 {
    return table[2] + index * SEG_WORDS;
}

fn lambda_of(level: u32) -> f32 {
    // level is 1-based: l_1 is lambdas[0].x.
    let i = level - 1u;
    return params.lambdas[i >> 2u][i & 3u];
}
