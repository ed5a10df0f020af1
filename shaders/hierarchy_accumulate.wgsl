// Stage 1 of a hierarchy: per tile, the Gram matrix of the averages and the products of the
// gradients with them (with the averages this step updated, or with PROJECT_FIRST the previous
// steps'), and the guard's sums. Nothing is written but the partial sums.
#import bindings
#import reduce

@compute @workgroup_size(WORKGROUP_SIZE)
fn accumulate(
    @builtin(local_invocation_index) lid: u32,
#ifdef SUBGROUPS
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_invocation_id) lane: u32,
#endif
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
) {
    let tile = tile_index(wg, num_wg);
    if tile >= tile_count() {
        return;
    }
    let segments = tile_segments(tile);
    var acc: array<vec4<f32>, PARTIAL_VECS>;
    for (var s = segments.x; s < segments.y; s++) {
        let at = segment_at(s);
        let len = table[at + LEN_AT];
        for (var i = lid; i < len; i += WORKGROUP_SIZE) {
            var g: array<f32, GRADS>;
            for (var l = 0u; l < GRADS; l++) {
                g[l] = load_g(l, table[at + l] + i);
            }
            var e: array<f32, LEVELS>;
            for (var j = 0u; j < LEVELS; j++) {
                let e_old = load_e(j, table[at + GRADS + j] + i);
#ifdef PROJECT_FIRST
                e[j] = e_old;
#else
                e[j] = ema_step(e_old, g[j]);
#endif
            }
            var q = 0u;
            for (var a = 0u; a < LEVELS; a++) {
                for (var b = 0u; b <= a; b++) {
                    acc[q >> 2u][q & 3u] += e[a] * e[b];
                    q++;
                }
            }
            for (var a = 1u; a < GRADS; a++) {
                for (var b = 0u; b < a; b++) {
                    acc[q >> 2u][q & 3u] += g[a] * e[b];
                    q++;
                }
            }
#ifdef EXTRAS
            var non_finite = 0.0;
            for (var l = 0u; l < GRADS; l++) {
                non_finite += select(1.0, 0.0, is_finite(g[l]));
            }
            acc[PARTIAL_VECS - 1u] += vec4<f32>(g[0] * g[0], g[1] * g[1], g[0] * g[1], non_finite);
#endif
        }
    }
#ifdef SUBGROUPS
    let lanes = Lanes(lid, subgroup, subgroups, lane);
#else
    let lanes = Lanes(lid, 0u, 1u, lid);
#endif
    for (var v = 0u; v < PARTIAL_VECS; v++) {
        let total = workgroup_sum(lanes, acc[v]);
        if lid == 0u {
            partials[first_partial() + tile].v[v] = total;
        }
    }
}
