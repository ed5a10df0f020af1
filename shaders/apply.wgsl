// Stage 3: the combined direction, written to the output, and the averages' new values.
#import bindings

@compute @workgroup_size(WORKGROUP_SIZE)
fn apply(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
) {
    let index = tile_index(wg, num_wg);
    let header = tiles[0];
    if index >= header.len {
        return;
    }
    let tile = tiles[index + 1u];
    let s = params.scale;
    let l = params.lambda;
#ifdef MAIN_EMA
    let r = scalars.ratio_main;
#endif
#ifdef AUX_EMA
    let r_aux = scalars.ratio_aux;
#endif
    for (var i = lid; i < tile.len; i += WORKGROUP_SIZE) {
        let gm = g_main[tile.main + i];
        let ga = g_aux[tile.aux + i];
#ifdef MIXED
        out[tile.out + i] = s * (gm + l * ga);
#endif
#ifdef RATIO_ONLY
        out[tile.out + i] = s * ((1.0 - l * r) * gm + l * ga);
#endif
#ifdef PROJECT
        let e = ema_step(main_ema[tile.main_ema + i], gm);
        main_ema[tile.main_ema + i] = e;
#ifdef AUX_EMA
        let a = ema_step(aux_ema[tile.aux_ema + i], ga);
        aux_ema[tile.aux_ema + i] = a;
        out[tile.out + i] = s * ((gm - r_aux * a) + l * (ga - r * e));
#else
        out[tile.out + i] = s * (gm + l * (ga - r * e));
#endif
#endif
    }
}
