// One kernel per operator of the reference formulas, the way an eager framework runs them:
// every elementwise operation reads its operands from memory and writes a fresh temporary,
// and every dot product is its own reduction.

struct Op {
    // elementwise: 0 x - y, 1 x + y, 2 alpha * x, 3 scalars[a] * x
    // scalar: 0 scalars[out] = min(scalars[a] / (scalars[b] + alpha), cap), 1 = 1 - alpha * scalars[a]
    kind: u32,
    a: u32,
    b: u32,
    out: u32,
    alpha: f32,
    cap: f32,
    len: u32,
}

@group(0) @binding(0) var<uniform> op: Op;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> scalars: array<f32>;

fn flat_index(id: vec3<u32>, num_wg: vec3<u32>) -> u32 {
    return id.x + id.y * num_wg.x * 256u;
}

@compute @workgroup_size(256)
fn elementwise(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) num_wg: vec3<u32>) {
    let i = flat_index(id, num_wg);
    if i >= op.len {
        return;
    }
    switch op.kind {
        case 0u: { out[i] = x[i] - y[i]; }
        case 1u: { out[i] = x[i] + y[i]; }
        case 2u: { out[i] = op.alpha * x[i]; }
        default: { out[i] = scalars[op.a] * x[i]; }
    }
}

var<workgroup> scratch: array<f32, 256>;

// Leaves the workgroup's total of `value` in scratch[0].
fn workgroup_sum(lid: u32, value: f32) {
    scratch[lid] = value;
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        workgroupBarrier();
        if lid < stride {
            scratch[lid] += scratch[lid + stride];
        }
    }
}

// Partial dot products, one per workgroup of 256 x 16 elements, into `out`.
@compute @workgroup_size(256)
fn dot_partial(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) num_wg: vec3<u32>) {
    let tile = wg.x + wg.y * num_wg.x;
    var sum = 0.0;
    for (var k = 0u; k < 16u; k++) {
        let i = tile * 4096u + k * 256u + lid;
        if i < op.len {
            sum += x[i] * y[i];
        }
    }
    workgroup_sum(lid, sum);
    if lid == 0u {
        out[tile] = scratch[0];
    }
}

// scalars[op.out] = sum of the `op.len` partials in `x`.
@compute @workgroup_size(256)
fn dot_final(@builtin(local_invocation_index) lid: u32) {
    var sum = 0.0;
    for (var i = lid; i < op.len; i += 256u) {
        sum += x[i];
    }
    workgroup_sum(lid, sum);
    if lid == 0u {
        scalars[op.out] = scratch[0];
    }
}

@compute @workgroup_size(1)
fn scalar() {
    switch op.kind {
        case 0u: { scalars[op.out] = min(scalars[op.a] / (scalars[op.b] + op.alpha), op.cap); }
        default: { scalars[op.out] = 1.0 - op.alpha * scalars[op.a]; }
    }
}
