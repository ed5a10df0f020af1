// Stage 1: the dot products of the updated averages with the gradients, one partial sum per
// tile. The averages are not written here (except for ratio_only without the guard, whose
// apply stage never reads them again), so the state stays untouched until the whole step's
// scalars are known: a step the guard skips leaves it bit for bit as it was. Mixing runs this
// stage only with an optimizer, for the guard's sums, before any parameter is written.
#import bindings
#import reduce

// One element's terms of the tile's sums (four elements' with `$W` = 4: see
// `scalar_and_vec4` in src/shaders.rs), added to `dots` and `grads`; copied per slot.
#per_slot
#scalar_and_vec4
fn add_terms$W(seg: Segment, i: u32, dots: ptr<function, vec4<f32>>, grads: ptr<function, vec4<f32>>) {
    let gm = load$W_g_main(seg.main + i);
    let ga = load$W_g_aux(seg.aux + i);
#ifdef MAIN_EMA
    let e_old = load$W_main_ema(seg.main_ema + i);
    let e_new = ema_step$W(e_old, gm);
#ifdef WRITE_EMA_IN_ACCUMULATE
    store$W_main_ema(seg.main_ema + i, e_new);
#endif
    // The projection's average: this step's (the reference code) or the previous steps'
    // (PROJECT_FIRST, the paper's Algorithm 1).
#ifdef PROJECT_FIRST
    let e = e_old;
#else
    let e = e_new;
#endif
    (*dots).x += mul_sum$W(e, ga);
    (*dots).y += mul_sum$W(e, e);
#endif
#ifdef AUX_EMA
    let a_old = load$W_aux_ema(seg.aux_ema + i);
#ifdef PROJECT_FIRST
    let a = a_old;
#else
    let a = ema_step$W(a_old, ga);
#endif
    (*dots).z += mul_sum$W(a, gm);
    (*dots).w += mul_sum$W(a, a);
#endif
#ifdef EXTRAS
    *grads += gradient_sums$W(gm, ga);
#endif
}
#end_scalar_and_vec4
#end_per_slot

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
    var dots = vec4<f32>(0.0);
    var grads = vec4<f32>(0.0);
#each_slot
    let walk = slot_walk(tile, SLOT);
    for (var k = walk.x; k < walk.z; k = walk_next(walk, k)) {
        let seg = walk_segment(walk, k, lid);
        let lane = walk_lane(walk, k, lid);
        var first = lane.x;
#ifdef VEC4
        // Whole vec4s where every offset is a multiple of 4 elements, the rest one at a time:
        // a CPU driver (llvmpipe) moves 16 bytes per lane per load instead of 4. The same
        // sums as below, four elements per term.
        if aligned(seg) {
            let body = seg.len & ~3u;
            for (var i = 4u * lane.x; i < body; i += 4u * lane.y) {
                add_terms4(seg, i, &dots, &grads);
            }
            first = body + lane.x;
        }
#endif
        for (var i = first; i < seg.len; i += lane.y) {
            add_terms(seg, i, &dots, &grads);
        }
    }
#end_each_slot
#ifdef SUBGROUPS
    let lanes = Lanes(lid, subgroup, subgroups, lane);
#else
    let lanes = Lanes(lid, 0u, 1u, lid);
#endif
    let dots_total = workgroup_sum(lanes, dots);
#ifdef EXTRAS
    let grads_total = workgroup_sum(lanes, grads);
#else
    let grads_total = grads;
#endif
    if lid == 0u {
        partials[first_partial() + tile] = Partial(dots_total, grads_total);
    }
}
