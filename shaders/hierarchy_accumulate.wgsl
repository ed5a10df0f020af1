// Stage 1 of a hierarchy: per tile, the Gram matrix of the averages and the products of the
// gradients with them (with the averages this step updated, or with PROJECT_FIRST the previous
// steps'), and the guard's sums. Nothing is written but the partial sums. The per-element
// code (`accumulate_element`) is generated per k by `hierarchy_prelude` in `src/shaders.rs`.
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
    var acc: array<vec4<f32>, PARTIAL_VECS>;
#each_slot
    let walk = slot_walk(tile, SLOT);
    for (var k = walk.x; k < walk.z; k = walk_next(walk, k)) {
        let record = walk_record(walk, k, lid);
        let at = record.x;
        let lane = walk_lane(walk, k, lid);
        let o = offsets(at);
        for (var i = lane.x; i < record.y; i += lane.y) {
            accumulate_element(o, i, &acc);
        }
    }
#end_each_slot
#ifdef SUBGROUPS
    let lanes = Lanes(lid, subgroup, subgroups, lane);
#else
    let lanes = Lanes(lid, 0u, 1u, lid);
#endif
    write_partial(lanes, &acc, first_partial() + tile);
}
