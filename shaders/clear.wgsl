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
    let segments = slot_segments(tile, SLOT);
    for (var k = segments.x; k < segments.y; k++) {
        let seg = segment(k);
        for (var i = lid; i < seg.len; i += WORKGROUP_SIZE) {
            store_out(seg.out + i, 0.0);
        }
    }
#end_each_slot
}
