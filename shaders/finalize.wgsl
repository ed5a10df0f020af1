// Stage 2: one workgroup sums every tile's partials and turns the dot products into the
// projection ratios. Compensated (Neumaier) sums keep the global dot products accurate even
// over tens of thousands of partials.
#import bindings
#import reduce

fn ratio(dot: f32, sq_norm: f32) -> f32 {
    return min(dot / (sq_norm + params.eps), params.ratio_cap);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn finalize(@builtin(local_invocation_index) lid: u32) {
    let count = arrayLength(&partials);
    var sum = vec4<f32>(0.0);
    var compensation = vec4<f32>(0.0);
    for (var i = lid; i < count; i += WORKGROUP_SIZE) {
        let x = partials[i];
        let t = sum + x;
        compensation += select((x - t) + sum, (sum - t) + x, abs(sum) >= abs(x));
        sum = t;
    }
    let dots = workgroup_sum(lid, sum + compensation);
    if lid == 0u {
        scalars.dots = dots;
        scalars.ratio_main = ratio(dots.x, dots.y);
        scalars.ratio_aux = ratio(dots.z, dots.w);
    }
}
