// Stage 2: one workgroup sums every tile's partials and turns the dot products into the
// projection ratios. Compensated (Neumaier) sums keep the global dot products accurate even
// over tens of thousands of partials.
#import bindings
#import reduce

fn ratio(dot: f32, sq_norm: f32) -> f32 {
    return min(dot / (sq_norm + params.eps), params.ratio_cap);
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
    var sum = vec4<f32>(0.0);
    var compensation = vec4<f32>(0.0);
    for (var i = lid; i < count; i += WORKGROUP_SIZE) {
        let x = partials[i];
        let t = sum + x;
        compensation += select((x - t) + sum, (sum - t) + x, abs(sum) >= abs(x));
        sum = t;
    }
#ifdef SUBGROUPS
    let lanes = Lanes(lid, subgroup, subgroups, lane);
#else
    let lanes = Lanes(lid, 0u, 1u, lid);
#endif
    let dots = workgroup_sum(lanes, sum + compensation);
    if lid == 0u {
        scalars.dots = dots;
        scalars.ratio_main = ratio(dots.x, dots.y);
        scalars.ratio_aux = ratio(dots.z, dots.w);
    }
}
