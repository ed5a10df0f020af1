// Stage 2: one workgroup sums every tile's partials and turns the dot products into the
// projection ratios; with the guard, it decides whether the step is skipped. Compensated
// (Neumaier) sums keep the global dot products accurate over tens of thousands of partials.
#import bindings
#import reduce

fn ratio(dot: f32, sq_norm: f32) -> f32 {
    return min(dot / (sq_norm + params.eps), params.ratio_cap);
}

// Neumaier's compensated sum of one partial into (sum, compensation).
fn add_compensated(acc: ptr<function, array<vec4<f32>, 2>>, x: vec4<f32>) {
    let sum = (*acc)[0];
    let t = sum + x;
    (*acc)[1] += select((x - t) + sum, (sum - t) + x, abs(sum) >= abs(x));
    (*acc)[0] = t;
}

fn all_finite(v: vec4<f32>) -> bool {
    return is_finite(v.x) && is_finite(v.y) && is_finite(v.z) && is_finite(v.w);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn finalize(
    @builtin(local_invocation_index) lid: u32,
#ifdef SUBGROUPS
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_invocation_id) lane: u32,
#endif
) {
    let count = arrayLength(&partials);
    var dots = array<vec4<f32>, 2>(vec4<f32>(0.0), vec4<f32>(0.0));
    var grads = array<vec4<f32>, 2>(vec4<f32>(0.0), vec4<f32>(0.0));
    for (var i = lid; i < count; i += WORKGROUP_SIZE) {
        add_compensated(&dots, partials[i].dots);
#ifdef EXTRAS
        add_compensated(&grads, partials[i].grads);
#endif
    }
#ifdef SUBGROUPS
    let lanes = Lanes(lid, subgroup, subgroups, lane);
#else
    let lanes = Lanes(lid, 0u, 1u, lid);
#endif
    let dots_total = workgroup_sum(lanes, dots[0] + dots[1]);
#ifdef EXTRAS
    let grads_total = workgroup_sum(lanes, grads[0] + grads[1]);
#else
    let grads_total = vec4<f32>(0.0);
#endif
    if lid == 0u {
#ifdef SHARDED
        // A sharded step: only this rank's totals. The host reduces them over the ranks, writes
        // the global totals and the global skip decision back, and `decide_global` takes it on.
        scalars.dots = dots_total;
        scalars.grads = grads_total;
#else
        var skip = 0u;
#ifdef GUARD
        // Any non-finite gradient element, or sums that overflowed: the ratios would be garbage.
        if grads_total.w > 0.0 || !all_finite(dots_total) || !all_finite(grads_total) {
            skip = 1u;
        }
#endif
        scalars.skip = skip;
        scalars.skipped_steps += skip;
#ifdef OPTIMIZER
        // The optimizer's step count t (bias correction, SGD's first momentum step) counts
        // only the steps that update the parameters.
        scalars.schedule.step += 1u - skip;
#endif
        scalars.dots = dots_total;
        scalars.grads = grads_total;
        scalars.ratio_main = ratio(dots_total.x, dots_total.y);
        scalars.ratio_aux = ratio(dots_total.z, dots_total.w);
#endif
    }
}

#ifdef SHARDED
// The second half of a sharded step's finalize stage: the totals in `scalars` were reduced over
// every rank and written back by the host, with its global skip decision; the ratios come from
// them exactly as `finalize` computes them for a step on one device.
@compute @workgroup_size(1)
fn decide_global() {
    let dots = scalars.dots;
    scalars.skipped_steps += scalars.skip;
    scalars.ratio_main = ratio(dots.x, dots.y);
    scalars.ratio_aux = ratio(dots.z, dots.w);
}
#endif
