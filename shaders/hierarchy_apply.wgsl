// Stage 3 of a hierarchy: d = sum_l cg[l] g_l - sum_m ce[m] e_m with the coefficients of the
// finalize stage (e_m the updated averages, or with PROJECT_FIRST the previous steps'), and
// the updated averages e_m + b (g_m - e_m). With the guard, a skipped step writes zeros and
// leaves the averages alone. `element`, `store_emas` and `store_emas_pair` are generated per k
// by `hierarchy_prelude` in `src/shaders.rs`.
#import bindings

@compute @workgroup_size(WORKGROUP_SIZE)
fn apply(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
) {
    let tile = tile_index(wg, num_wg);
    if tile >= tile_count() {
        return;
    }
#ifdef GUARD_APPLY
    if scalars.skip != 0u {
#each_slot
        let segments = slot_segments(tile, SLOT);
        for (var k = segments.x; k < segments.y; k++) {
            let at = segment_at(k);
            let len = table[at + LEN_AT];
            for (var i = lid; i < len; i += WORKGROUP_SIZE) {
                store_out(table[at + OUT_AT] + i, 0.0);
            }
        }
#end_each_slot
        return;
    }
#endif
    load_coefficients();
#each_slot
    let segments = slot_segments(tile, SLOT);
    for (var k = segments.x; k < segments.y; k++) {
        let at = segment_at(k);
        let len = table[at + LEN_AT];
        let out_at = table[at + OUT_AT];
        let o = offsets(at);
#ifdef PAIRS
        // Two consecutive elements per invocation, so 16-bit results that share a word are
        // stored together.
        for (var i = 2u * lid; i < len; i += 2u * WORKGROUP_SIZE) {
            let both = i + 1u < len;
            let x = element(o, i);
            var y = x;
            if both {
                y = element(o, i + 1u);
            }
            store_out_pair(out_at + i, x.d, y.d, both);
            store_emas_pair(o, i, x, y, both);
        }
#else
        for (var i = lid; i < len; i += WORKGROUP_SIZE) {
            let x = element(o, i);
            store_out(out_at + i, x.d);
            store_emas(o, i, x);
        }
#endif
    }
#end_each_slot
}
