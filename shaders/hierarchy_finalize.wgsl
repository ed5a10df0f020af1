// Stage 2 of a hierarchy: one workgroup sums every tile's partials (compensated), then
// invocation 0 runs Gram-Schmidt on the Gram matrix of the averages. Every u_j is a fixed
// combination of the averages, u_j = sum_m c[j][m] e_m, so
//   <e_j, u_i> = sum_m c[i][m] G[j][m],  <u_i, u_i> = sum_{m,n} c[i][m] c[i][n] G[m][n],
//   <g_a, u_j> = sum_m c[j][m] P[a][m],  r[a][j] = <g_a, u_j> / (<u_j, u_j> + eps),
// and the direction s (g_0 + sum_a l_a (g_a - sum_{j<a} r[a][j] u_j)) is
//   s g_0 + sum_a s l_a g_a - sum_m w_m e_m,  w_m = s sum_{j>=m} c[j][m] sum_{a>j} l_a r[a][j].
// `Scalars.levels` gets the k + 1 gradient coefficients, the k average coefficients w, then
// the ratios r row by row.
#import bindings
#import reduce

fn all_finite(v: vec4<f32>) -> bool {
    return is_finite(v.x) && is_finite(v.y) && is_finite(v.z) && is_finite(v.w);
}

var<private> totals: array<vec4<f32>, PARTIAL_VECS>;

fn flat(q: u32) -> f32 {
    return totals[q >> 2u][q & 3u];
}

// <e_a, e_b>.
fn gram(a: u32, b: u32) -> f32 {
    let hi = max(a, b);
    let lo = min(a, b);
    return flat(hi * (hi + 1u) / 2u + lo);
}

// <g_a, e_b> for a >= 1, b < a.
fn product(a: u32, b: u32) -> f32 {
    return flat(GRAM + (a - 1u) * a / 2u + b);
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
    var sum: array<vec4<f32>, PARTIAL_VECS>;
    var compensation: array<vec4<f32>, PARTIAL_VECS>;
    for (var i = lid; i < count; i += WORKGROUP_SIZE) {
        for (var v = 0u; v < PARTIAL_VECS; v++) {
            // Neumaier's compensated sum.
            let x = partials[i].v[v];
            let s = sum[v];
            let t = s + x;
            compensation[v] += select((x - t) + s, (s - t) + x, abs(s) >= abs(x));
            sum[v] = t;
        }
    }
#ifdef SUBGROUPS
    let lanes = Lanes(lid, subgroup, subgroups, lane);
#else
    let lanes = Lanes(lid, 0u, 1u, lid);
#endif
    for (var v = 0u; v < PARTIAL_VECS; v++) {
        totals[v] = workgroup_sum(lanes, sum[v] + compensation[v]);
    }
    if lid != 0u {
        return;
    }
    let grads = totals[PARTIAL_VECS - 1u];
    var skip = 0u;
#ifdef GUARD
    var finite = grads.w == 0.0;
    for (var v = 0u; v < PARTIAL_VECS; v++) {
        finite = finite && all_finite(totals[v]);
    }
    if !finite {
        skip = 1u;
    }
#endif
    scalars.skip = skip;
    scalars.skipped_steps += skip;
    scalars.grads = grads;
    let eps = params.eps;
    // Gram-Schmidt: c[j] holds u_j's coefficients, uu[j] = <u_j, u_j>.
    var c: array<array<f32, LEVELS>, LEVELS>;
    var uu: array<f32, LEVELS>;
    for (var j = 0u; j < LEVELS; j++) {
        c[j][j] = 1.0;
        for (var i = 0u; i < j; i++) {
            var d = 0.0;
            for (var m = 0u; m <= i; m++) {
                d += c[i][m] * gram(j, m);
            }
            let a = d / (uu[i] + eps);
            for (var m = 0u; m <= i; m++) {
                c[j][m] -= a * c[i][m];
            }
        }
        var n = 0.0;
        for (var m = 0u; m <= j; m++) {
            var row = 0.0;
            for (var p = 0u; p <= j; p++) {
                row += c[j][p] * gram(m, p);
            }
            n += c[j][m] * row;
        }
        uu[j] = n;
    }
    // Ratios, and each u_j's total weight t[j] = sum_{a>j} l_a r[a][j].
    let s = params.scale;
    var t: array<f32, LEVELS>;
    var q = 2u * LEVELS + 1u;
    for (var a = 1u; a < GRADS; a++) {
        for (var j = 0u; j < a; j++) {
            var d = 0.0;
            for (var m = 0u; m <= j; m++) {
                d += c[j][m] * product(a, m);
            }
            let r = d / (uu[j] + eps);
            scalars.levels[q] = r;
            q++;
            t[j] += lambda_of(a) * r;
        }
    }
    scalars.levels[0] = s;
    for (var a = 1u; a < GRADS; a++) {
        scalars.levels[a] = s * lambda_of(a);
    }
    for (var m = 0u; m < LEVELS; m++) {
        var w = 0.0;
        for (var j = m; j < LEVELS; j++) {
            w += c[j][m] * t[j];
        }
        scalars.levels[GRADS + m] = s * w;
    }
    // As the two-loss methods report them: the first aux loss against the main average.
    scalars.ratio_main = scalars.levels[2u * LEVELS + 1u];
    scalars.ratio_aux = 0.0;
    scalars.dots = vec4<f32>(product(1u, 0u), gram(0u, 0u), 0.0, 0.0);
}
