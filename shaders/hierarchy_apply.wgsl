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
        let walk = slot_walk(tile, SLOT);
        for (var k = walk.x; k < walk.z; k = walk_next(walk, k)) {
            let record = walk_record(walk, k, lid);
            let at = record.x;
            let lane = walk_lane(walk, k, lid);
            for (var i = lane.x; i < record.y; i += lane.y) {
                store_out(table[at + OUT_AT] + i, 0.0);
            }
        }
#end_each_slot
        return;
    }
#endif
    load_coefficients();
#each_slot
    let walk = slot_walk(tile, SLOT);
    for (var k = walk.x; k < walk.z; k = walk_next(walk, k)) {
        let record = walk_record(walk, k, lid);
        let at = record.x;
        let lane = walk_lane(walk, k, lid);
        let out_at = table[at + OUT_AT];
        let o = offsets(at);
#ifdef PAIRS
        // Two consecutive elements per invocation, so 16-bit results that share a word are
        // stored together.
        for (var i = 2u * lane.x; i < record.y; i += 2u * lane.y) {
            let both = i + 1u < record.y;
            let x = element(o, i);
            var y = x;
            if both {
                y = element(o, i + 1u);
            }
            store_out_pair(out_at + i, x.d, y.d, both);
            store_emas_pair(o, i, x, y, both);
        }
#else
        for (var i = lane.x; i < record.y; i += lane.y) {
            let x = element(o, i);
            store_out(out_at + i, x.d);
            store_emas(o, i, x);
        }
#endif
    }
#end_each_slot
}
