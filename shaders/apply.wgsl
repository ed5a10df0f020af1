// Stage 3: the combined direction, written to the output, and the averages' new values. With
// the guard, a skipped step writes zeros and leaves the averages alone. Mixing has no earlier
// stage, so with the guard or diagnostics it also sums the gradients' norms here (unless an
// optimizer gives it one). With an optimizer, the direction `d` also updates the parameters
// (`weights`) and the optimizer's state (`opt_m`, `opt_v`) in the same pass, and may not be
// written at all (no WRITE_OUT).
#import bindings
#ifdef MIXED_SUMS
#import reduce
#endif

// The step's constants, read once per workgroup.
struct Coefficients {
    s: f32,
    l: f32,
    r: f32,
    r_aux: f32,
    // The optimizer's: learning rate, 1 on its first applied step, 1 - beta1^t, sqrt(1 - beta2^t).
    lr: f32,
    first: f32,
    bc1: f32,
    bc2_sqrt: f32,
}

// One element's inputs and results: the direction, the averages' new values, and the
// parameter's and optimizer state's new values. This struct and the element functions below
// (all but `one_minus_exp`) are written once for both widths (see `scalar_and_vec4` in
// src/shaders.rs): `$F` is `f32` or `vec4<f32>`, and `$W` is empty or `4` in names (`element`
// or `element4`, `load_` or `load4_`). The vec4 form runs four consecutive elements at a
// multiple of 4 in every role, with the same operations in the same order (VEC4 variants have
// no PCGrad or 16-bit storage, so theirs never set `a`).
#scalar_and_vec4
struct Element$W {
    gm: $F,
    ga: $F,
    d: $F,
    e: $F,
    a: $F,
    p: $F,
    m: $F,
    v: $F,
}
#end_scalar_and_vec4

// 1 - exp(y) for y <= 0, accurate also near 0 (where 1 - beta^t cancels): a series there.
fn one_minus_exp(y: f32) -> f32 {
    if y > -0.1 {
        return -y * (1.0 + y * (0.5 + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y / 120.0))));
    }
    return 1.0 - exp(y);
}

#ifdef OPTIMIZER
// PyTorch's update of one parameter from the direction `d` (see `src/optimizer.rs`); copied
// per slot, like `element`, since WGSL cannot pass a storage buffer to a function.
#per_slot
#scalar_and_vec4
fn optimize$W(seg: Segment, i: u32, d: $F, c: Coefficients, x: ptr<function, Element$W>) {
    let p = load$W_weights(seg.weights + i);
    var g = d + params.weight_decay * p;
#ifdef SGD
#ifdef OPT_M
    let b = select(params.momentum * load$W_opt_m(seg.opt_m + i) + params.dampening_c * g, g, c.first != 0.0);
    (*x).m = b;
    g = select(b, g + params.momentum * b, params.nesterov != 0.0);
#endif
    (*x).p = p - c.lr * g;
#endif
#ifdef ADAM
    let m0 = load$W_opt_m(seg.opt_m + i);
    let m = m0 + params.beta1_c * (g - m0);
    let v = params.beta2 * load$W_opt_v(seg.opt_v + i) + params.beta2_c * g * g;
    (*x).m = m;
    (*x).v = v;
    let denom = sqrt(v) / c.bc2_sqrt + params.adam_eps;
    (*x).p = p * (1.0 - c.lr * params.decoupled_decay) - (c.lr / c.bc1) * (m / denom);
#endif
}
#end_scalar_and_vec4
#end_per_slot
#endif

#per_slot
#scalar_and_vec4
fn element$W(seg: Segment, i: u32, c: Coefficients) -> Element$W {
    let s = c.s;
    let l = c.l;
    let gm = load$W_g_main(seg.main + i);
    let ga = load$W_g_aux(seg.aux + i);
    var x = Element$W(gm, ga, $F(0.0), $F(0.0), $F(0.0), $F(0.0), $F(0.0), $F(0.0));
#ifdef UPDATE_EMA_IN_APPLY
    let e_old = load$W_main_ema(seg.main_ema + i);
    x.e = ema_step$W(e_old, gm);
#endif
#ifdef MIXED
    x.d = s * (gm + l * ga);
#endif
#ifdef RATIO_ONLY
    x.d = s * ((1.0 - l * c.r) * gm + l * ga);
#endif
#ifdef PROJECT
    // The averages the projection uses: the new ones, or the previous steps' (PROJECT_FIRST);
    // the new ones are stored either way.
#ifdef PROJECT_FIRST
    let pe = e_old;
#else
    let pe = x.e;
#endif
#ifdef AUX_EMA
    let a_old = load$W_aux_ema(seg.aux_ema + i);
    x.a = ema_step$W(a_old, ga);
#ifdef PROJECT_FIRST
    let pa = a_old;
#else
    let pa = x.a;
#endif
    x.d = s * ((gm - c.r_aux * pa) + l * (ga - c.r * pe));
#else
    x.d = s * (gm + l * (ga - c.r * pe));
#endif
#endif
#ifdef OPTIMIZER
    optimize$W(seg, i, x.d, c, &x);
#endif
    return x;
}

