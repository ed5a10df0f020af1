// Mixing with the guard: a step found non-finite by the finalize stage gets zeros instead of the
// direction its apply stage already wrote. A normal step exits at once, moving no elements.
#import bindings

@compute @workgroup_size(WORKGROUP_SIZE)
fn clear(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
) {
    let tile = tile_index(wg, num_wg);
    if tile >= tile_count() || scalars.skip == 0u {
        return;
    }
#each_slot
    let walk = slot_walk(tile, SLOT);
    for (var k = walk.x; k < walk.z; k = walk_next(walk, k)) {
        let seg = walk_segment(walk, k, lid);
        let lane = walk_lane(walk, k, lid);
        for (var i = lane.x; i < seg.len; i += lane.y) {
            store_out(seg.out + i, 0.0);
        }
    }
#end_each_slot
}
