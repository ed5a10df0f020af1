// Stage 3: the combined direction, written to the output, and the averages' new values. With
// the guard, a skipped step writes zeros and leaves the averages alone. Mixing has no earlier
// stage, so with the guard or diagnostics it also sums the gradients' norms here.
#import bindings
#ifdef MIXED_SUMS
#import reduce
#endif

@compute @workgroup_size(WORKGROUP_SIZE)
fn apply(
    @builtin(local_invocation_index) lid: u32,
#ifdef MIXED_SUMS
#ifdef SUBGROUPS
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_invocation_id) lane: u32,
#endif
#endif
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
) {
    let tile = tile_index(wg, num_wg);
    if tile >= tile_count() {
        return;
    }
    let segments = tile_segments(tile);
#ifdef GUARD_APPLY
    if scalars.skip != 0u {
        for (var k = segments.x; k < segments.y; k++) {
            let seg = segment(k);
            for (var i = lid; i < seg.len; i += WORKGROUP_SIZE) {
                out[seg.out + i] = 0.0;
            }
        }
        return;
    }
#endif
    let s = params.scale;
    let l = params.lambda;
#ifdef MAIN_EMA
    let r = scalars.ratio_main;
#endif
#ifdef AUX_EMA
    let r_aux = scalars.ratio_aux;
#endif
#ifdef MIXED_SUMS
    var grads = vec4<f32>(0.0);
#endif
    for (var k = segments.x; k < segments.y; k++) {
        let seg = segment(k);
        for (var i = lid; i < seg.len; i += WORKGROUP_SIZE) {
            let gm = g_main[seg.main + i];
            let ga = g_aux[seg.aux + i];
#ifdef MIXED
            out[seg.out + i] = s * (gm + l * ga);
#ifdef MIXED_SUMS
            grads += gradient_sums(gm, ga);
#endif
#endif
#ifdef UPDATE_EMA_IN_APPLY
            let e = ema_step(main_ema[seg.main_ema + i], gm);
            main_ema[seg.main_ema + i] = e;
#endif
#ifdef RATIO_ONLY
            out[seg.out + i] = s * ((1.0 - l * r) * gm + l * ga);
#endif
#ifdef PROJECT
#ifdef AUX_EMA
            let a = ema_step(aux_ema[seg.aux_ema + i], ga);
            aux_ema[seg.aux_ema + i] = a;
            out[seg.out + i] = s * ((gm - r_aux * a) + l * (ga - r * e));
#else
            out[seg.out + i] = s * (gm + l * (ga - r * e));
#endif
#endif
        }
    }
#ifdef MIXED_SUMS
#ifdef SUBGROUPS
    let lanes = Lanes(lid, subgroup, subgroups, lane);
#else
    let lanes = Lanes(lid, 0u, 1u, lid);
#endif
    let total = workgroup_sum(lanes, grads);
    if lid == 0u {
        partials[first_partial() + tile] = Partial(vec4<f32>(0.0), total);
    }
#endif
}
