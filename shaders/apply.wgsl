// Stage 3: the combined direction, written to the output, and the averages' new values.
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
    let segments = tile_segments(tile);
    let s = params.scale;
    let l = params.lambda;
#ifdef MAIN_EMA
    let r = scalars.ratio_main;
#endif
#ifdef AUX_EMA
    let r_aux = scalars.ratio_aux;
#endif
    for (var k = segments.x; k < segments.y; k++) {
        let seg = segment(k);
        for (var i = lid; i < seg.len; i += WORKGROUP_SIZE) {
            let gm = g_main[seg.main + i];
            let ga = g_aux[seg.aux + i];
#ifdef MIXED
            out[seg.out + i] = s * (gm + l * ga);
#endif
#ifdef RATIO_ONLY
            out[seg.out + i] = s * ((1.0 - l * r) * gm + l * ga);
#endif
#ifdef PROJECT
            let e = ema_step(main_ema[seg.main_ema + i], gm);
            main_ema[seg.main_ema + i] = e;
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
}