// Everything one element's step writes, each at its place in its role.
fn store_element$W(seg: Segment, i: u32, x: Element$W) {
#ifdef WRITE_OUT
    store$W_out(seg.out + i, x.d);
#endif
#ifdef OPTIMIZER
    store$W_weights(seg.weights + i, x.p);
#endif
#ifdef OPT_M
    store$W_opt_m(seg.opt_m + i, x.m);
#endif
#ifdef OPT_V
    store$W_opt_v(seg.opt_v + i, x.v);
#endif
#ifdef UPDATE_EMA_IN_APPLY
    store$W_main_ema(seg.main_ema + i, x.e);
#endif
#ifdef AUX_EMA
    store$W_aux_ema(seg.aux_ema + i, x.a);
#endif
}
#end_scalar_and_vec4
#end_per_slot

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
#ifdef GUARD_APPLY
    if scalars.skip != 0u {
#ifdef WRITE_OUT
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
#endif
        return;
    }
#endif
    var c = Coefficients(params.scale, params.lambda, scalars.ratio_main, scalars.ratio_aux, 0.0, 0.0, 1.0, 1.0);
#ifdef OPTIMIZER
    let t = f32(scalars.schedule.step);
    c.lr = scalars.schedule.lr;
    c.first = select(0.0, 1.0, scalars.schedule.step == 1u);
#ifdef ADAM
    c.bc1 = one_minus_exp(t * params.log_beta1);
    c.bc2_sqrt = sqrt(one_minus_exp(t * params.log_beta2));
#endif
#endif
#ifdef MIXED_SUMS
    var grads = vec4<f32>(0.0);
#endif
#each_slot
    let walk = slot_walk(tile, SLOT);
    for (var k = walk.x; k < walk.z; k = walk_next(walk, k)) {
        let seg = walk_segment(walk, k, lid);
        let lane = walk_lane(walk, k, lid);
#ifdef PAIRS
        // Two consecutive elements per invocation, so 16-bit results that share a word are
        // stored together.
        for (var i = 2u * lane.x; i < seg.len; i += 2u * lane.y) {
            let both = i + 1u < seg.len;
            let x = element(seg, i, c);
            var y = x;
            if both {
                y = element(seg, i + 1u, c);
            }
#ifdef WRITE_OUT
            store_out_pair(seg.out + i, x.d, y.d, both);
#endif
#ifdef OPTIMIZER
            store_weights_pair(seg.weights + i, x.p, y.p, both);
#endif
#ifdef OPT_M
            store_opt_m_pair(seg.opt_m + i, x.m, y.m, both);
#endif
#ifdef OPT_V
            store_opt_v_pair(seg.opt_v + i, x.v, y.v, both);
#endif
#ifdef UPDATE_EMA_IN_APPLY
            store_main_ema_pair(seg.main_ema + i, x.e, y.e, both);
#endif
#ifdef AUX_EMA
            store_aux_ema_pair(seg.aux_ema + i, x.a, y.a, both);
#endif
#ifdef MIXED_SUMS
            grads += gradient_sums(x.gm, x.ga);
            if both {
                grads += gradient_sums(y.gm, y.ga);
            }
#endif
        }
#else
        var first = lane.x;
#ifdef VEC4
        // Whole vec4s where every offset is a multiple of 4 elements, the rest one at a time
        // (see accumulate).
        if aligned(seg) {
            let body = seg.len & ~3u;
            for (var i = 4u * lane.x; i < body; i += 4u * lane.y) {
                let x = element4(seg, i, c);
                store_element4(seg, i, x);
#ifdef MIXED_SUMS
                grads += gradient_sums4(x.gm, x.ga);
#endif
            }
            first = body + lane.x;
        }
#endif
        for (var i = first; i < seg.len; i += lane.y) {
            let x = element(seg, i, c);
            store_element(seg, i, x);
#ifdef MIXED_SUMS
            grads += gradient_sums(x.gm, x.ga);
#endif
        }
#endif
    }
#end_each_slot
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
